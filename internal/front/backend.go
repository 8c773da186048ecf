// Package front is hostel's HTTP front end: the public listeners (a
// goroutine per connection, or epoll event loops on Linux), the parser of
// the requests it forwards itself, the limits it holds clients to, and the
// forwarding paths to the apps' processes (its own HTTP/1.1 forwarder and
// httputil.ReverseProxy).
//
// It knows the router core (internal/router) through two small interfaces:
// Router, which decides where a request goes, and Accounting, through which
// every forwarding path takes a request slot from a backend and gives it
// back (slot.go). The core keeps the route table, the backends and their
// in-flight counts; the front end keeps connections.
package front

import (
	"bufio"
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hostel/internal/spec"
)

// Router is the router core as the front end sees it.
type Router interface {
	// ServeHTTP serves what the fast path leaves to net/http, when
	// Options.Handler is nil.
	http.Handler
	// Route returns the backend a request for host (as the client sent
	// it) from a client at remote ("IP:port") is forwarded to, or nil if
	// it is not forwarded (a redirect, an unknown host, a domain whose
	// backend is gone): the router's one routing decision.
	Route(host, remote string) *Backend
}

// Accounting is the router core's count of one backend's requests. Every
// forwarding path takes a slot before it sends a request to the app and
// gives it back once (slot.go).
type Accounting interface {
	// Acquire counts a request in flight; its token is passed to the
	// matching Release. ok false means the backend's gate is closed (its
	// version sleeps, wakes or is paused): nothing was counted, and the
	// request must be held with Wait.
	Acquire() (token int64, ok bool)
	// Release ends a request counted by Acquire; o is how it went, read
	// during the call only (it is the request's, reused after).
	Release(token int64, o *Outcome)
	// Refused is told of a request held on the backend (its gate was
	// closed) that was answered after d without reaching it: past a
	// pause's bound, a wake that failed, a body too large to hold. It took
	// no slot; o is read during the call only.
	Refused(d time.Duration, o *Outcome)
	// Open reports whether Acquire would take a slot now.
	Open() bool
	// Wait holds a request that found the gate closed until it may try
	// Acquire again (nil), or returns why it is answered 503 instead.
	Wait(ctx context.Context) error
}

// Proxy makes the Backends of one router and holds what they share: the
// budgets of held requests' bodies (hold.go) and the router's decision
// (SetRoute).
type Proxy struct {
	held  *holdBudget
	logf  func(format string, args ...any)
	route func(host, remote string) *Backend
}

// Outcome is how a forwarded request went, as its forwarding path saw
// it: each path records it on the request's slot where it writes the
// response's head, and the slot's release reports it (slot).
type Outcome struct {
	// Status is the final status code sent to the client (101 for an
	// upgrade); 0 if none was: the client left, or the response broke
	// off, before it.
	Status int
	// Bytes counts the response body's bytes written to the client (as
	// the app framed them, without the head).
	Bytes int64
	// Method, Host (as the client sent it) and Target (path and query, as
	// received) are the request's; Remote is the client's "IP:port".
	Method, Host, Target, Remote string
	// Held: the request waited for its backend's gate to open (the
	// version slept, woke or was paused).
	Held bool
}

// noOutcome is what a slot whose path recorded nothing reports.
var noOutcome Outcome

// ErrRemoved is what Accounting.Wait returns, wrapped, for a backend
// removed while a request was held on it: the request is routed again
// (SetRoute), to whatever serves its host now.
var ErrRemoved = errors.New("version removed")

// SetRoute gives the Proxy the router's decision (Router.Route), with
// which a held request whose backend was removed meanwhile (a deploy
// while its service was paused) is routed again. Call it before the
// Proxy's backends serve.
func (p *Proxy) SetRoute(route func(host, remote string) *Backend) { p.route = route }

// NewProxy returns a Proxy that logs proxy errors to logf (nil discards
// them) and holds requests' bodies within hold.
func NewProxy(logf func(format string, args ...any), hold HoldLimits) *Proxy {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Proxy{held: newHoldBudget(hold), logf: logf}
}

// Close is the end of the router that made p. Every app connection
// belongs to a Backend, whose CloseIdle and Retire close them: p holds
// none of its own.
func (p *Proxy) Close() {}

