package router

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hostel/internal/front"
	"hostel/internal/spec"
)

// This file is how a node's router reaches the instances that run on the
// other nodes of a cluster. Every node's router serves every domain and
// immutable name: a request whose instance has no backend here goes, by
// the router's one decision (decide), to a node that runs it — one of its
// replicas as the routes follower last read them from the store
// (SetRemotes), the least busy — over the node's one peer client
// (Options.Peers), naming the instance (front.PeerInstanceField). That
// node's peer listener hands it to its own router (ServePeer) for that
// instance alone, where its accounting counts it (a drain waits for it)
// and its gate holds it (asleep: woken there, one start for the whole
// cluster; paused: held there). A request a peer forwarded is never
// forwarded again.
//
// The paths that may carry a request to a peer are net/http's (ServeHTTP,
// for every name the table routes and every immutable name) and the
// <NEED>_URL endpoints (serveKey), both through one ReverseProxy on the one
// transport. The front end's own forwarder does not: Route returns no
// backend for an instance that runs elsewhere, so the front end hands the
// connection to net/http, whose handler is ServeHTTP. A held request whose
// backend is removed meanwhile is routed again among this node's backends
// only (front.ErrRemoved).

// Remote is one replica of an instance that runs on another node.
type Remote struct {
	// Node is the node's name; Addr is its peer listener, HOST:PORT (the
	// address it advertises).
	Node, Addr string
	// Ready: as its node last reported, it serves — or sleeps, and a
	// request wakes it there. A replica that is not ready (starting,
	// failed, draining) is tried only when no ready one is left.
	Ready bool
}

// remoteSet is the replicas of one instance on other nodes.
type remoteSet struct {
	key      spec.VersionKey
	replicas []*replica    // by node name
	turn     atomic.Uint32 // which of equally busy replicas goes first
}

// replica is one Remote with what this node counts of it. It outlives a
// SetRemotes that keeps it (same node and address), so that its count
// does too.
type replica struct {
	node, addr string
	ready      atomic.Bool
	// inflight counts the requests this node forwards to it now: what
	// "least busy" means (pick). Each node counts its own; the replicas'
	// own counts, reported through the store, would be late and cost a
	// write per request.
	inflight atomic.Int64
	// refusedUntil (UnixNano) ends the moment after the replica's node
	// refused a connection in which it is tried only when no other is
	// left: its node is gone or restarting.
	refusedUntil atomic.Int64
}

// refusedFor is how long a replica whose node refused a connection is
// tried last.
const refusedFor = 2 * time.Second

// SetRemotes replaces what the router knows of the instances that run on
// other nodes: by instance, its replicas there (the routes follower reads
// them from the nodes' records). An instance with a backend here is
// served here, whatever it says. A replica SetRemotes keeps (same node
// and address) keeps its count of requests in flight. Without
// Options.Peers it does nothing: the router reaches no other node.
func (r *Router) SetRemotes(remotes map[spec.VersionKey][]Remote) {
	if r.peers == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.remotes.Load()
	next := make(map[spec.VersionKey]*remoteSet, len(remotes))
	for key, rs := range remotes {
		if len(rs) == 0 {
			continue
		}
		set := &remoteSet{key: key}
		for _, rm := range rs {
			var rep *replica
			if prev := old[key]; prev != nil {
				if i := slices.IndexFunc(prev.replicas, func(p *replica) bool { return p.node == rm.Node && p.addr == rm.Addr }); i >= 0 {
					rep = prev.replicas[i]
				}
			}
			if rep == nil {
				rep = &replica{node: rm.Node, addr: rm.Addr}
			}
			rep.ready.Store(rm.Ready)
			set.replicas = append(set.replicas, rep)
		}
		slices.SortFunc(set.replicas, func(a, b *replica) int { return strings.Compare(a.node, b.node) })
		next[key] = set
	}
	r.remotes.Store(&next)
}

// Remotes returns the replicas on other nodes the router knows of key,
// by node name.
func (r *Router) Remotes(key spec.VersionKey) []Remote {
	set := r.remoteOf(key)
	if set == nil {
		return nil
	}
	out := make([]Remote, len(set.replicas))
	for i, rep := range set.replicas {
		out[i] = Remote{Node: rep.node, Addr: rep.addr, Ready: rep.ready.Load()}
	}
	return out
}

