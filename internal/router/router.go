// Package router is the core of hostel's router: the public routing table,
// the backends (one per version) and the accounting of the requests in
// flight to each, so that a version can be drained before it is stopped;
// it also opens one loopback endpoint per version. It decides where each
// request goes in one function (decide), for every path.
//
// The HTTP front end that serves the public listeners and forwards to the
// apps is internal/front, which sees the core through front.Router and
// front.Accounting.
//
// The public routing table and the set of backends are immutable values
// behind atomic pointers: a request takes no lock, and a Swap moves every
// domain to its new version in one step.
package router

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hostel/internal/drain"
	"hostel/internal/failpoint"
	"hostel/internal/front"
	"hostel/internal/spec"
)

// Options configure a Router.
type Options struct {
	// Zone is the DNS suffix of immutable version names
	// (SERVICE-VERSION.ZONE); empty means spec.DefaultZone.
	Zone string
	// Logf receives proxy errors and endpoint server errors; nil discards them.
	Logf func(format string, args ...any)
	// Requests, if set, is told of every request to a backend, on every
	// path, as it takes its slot and as it gives it back (slot.go): the
	// place for metrics, an access log, wake on request.
	Requests RequestHook
	// Internal reports whether a client at addr may reach immutable
	// version names (SERVICE-VERSION.ZONE) on the public listeners: the
	// internal zone is for this machine (and, later, the cluster's
	// peers). nil means loopback clients only.
	Internal func(addr netip.Addr) bool
	// Waker starts a sleeping version again on its first request
	// (sleep.go); nil means no version is ever put to sleep.
	Waker Waker
	// Hold bounds what the bodies of held requests (a version asleep,
	// waking or paused) take while they wait; zero fields take the front
	// end's defaults (front.HoldLimits).
	Hold front.HoldLimits
	// Certs says which certificates are there to serve (tls.go): a host
	// the table serves over HTTPS is redirected there from HTTP once its
	// certificate is. nil means HTTPS is off: nothing is redirected to it.
	// With Certs, the front end's fast path must ask Direct
	// (front.Options.Direct) before it forwards a request itself.
	Certs Certs
	// HTTPSPort is the port of the HTTPS listener, which redirects to
	// HTTPS name; "" means 443.
	HTTPSPort string
	// Peers is the client to the other nodes of a cluster (internal/peer's
	// transport): a request for an instance that has no backend here goes
	// through it to a node that runs it (remote.go, SetRemotes). nil: the
	// router reaches no other node — one machine, or a node that
	// advertises no address.
	Peers http.RoundTripper
	// Listen opens an endpoint's listener on addr (OpenEndpoint's listen):
	// the daemon's takes a socket passed from the daemon it replaces.
	// nil: net.Listen("tcp", addr).
	Listen func(addr string) (net.Listener, error)
	// EndpointsChanged is called (without blocking) after an endpoint
	// opened or closed: the daemon's socket holder keeps copies of them
	// (EndpointListeners). nil: nothing.
	EndpointsChanged func()
}

// Table is the public routing table. Swap stores a copy; host names are
// matched case-insensitively, without port and without a trailing dot.
type Table struct {
	// Domains maps a public host name to the version that serves it.
	// A host in both Domains and Redirects is served, not redirected.
	Domains map[string]spec.VersionKey
	// Redirects maps a host name to the host it answers 301 for, keeping
	// scheme, path and query.
	Redirects map[string]string
	// Internal maps the internal-zone names of preview environments'
	// services (SERVICE.ENV.ZONE) to the instances that serve them; like
	// immutable names, they answer only clients Options.Internal accepts.
	Internal map[string]spec.VersionKey
	// Zone is the zone of immutable version names (SERVICE-VERSION.ZONE);
	// empty means the zone given in Options.
	Zone string
	// Paused are production's services paused by hand (hostel pause), by
	// name, each with how long a request is held before it gets 503: every
	// backend of production's instances of such a service holds its
	// requests — the old version's and the new one's across a deploy — and
	// releases them when a table without the service is swapped in.
	Paused map[string]time.Duration
	// TLS is what HTTPS means for public host names (of Domains and
	// Redirects), by name (tls.go); a name not in it is served on HTTP
	// only, and needs no certificate.
	TLS map[string]TLS
}