// Backend is one registered version as the front end forwards to it: its
// current address with the pool of connections to it, and whether it was
// aborted. Its requests are counted by the core's Accounting.
type Backend struct {
	key  spec.VersionKey
	logf func(format string, args ...any)
	acct Accounting
	p    *Proxy
	up   atomic.Pointer[upstream] // replaced by SetAddr

	// abort, once cancelled by Abort, ends every request in flight to this
	// backend: a draining version past its stop grace. The ReverseProxy
	// path watches the context; the forwarder (forward.go) avoids a
	// context per request: Abort sets aborted and closes every connection
	// to the backend, which ends the reads waiting on them.
	abort       context.Context
	cancelAbort context.CancelFunc
	aborted     atomic.Bool
	connMu      sync.Mutex
	conns       map[*pconn]struct{} // open forwarder connections, idle or not
}

// NewBackend returns the Backend of key, served at addr ("127.0.0.1:PORT"),
// whose requests acct counts.
func (p *Proxy) NewBackend(key spec.VersionKey, addr string, acct Accounting) *Backend {
	b := &Backend{key: key, logf: p.logf, acct: acct, p: p, conns: map[*pconn]struct{}{}}
	b.abort, b.cancelAbort = context.WithCancel(context.Background())
	b.up.Store(b.newUpstream(addr))
	return b
}

// Key returns the version the backend serves.
func (b *Backend) Key() spec.VersionKey { return b.key }

// SetAddr moves the backend to addr (a restart on a new port): new
// requests go there; those in flight finish where they are.
func (b *Backend) SetAddr(addr string) {
	if prev := b.up.Swap(b.newUpstream(addr)); prev != nil {
		prev.closeIdle(true)
	}
}

// Retire closes the idle connections to the backend and those in use as
// they come back: it is being removed.
func (b *Backend) Retire() { b.up.Load().closeIdle(true) }

// CloseIdle closes the idle connections to the backend.
func (b *Backend) CloseIdle() { b.up.Load().closeIdle(false) }

// Abort ends every request in flight to the backend: those not yet
// answered get 504.
func (b *Backend) Abort() {
	b.aborted.Store(true)
	b.cancelAbort()
	b.connMu.Lock()
	for pc := range b.conns {
		pc.conn.Close()
	}
	b.connMu.Unlock()
}

// ServeHTTP forwards req to the backend, whatever its Host.
func (b *Backend) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	// The client's body, before a hold puts its spool in its place.
	cb, _ := req.Body.(*clientBody)
	rec := &recorder{ResponseWriter: w, out: Outcome{Method: req.Method, Host: req.Host,
		Target: req.URL.RequestURI(), Remote: req.RemoteAddr}}
	w = rec
	s, ok := b.acquire()
	if !ok {
		rec.out.Held = true
		start := time.Now()
		var sp *spool
		var err error
		if s, sp, err = b.hold(req); err != nil {
			b.logf("router: %s: held request: %v", b.key, err)
			answerHeld(w, req, cb, sp, err)
			b.acct.Refused(time.Since(start), &rec.out)
			return
		}
		if sp != nil {
			// Whatever the proxy does with it, the spool goes with the
			// request, as the server closes a client's body.
			defer sp.Close()
		}
	}
	// Deferred: the proxies panic with http.ErrAbortHandler when a
	// response body breaks off, and the count must still drop.
	defer s.release()
	s.out = &rec.out
	b = s.b // a held request may have been routed again
	up := b.up.Load()
	if forwardable(req) {
		up.forward(w, req)
		return
	}
	// The outbound request also ends when the backend is aborted.
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stop := context.AfterFunc(b.abort, cancel)
	defer stop()
	if cb != nil {
		// For the proxy's error handler, which sees the body wrapped
		// (clientBodyStatus). Set here, in the copy of the request this
		// path makes anyway, rather than in one more copy by the guard.
		// A held request's spool reads on from the client's body, which
		// the client may still break.
		ctx = context.WithValue(ctx, clientBodyKey{}, cb)
	}
	up.proxy.ServeHTTP(w, req.WithContext(ctx))
}

// track registers a new forwarder connection, unless the backend was
// aborted.
func (b *Backend) track(pc *pconn) bool {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	if b.aborted.Load() {
		return false
	}
	b.conns[pc] = struct{}{}
	return true
}

func (b *Backend) untrack(pc *pconn) {
	b.connMu.Lock()
	delete(b.conns, pc)
	b.connMu.Unlock()
}

func (b *Backend) newUpstream(addr string) *upstream {
	u := &upstream{addr: addr, b: b, retryUntil: time.Now().Add(retryRefused).UnixNano()}
	u.proxy = b.newProxy(u)
	return u
}