// remoteOf returns key's replicas on other nodes; nil if it has none, or
// the router reaches no other node.
func (r *Router) remoteOf(key spec.VersionKey) *remoteSet {
	m := r.remotes.Load()
	if m == nil {
		return nil
	}
	return (*m)[key]
}

// pick returns the replica a request goes to, of those not in tried: the
// least busy (fewest requests this node forwards to it now) of the ready
// ones whose node did not lately refuse a connection; else of the ready
// ones; else of any. Of equally busy replicas, each goes first in turn.
// nil: every replica was tried.
func (s *remoteSet) pick(tried []*replica) *replica {
	n := len(s.replicas)
	start := int(s.turn.Add(1))
	now := time.Now().UnixNano()
	var best *replica
	var bestRank int
	var bestLoad int64
	for i := range n {
		rep := s.replicas[(start+i)%n]
		if slices.Contains(tried, rep) {
			continue
		}
		rank := 0
		if !rep.ready.Load() {
			rank = 2
		}
		if rep.refusedUntil.Load() > now {
			rank++
		}
		load := rep.inflight.Load()
		if best == nil || rank < bestRank || rank == bestRank && load < bestLoad {
			best, bestRank, bestLoad = rep, rank, load
		}
	}
	return best
}

// peerCall is one request's try of one replica, in the context of the
// request the peer proxy sends.
type peerCall struct {
	key spec.VersionKey
	rep *replica
	// again may be set by the proxy's error handler, which then answers
	// nothing: the replica's node refused the connection (nothing was
	// sent) and the request may go to another (mayRetry).
	mayRetry, again bool
}

type peerCallKey struct{}

// serveRemote forwards req to a node that runs set's instance: the
// replica pick chooses. A request without a body that a replica's node
// refuses at the connection (it is gone, or restarting; nothing was
// sent) goes to the next; when none is left, or the request has a body,
// it is answered 503 as an instance that does not run.
func (r *Router) serveRemote(w http.ResponseWriter, req *http.Request, set *remoteSet) {
	var tried []*replica
	for {
		rep := set.pick(tried)
		if rep == nil {
			r.unreachable(w, req, set.key, len(tried))
			return
		}
		tried = append(tried, rep)
		if !r.tryReplica(w, req, set.key, rep, len(tried) < len(set.replicas) && noBody(req)) {
			return
		}
	}
}

// tryReplica sends req for key to replica rep through the peer proxy,
// counting it in flight to rep until its response is done (also when the
// proxy breaks the response off with http.ErrAbortHandler). It reports
// whether rep's node refused the connection and, as mayRetry allowed,
// nothing was answered: the request may go to another replica.
func (r *Router) tryReplica(w http.ResponseWriter, req *http.Request, key spec.VersionKey, rep *replica, mayRetry bool) (again bool) {
	call := &peerCall{key: key, rep: rep, mayRetry: mayRetry}
	rep.inflight.Add(1)
	defer rep.inflight.Add(-1)
	r.peerProxy.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), peerCallKey{}, call)))
	return call.again
}

// noBody reports whether req, as net/http's server gives it, has no body
// to send: it may be sent again after a refused connection.
func noBody(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody
}

// unreachable answers a request for key, which no node this one reaches
// runs now, 503: the answer of an instance that does not run.
func (r *Router) unreachable(w http.ResponseWriter, req *http.Request, key spec.VersionKey, tried int) {
	r.logf("router: %s: %s runs on no node this one reaches (%d tried)", req.Host, key, tried)
	w.Header().Set("Retry-After", strconv.Itoa(front.RetryAfter))
	http.Error(w, "hostel: the service is not running", http.StatusServiceUnavailable)
}