// pauseOf is how long t holds a request to key: its pause's bound, or 0
// when key's service is not paused (only production's instances are).
func (t *Table) pauseOf(key spec.VersionKey) time.Duration {
	if len(t.Paused) == 0 || key.Owner() != spec.DefaultEnv {
		return 0
	}
	return t.Paused[key.Service()]
}

// Router routes HTTP requests to registered backends. The zero value is not
// usable; call New. All methods are safe for concurrent use.
type Router struct {
	zone     string
	logf     func(format string, args ...any)
	internal func(netip.Addr) bool
	hook     RequestHook
	waker    Waker
	certs    Certs
	// httpsPort is the port redirects to HTTPS name, "" for 443.
	httpsPort string

	// proxy makes the front end's side of each backend.
	proxy *front.Proxy

	// peers is Options.Peers, peerProxy the proxy of every request to a
	// peer, remotes the instances that run on other nodes (remote.go);
	// all nil without peers.
	peers     http.RoundTripper
	listen    func(addr string) (net.Listener, error)
	changed   func() // Options.EndpointsChanged, never nil
	peerProxy *httputil.ReverseProxy
	remotes   atomic.Pointer[map[spec.VersionKey]*remoteSet] // copy-on-write

	table    atomic.Pointer[Table]                        // normalized, never mutated once stored
	backends atomic.Pointer[map[spec.VersionKey]*backend] // copy-on-write

	mu        sync.Mutex // serializes writers of table, backends and endpoints
	endpoints map[spec.VersionKey]*endpoint
}

// backend is one registered version: the core's side of it (its
// accounting, slot.go) and the front end's (fb: its address, connections
// and abort). Its in-flight counter survives an AddBackend that moves it to
// a new address (a restart on a new port).
type backend struct {
	key      spec.VersionKey
	hook     VersionHook // nil: none
	fb       *front.Backend
	inflight atomic.Int64 // slots taken and not given back, and the gate bit (sleep.go)
	// retired is set once the backend is retired (Retire), for decide to
	// read without its lock: a request that comes later goes to a replica
	// on another node, if there is one.
	retired atomic.Bool
	last    atomic.Int64 // UnixNano when the last request ended (or the backend was made or woken)

	// sleep is the backend's scale-to-zero state (sleep.go), guarded by mu.
	sleep sleepState
	waker Waker

	// waiters counts WaitIdle callers, so that the decrement on the hot
	// path only takes mu when somebody is waiting.
	waiters atomic.Int32
	mu      sync.Mutex
	idle    chan struct{} // closed (and replaced) when inflight drops to 0 while waited on
}

type endpoint struct {
	url string
	srv *drain.Server
	ln  net.Listener
}

// New returns a Router with an empty table and no backends.
func New(opts Options) *Router {
	r := &Router{
		zone:      normalizeHost(opts.Zone),
		logf:      opts.Logf,
		internal:  opts.Internal,
		hook:      opts.Requests,
		waker:     opts.Waker,
		certs:     opts.Certs,
		peers:     opts.Peers,
		listen:    opts.Listen,
		changed:   opts.EndpointsChanged,
		endpoints: map[spec.VersionKey]*endpoint{},
	}
	if opts.HTTPSPort != "443" {
		r.httpsPort = opts.HTTPSPort
	}
	if r.zone == "" {
		r.zone = spec.DefaultZone
	}
	if r.logf == nil {
		r.logf = func(string, ...any) {}
	}
	if r.internal == nil {
		r.internal = netip.Addr.IsLoopback
	}
	if r.listen == nil {
		r.listen = func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	}
	if r.changed == nil {
		r.changed = func() {}
	}
	r.proxy = front.NewProxy(r.logf, opts.Hold)
	r.proxy.SetRoute(r.Route)
	if r.peers != nil {
		r.peerProxy = r.newPeerProxy(r.peers)
		none := map[spec.VersionKey]*remoteSet{}
		r.remotes.Store(&none)
	}
	empty := map[spec.VersionKey]*backend{}
	r.backends.Store(&empty)
	r.table.Store(&Table{Domains: map[string]spec.VersionKey{}, Redirects: map[string]string{}, Zone: r.zone})
	return r
}