func (b *Backend) newProxy(u *upstream) *httputil.ReverseProxy {
	addr := u.addr
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// Not pr.SetURL: it would replace the Host header with addr,
			// and apps want the public host they were reached by.
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = addr
			DeletePeerFields(pr.Out.Header)
			pr.SetXForwarded()
		},
		// Not http.Transport: u's own connections, checked for stray
		// bytes right before each request is written (roundtrip.go).
		Transport:  u,
		BufferPool: bufferPool{},
		// FlushInterval 0: ReverseProxy already flushes at once for
		// text/event-stream and for bodies of unknown length, and
		// buffers everything else for throughput.
		ErrorLog: log.New(logfWriter(b.logf), "router: "+string(b.key)+": ", 0),
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			if code := clientBodyStatus(req); code != 0 {
				// The client's body stalled or broke its framing:
				// the client's fault, not the app's.
				refuse(w, code)
				return
			}
			code, msg := b.failure(req.Method, req.Host, req.URL.Path, b.abort.Err() != nil, errors.Is(err, context.Canceled), err)
			http.Error(w, msg, code)
		},
	}
}

// bufferPool is the httputil.BufferPool of the ReverseProxy path: the
// forwarder's copy buffers.
type bufferPool struct{}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

// logfWriter adapts Logf to the io.Writer a log.Logger needs.
type logfWriter func(format string, args ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	f("%s", strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// slot is one request's hold on a backend. Every forwarding path — the
// net/http handler (Backend.ServeHTTP), the goroutine front end, the
// event loops and the goroutines they hand requests to — takes one with
// acquire before it sends a request to an app and gives it back with
// release, which is idempotent: a path defers it, and one that hands its
// request on moves the slot with it (take). What a request costs the
// backend — the in-flight count drains wait for, the last-request time,
// the per-request hook — is the core's Accounting, reached from here
// only, so no exit of any path can miss it.
type slot struct {
	b     *Backend
	token int64
	// out is how the request went, filled in by its path (Outcome);
	// nil: it recorded nothing.
	out *Outcome
}

// acquire counts a request in flight to b; false if b's gate is closed
// and nothing was counted.
func (b *Backend) acquire() (slot, bool) {
	token, ok := b.acct.Acquire()
	if !ok {
		return slot{}, false
	}
	return slot{b: b, token: token}, true
}

// acquireWait counts a request for host from remote in flight to b,
// holding it while b's gate is closed (see waitAcquire).
func (b *Backend) acquireWait(ctx context.Context, host, remote string) (slot, error) {
	if s, ok := b.acquire(); ok {
		return s, nil
	}
	return b.waitAcquire(ctx, host, remote)
}

// waitAcquire holds a request for host from remote, whose acquire found
// b's gate closed, until the gate opens, then counts it in flight: one
// acquire each time the gate opens, none the moment after one failed. A
// request whose backend is removed meanwhile is routed again, and held
// or counted where its host goes now: the slot's backend is the one to
// forward to.
func (b *Backend) waitAcquire(ctx context.Context, host, remote string) (slot, error) {
	for {
		err := b.acct.Wait(ctx)
		if errors.Is(err, ErrRemoved) && b.p.route != nil {
			if nb := b.p.route(host, remote); nb != nil && nb != b {
				b = nb
				err = nil
			}
		}
		if err != nil {
			return slot{}, err
		}
		if s, ok := b.acquire(); ok {
			return s, nil
		}
	}
}

// release ends the request's hold, once; later calls do nothing.
func (s *slot) release() {
	if b := s.b; b != nil {
		s.b = nil
		o := s.out
		if o == nil {
			o = &noOutcome
		}
		b.acct.Release(s.token, o)
	}
}

// take moves the hold out of s, for a path that hands its request on:
// s is left empty, so its own release does nothing.
func (s *slot) take() slot {
	t := *s
	s.b = nil
	return t
}

// recorder is the net/http path's view of the response for its Outcome.
// Flush and Hijack reach the server's writer through Unwrap
// (http.ResponseController, which both proxies use).
type recorder struct {
	http.ResponseWriter
	out Outcome
}

func (r *recorder) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		r.out.Status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.out.Status == 0 {
		r.out.Status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.out.Bytes += int64(n)
	return n, err
}

// Hijack is ReverseProxy's for an upgrade, whose 101 it writes to the
// connection itself rather than through WriteHeader.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil {
		r.out.Status = http.StatusSwitchingProtocols
	}
	return c, brw, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