// newPeerProxy returns the proxy of every request this router forwards
// to a peer, on transport (Options.Peers).
func (r *Router) newPeerProxy(transport http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			call := pr.In.Context().Value(peerCallKey{}).(*peerCall)
			// Out keeps the client's Host: the peer's app wants the
			// public host it was reached by. The TLS server name is
			// the peer's address, which its certificate names.
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = call.rep.addr
			// Set, not added: a client's own fields of these names are
			// replaced (a client cannot name an instance).
			h := pr.Out.Header
			h[front.PeerInstanceField] = []string{string(call.key)}
			h[front.PeerClientField] = []string{pr.In.RemoteAddr}
			if pr.In.TLS != nil {
				h[front.PeerProtoField] = []string{"https"}
			} else {
				h[front.PeerProtoField] = []string{"http"}
			}
		},
		Transport:  transport,
		BufferPool: peerBuffers{},
		ErrorLog:   log.New(logfWriter(r.logf), "router: peer: ", 0),
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			call := req.Context().Value(peerCallKey{}).(*peerCall)
			if refused(err) {
				call.rep.refusedUntil.Store(time.Now().Add(refusedFor).UnixNano())
				r.logf("router: %s %s%s via %s on node %s: %v", req.Method, req.Host, req.URL.Path, call.key, call.rep.node, err)
				if call.mayRetry {
					call.again = true
					return
				}
				w.Header().Set("Retry-After", strconv.Itoa(front.RetryAfter))
				http.Error(w, "hostel: the service is not running", http.StatusServiceUnavailable)
				return
			}
			if req.Context().Err() == nil {
				r.logf("router: %s %s%s via %s on node %s: %v", req.Method, req.Host, req.URL.Path, call.key, call.rep.node, err)
			}
			// Public pages name no service, version or node: the log does.
			http.Error(w, "hostel: the service is unavailable", http.StatusBadGateway)
		},
	}
}

// refused reports whether err, from the peer transport, means the
// request was never sent: the peer's node did not take the connection,
// or is not a node of the cluster at that address.
func refused(err error) bool {
	var op *net.OpError
	var cert *tls.CertificateVerificationError
	return errors.As(err, &op) && op.Op == "dial" || errors.As(err, &cert)
}

// ServePeer serves the node's peer listener: a request another node of the
// cluster forwarded (serveRemote), for the instance it names. It goes to
// that instance's backend here — counted, held or woken as any request —
// with the client address and scheme the forwarding node gave, and is
// never forwarded again. An instance with no backend here — it drained
// and went after the forwarding node decided, before its table switched —
// leaves the request to what serves its host here now, as a request held
// here whose backend went is routed again (front.ErrRemoved); with none,
// it answers 503. The listener must take only the cluster's nodes
// (internal/peer).
func (r *Router) ServePeer(w http.ResponseWriter, req *http.Request) {
	h := req.Header
	key := spec.VersionKey(h.Get(front.PeerInstanceField))
	client, proto := h.Get(front.PeerClientField), h.Get(front.PeerProtoField)
	front.DeletePeerFields(h)
	if key == "" {
		http.Error(w, "hostel: a request between nodes must name an instance", http.StatusBadRequest)
		return
	}
	if _, err := netip.ParseAddrPort(client); err == nil {
		// This hop's X-Forwarded-For is the client's.
		req.RemoteAddr = client
	}
	if proto != "https" {
		// And its X-Forwarded-Proto the client's scheme, not the peers'.
		req.TLS = nil
	}
	b := (*r.backends.Load())[key]
	if b == nil {
		b = r.localOf(req.Host)
	}
	if b == nil {
		r.notRunning(w, req, key)
		return
	}
	b.fb.ServeHTTP(w, req)
}

// localOf returns the backend here of the instance the table routes host
// to, by domain or internal name; nil if it has none here.
func (r *Router) localOf(host string) *backend {
	host = normalizeHost(host)
	t := r.table.Load()
	key, ok := t.Domains[host]
	if !ok {
		key, ok = t.Internal[host]
	}
	if !ok {
		return nil
	}
	return (*r.backends.Load())[key]
}

// peerBuffers is the peer proxy's httputil.BufferPool.
type peerBuffers struct{}

var peerBufferPool = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func (peerBuffers) Get() []byte  { return *peerBufferPool.Get().(*[]byte) }
func (peerBuffers) Put(b []byte) { peerBufferPool.Put(&b) }