// ServeHTTP routes a request on the public listener by its Host: first
// Domains, then Redirects, then immutable version names, with the TLS
// policy of the name (a redirect to HTTPS, HSTS); a version that runs on
// another node is reached there (remote.go). Anything else is answered
// 404 and never with another service's content.
func (r *Router) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rt := r.decide(req.Host, req.RemoteAddr, req.TLS != nil, req.URL.EscapedPath())
	if rt.hsts {
		w.Header().Set("Strict-Transport-Security", HSTSHeader)
	}
	switch target := rt.redirect; {
	case rt.b != nil:
		rt.b.fb.ServeHTTP(w, req)
	case rt.remote != nil:
		r.serveRemote(w, req, rt.remote)
	case rt.https:
		r.answered(AnswerHTTPS)
		if r.httpsPort != "" {
			target = net.JoinHostPort(target, r.httpsPort)
		}
		http.Redirect(w, req, "https://"+target+req.URL.RequestURI(), http.StatusMovedPermanently)
	case rt.domain != "":
		r.notRunning(w, req, rt.domain)
	case target != "":
		r.answered(AnswerRedirect)
		scheme := "http://"
		if req.TLS != nil {
			scheme = "https://"
		}
		// Keep a non-default port the client used, so redirects work on
		// development listeners such as :8080 too.
		if _, port, err := net.SplitHostPort(req.Host); err == nil && port != "" &&
			!(port == "80" && req.TLS == nil) && !(port == "443" && req.TLS != nil) {
			target = net.JoinHostPort(target, port)
		}
		http.Redirect(w, req, scheme+target+req.URL.RequestURI(), http.StatusMovedPermanently)
	default:
		r.answered(AnswerUnknownHost)
		http.Error(w, fmt.Sprintf("hostel: no service for host %q", normalizeHost(req.Host)), http.StatusNotFound)
	}
}

// route is the router's decision for a request on a public listener.
// All zero: an unknown host (404).
type route struct {
	b        *backend        // forward to it
	remote   *remoteSet      // else forward to a node that runs the version (remote.go)
	domain   spec.VersionKey // a domain of the table whose version runs nowhere (503)
	redirect string          // answer 301 to this host
	https    bool            // with redirect: to HTTPS, on the HTTPS listener's port
	hsts     bool            // add Strict-Transport-Security to the response
}

// decide routes a request for host (as the client sent it) from a client
// at remote ("IP:port"), over TLS or not (secure), for the escaped path:
// first Domains, then Redirects, each with its name's TLS policy
// (tls.go), then immutable version names, which answer internal clients
// only — to others they are unknown hosts. A version with no backend here
// goes to a node that runs it (remote.go). It is the one routing rule of
// every path: net/http's (ServeHTTP), the front end's goroutines and its
// event loops (Route, with Direct and DirectTLS).
func (r *Router) decide(host, remote string, secure bool, path string) route {
	host = normalizeHost(host)
	t := r.table.Load()
	if key, ok := t.Domains[host]; ok {
		rt := r.routeTo(key)
		rt.domain = key
		r.tlsOf(t, &rt, host, host, secure, path)
		return rt
	}
	if target, ok := t.Redirects[host]; ok {
		rt := route{redirect: target}
		r.tlsOf(t, &rt, host, target, secure, path)
		return rt
	}
	if key, ok := t.Internal[host]; ok && r.internalClient(remote) {
		rt := r.routeTo(key)
		rt.domain = key
		return rt
	}
	if service, v, ok := spec.ParseVersionHost(host, t.Zone); ok && r.internalClient(remote) {
		return r.routeTo(spec.Key(service, v))
	}
	return route{}
}

// routeTo returns the route to instance key: its backend here, else its
// replicas on other nodes. A backend here that is retired — it drains
// before it stops, as on a node drained or that an instance moved away
// from — gives way to the replicas elsewhere, if there are any: it takes
// no new request.
func (r *Router) routeTo(key spec.VersionKey) route {
	b := (*r.backends.Load())[key]
	if b == nil || b.retired.Load() {
		if rs := r.remoteOf(key); rs != nil || b == nil {
			return route{remote: rs}
		}
	}
	return route{b: b}
}

var _ front.Router = (*Router)(nil)

// Route is front.Router's: the backend decide forwards a request to, nil
// if none — also for a version that runs on another node, which
// net/http's path forwards there (ServeHTTP). It is the decision for
// HTTPS, where TLS never changes the backend (HSTS only adds a header);
// the front end's fast path asks Direct (HTTP: is it redirected to
// HTTPS?) or DirectTLS (HTTPS: is HSTS added?) before it forwards a
// request itself.
func (r *Router) Route(host, remote string) *front.Backend {
	if b := r.decide(host, remote, true, "").b; b != nil {
		return b.fb
	}
	return nil
}

// answered tells the hook of an answer of the router's own.
func (r *Router) answered(a Answer) {
	if r.hook != nil {
		r.hook.Answered(a)
	}
}

// internalClient reports whether the client at remote ("IP:port") may
// reach the internal zone (Options.Internal).
func (r *Router) internalClient(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	return err == nil && r.internal(ap.Addr().Unmap())
}

// serveKey proxies to key's backend, or to a node that runs key. A
// version that runs nowhere answers 503: the host is ours, its version is
// not running.
func (r *Router) serveKey(w http.ResponseWriter, req *http.Request, key spec.VersionKey) {
	if b := (*r.backends.Load())[key]; b != nil {
		b.fb.ServeHTTP(w, req)
		return
	}
	if set := r.remoteOf(key); set != nil {
		r.serveRemote(w, req, set)
		return
	}
	r.notRunning(w, req, key)
}

func (r *Router) notRunning(w http.ResponseWriter, req *http.Request, key spec.VersionKey) {
	r.answered(AnswerNotRunning)
	r.logf("router: %s: no backend registered for %s", req.Host, key)
	// The page names no service or version: those are for the log.
	w.Header().Set("Retry-After", strconv.Itoa(front.RetryAfter))
	http.Error(w, "hostel: the service is not running", http.StatusServiceUnavailable)
}

// AddBackend registers key as served at addr ("127.0.0.1:PORT"). If key is
// already registered, future requests go to the new addr; requests in
// flight finish where they are and stay counted.
func (r *Router) AddBackend(key spec.VersionKey, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.backends.Load()
	if b, ok := old[key]; ok {
		b.fb.SetAddr(addr)
		// A process runs at addr now: one the engine started for a
		// sleeping version is awake.
		b.started()
		return
	}
	r.addLocked(key, addr, false)
}

// AddSleepingBackend registers key asleep: no process serves it, its gate
// is closed, and its first request wakes it through the Waker (a kept
// version registered without starting it). If key is already registered
// it is left as it is: a version that runs stays awake.
func (r *Router) AddSleepingBackend(key spec.VersionKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := (*r.backends.Load())[key]; ok {
		return
	}
	// No address until a wake sets one: nothing is sent there while the
	// gate is closed.
	r.addLocked(key, "127.0.0.1:0", true)
}

// addLocked registers a new backend for key at addr, asleep or not. r.mu
// must be held.
func (r *Router) addLocked(key spec.VersionKey, addr string, asleep bool) {
	old := *r.backends.Load()
	b := &backend{key: key, idle: make(chan struct{}), waker: r.waker}
	if r.hook != nil {
		b.hook = r.hook.Version(key)
	}
	b.last.Store(time.Now().UnixNano())
	b.sleep.asleep = asleep
	if bound := r.table.Load().pauseOf(key); bound > 0 {
		// A new version of a paused service is born paused.
		b.sleep.pause.set(bound)
	}
	b.setGateLocked()
	b.fb = r.proxy.NewBackend(key, addr, b)
	next := make(map[spec.VersionKey]*backend, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[key] = b
	r.backends.Store(&next)
}

// RemoveBackend unregisters key and, on a router without peers, closes
// its endpoint, if any; with peers the endpoint stays open, reaching key
// wherever else it runs, until CloseEndpoint. Requests already in flight
// finish; new ones for key go to another node that runs it, or get 503
// (by domain) or 404 (by immutable name). Call WaitIdle first to drain.
func (r *Router) RemoveBackend(key spec.VersionKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.peers == nil {
		r.closeEndpointLocked(key)
	}
	old := *r.backends.Load()
	b, ok := old[key]
	if !ok {
		return
	}
	b.fb.Retire()
	b.retire()
	next := make(map[spec.VersionKey]*backend, len(old))
	for k, v := range old {
		if k != key {
			next[k] = v
		}
	}
	r.backends.Store(&next)
	if r.hook != nil {
		r.hook.Removed(key)
	}
}

// Swap replaces the public table in one step. It fails, changing nothing, if
// a host name or a redirect target is empty. A domain may name a key with
// no backend registered: it answers 503 until one is (a version that could
// not start must not keep the others from being routed).
func (r *Router) Swap(t Table) error {
	if err := failpoint.Inject("router-before-swap"); err != nil {
		return fmt.Errorf("router: swap: %w", err)
	}
	next := &Table{
		Domains:   make(map[string]spec.VersionKey, len(t.Domains)),
		Redirects: make(map[string]string, len(t.Redirects)),
		Zone:      normalizeHost(t.Zone),
	}
	if next.Zone == "" {
		next.Zone = r.zone
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for host, key := range t.Domains {
		h := normalizeHost(host)
		if h == "" {
			return fmt.Errorf("router: swap: empty domain %q", host)
		}
		next.Domains[h] = key
	}
	for host, target := range t.Redirects {
		h := normalizeHost(host)
		if h == "" {
			return fmt.Errorf("router: swap: empty redirect host %q", host)
		}
		if target == "" {
			return fmt.Errorf("router: swap: redirect %q: empty target", host)
		}
		next.Redirects[h] = target
	}
	for host, key := range t.Internal {
		h := normalizeHost(host)
		if h == "" {
			return fmt.Errorf("router: swap: empty internal name %q", host)
		}
		if next.Internal == nil {
			next.Internal = make(map[string]spec.VersionKey, len(t.Internal))
		}
		next.Internal[h] = key
	}
	for name, bound := range t.Paused {
		if bound <= 0 {
			return fmt.Errorf("router: swap: pause of %q: bound %s is not positive", name, bound)
		}
		if next.Paused == nil {
			next.Paused = make(map[string]time.Duration, len(t.Paused))
		}
		next.Paused[name] = bound
	}
	for host, p := range t.TLS {
		h := normalizeHost(host)
		_, domain := next.Domains[h]
		_, redirect := next.Redirects[h]
		switch {
		case !domain && !redirect:
			return fmt.Errorf("router: swap: tls of %q, which is neither a domain nor a redirect", host)
		case p.HSTS && !p.HTTPS:
			return fmt.Errorf("router: swap: tls of %q: hsts without https", host)
		case p == TLS{}:
			continue
		}
		if next.TLS == nil {
			next.TLS = make(map[string]TLS, len(t.TLS))
		}
		next.TLS[h] = p
	}
	r.table.Store(next)
	// Pauses by hand follow the table: on where it pauses a service,
	// lifted where it no longer does.
	for key, b := range *r.backends.Load() {
		b.setPause(next.pauseOf(key))
	}
	return nil
}

// Table returns a copy of the current table, with host names normalized.
func (r *Router) Table() Table {
	t := r.table.Load()
	c := Table{
		Domains:   make(map[string]spec.VersionKey, len(t.Domains)),
		Redirects: make(map[string]string, len(t.Redirects)),
		Zone:      t.Zone,
	}
	for k, v := range t.Domains {
		c.Domains[k] = v
	}
	for k, v := range t.Redirects {
		c.Redirects[k] = v
	}
	for k, v := range t.Internal {
		if c.Internal == nil {
			c.Internal = make(map[string]spec.VersionKey, len(t.Internal))
		}
		c.Internal[k] = v
	}
	for k, v := range t.Paused {
		if c.Paused == nil {
			c.Paused = make(map[string]time.Duration, len(t.Paused))
		}
		c.Paused[k] = v
	}
	for k, v := range t.TLS {
		if c.TLS == nil {
			c.TLS = make(map[string]TLS, len(t.TLS))
		}
		c.TLS[k] = v
	}
	return c
}

// OpenEndpoint opens a loopback listener on listen ("127.0.0.1:0" or a
// fixed port) whose every request goes to key's backend, whatever its Host
// — with Options.Peers, to a node that runs key when it has no backend
// here, which it need not have when the endpoint opens: each request is
// routed as it comes. It returns the endpoint's URL,
// "http://127.0.0.1:PORT". Opening an endpoint that is already open
// returns its URL if listen is compatible.
func (r *Router) OpenEndpoint(key spec.VersionKey, listen string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := (*r.backends.Load())[key]; !ok && r.peers == nil {
		return "", fmt.Errorf("router: endpoint for %s: no backend", key)
	}
	if ep, ok := r.endpoints[key]; ok {
		_, port, err := net.SplitHostPort(listen)
		if err == nil && (port == "0" || ep.ln.Addr().String() == listen) {
			return ep.url, nil
		}
		return "", fmt.Errorf("router: endpoint for %s already open at %s", key, ep.url)
	}
	ln, err := r.listen(listen)
	if err != nil {
		return "", fmt.Errorf("router: endpoint for %s: %w", key, err)
	}
	ep := &endpoint{url: "http://" + ln.Addr().String(), ln: ln}
	ep.srv = drain.New(&http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			r.serveKey(w, req, key)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          log.New(logfWriter(r.logf), "router: endpoint "+string(key)+": ", 0),
	})
	r.endpoints[key] = ep
	r.changed()
	go func() {
		if err := ep.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.logf("router: endpoint %s: %v", key, err)
		}
	}()
	return ep.url, nil
}

// CloseEndpoint closes key's endpoint listener and its connections. It does
// nothing if none is open.
func (r *Router) CloseEndpoint(key spec.VersionKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeEndpointLocked(key)
}

func (r *Router) closeEndpointLocked(key spec.VersionKey) {
	ep, ok := r.endpoints[key]
	if !ok {
		return
	}
	delete(r.endpoints, key)
	ep.srv.Close()
	r.changed()
}

// InFlight returns how many requests to key are being served now, by any
// route (domain, immutable name, endpoint). It is 0 for an unknown key.
func (r *Router) InFlight(key spec.VersionKey) int64 {
	if b := (*r.backends.Load())[key]; b != nil {
		return b.inflight.Load() &^ gateClosed
	}
	return 0
}

// LastRequest returns when the last request to key ended, by any route;
// the zero time if none has (or key is unknown).
func (r *Router) LastRequest(key spec.VersionKey) time.Time {
	if b := (*r.backends.Load())[key]; b != nil {
		if ns := b.last.Load(); ns != 0 {
			return time.Unix(0, ns)
		}
	}
	return time.Time{}
}

// WaitIdle returns nil once nothing is in flight to key (at once for an
// unknown key), or ctx's error if ctx ends first.
func (r *Router) WaitIdle(ctx context.Context, key spec.VersionKey) error {
	b := (*r.backends.Load())[key]
	if b == nil {
		return nil
	}
	b.waiters.Add(1)
	defer b.waiters.Add(-1)
	for {
		// Take the channel before reading the count: a decrement to 0
		// after this point closes exactly this channel.
		b.mu.Lock()
		idle := b.idle
		b.mu.Unlock()
		if b.inflight.Load()&^gateClosed == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Abort ends every request in flight to key — those not yet answered get
// 504 — and returns how many there were. The engine calls it for a draining
// version whose stop grace ran out.
func (r *Router) Abort(key spec.VersionKey) int64 {
	b := (*r.backends.Load())[key]
	if b == nil {
		return 0
	}
	n := b.inflight.Load() &^ gateClosed
	b.fb.Abort()
	return n
}

// Close closes every endpoint listener and the idle backend and peer
// connections. The public and peer listeners belong to the caller.
func (r *Router) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for key := range r.endpoints {
		r.closeEndpointLocked(key)
	}
	for _, b := range *r.backends.Load() {
		b.fb.CloseIdle()
	}
	r.proxy.Close()
	if c, ok := r.peers.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	return nil
}

// logfWriter adapts Logf to the io.Writer a log.Logger needs.
type logfWriter func(format string, args ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	f("%s", strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// normalizeHost lowercases host (ASCII only: host names on the wire are
// ASCII, IDNs arrive as punycode), strips a ":port" and then one trailing
// dot. An IPv6 literal keeps its brackets: "[::1]:80" is "[::1]".
func normalizeHost(host string) string {
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, ']'); i >= 0 {
			host = host[:i+1]
		} else if i := strings.IndexByte(host, ':'); i >= 0 {
			// Not a well-formed literal: treat it like any other name.
			host = host[:i]
		}
	} else if i := strings.IndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return lowerASCII(host)
		}
	}
	return host
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}
