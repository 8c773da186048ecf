package front

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hostel/internal/drain"
)

// This file is the public listener's HTTP/1.1 front end. net/http's server
// costs a proxy more than half of its throughput on small machines: a
// header map and a cloned one per request, a response writer, a
// background read per request to notice clients that hang up, a read
// deadline per request. The front end reads the common request itself —
// HTTP/1.1, no body, no upgrade, for a host the router forwards — and
// writes the backend's response straight into the client connection's
// buffer (fast.go).
//
// Everything else goes to an ordinary http.Server: the connection is handed
// over with the bytes already read in front of it, and stays with net/http
// from then on. A connection thus starts on the fast path and may move to
// net/http once, never back. Malformed and oversized requests are left to
// net/http too, which answers them as it always does.

// Options configure a Front.
type Options struct {
	// Handler serves what the fast path does not take; nil means the
	// router itself. It must pass requests for which Direct reports true
	// to the router unchanged.
	Handler http.Handler
	// Direct reports whether a request for host (as sent) and path (the
	// escaped path of the target) goes through Handler straight to the
	// router: no ACME challenge, no redirect to HTTPS. nil means always.
	Direct func(host, path string) bool
	// ReadHeaderTimeout bounds the reading of a request's header, from
	// the connection's accept or the request's first byte; 0 means 30s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle for so long; 0 means
	// 2 minutes.
	IdleTimeout time.Duration
	// Logf receives the front end's own errors (a panic serving a
	// connection, an event loop that cannot start); nil discards them.
	Logf func(format string, args ...any)
	// ErrorLog is net/http's error log for the requests it serves.
	ErrorLog *log.Logger
	// MaxHeaderBytes bounds a request's head (request line and fields):
	// a larger one is answered 431 and never reaches an app; 0 means
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// MaxRequestLine bounds a request line: a longer one is answered 414;
	// 0 means DefaultMaxRequestLine.
	MaxRequestLine int
	// BodyTimeout bounds the wait for a request body's first byte, before
	// the request takes an app connection, and between its reads after:
	// a stalled body is answered 408; 0 means DefaultBodyTimeout.
	BodyTimeout time.Duration
	// WriteTimeout closes a connection whose client has not taken any of
	// a response for so long; 0 means DefaultWriteTimeout.
	WriteTimeout time.Duration
	// MaxConnections bounds the client connections open at once, on
	// every listener and path (an event loop, a goroutine, net/http, a
	// websocket): past it a new HTTP connection is answered 503 with
	// Retry-After and closed, a TLS one closed. 0 means
	// DefaultMaxConnections(); negative, no bound.
	MaxConnections int
	// Loops is the number of event loops that serve plain-HTTP
	// connections where the platform has them (Linux): 0 means one per
	// two CPUs (GOMAXPROCS), a negative number none (a goroutine per
	// connection).
	Loops int

	// TLSConfig, TLSHandler and DirectTLS are those of ServeTLS: the
	// listener's TLS configuration (with "h2" in NextProtos for HTTP/2),
	// the handler chain for what the fast path does not take (nil: the
	// router) and which requests go straight to the router (nil: all).
	TLSConfig  *tls.Config
	TLSHandler http.Handler
	DirectTLS  func(host, path string) bool
}

// Front serves the router on public HTTP listeners.
type Front struct {
	core      Router
	logf      func(format string, args ...any)
	direct    func(host, path string) bool
	directTLS func(host, path string) bool
	tlsConfig *tls.Config
	header    time.Duration
	idle      time.Duration
	lim       limits

	// plain and secure serve the connections handed over from Serve and
	// ServeTLS.
	plain, secure *fallback

	// loops are the event loops of plain-HTTP connections (Linux), started
	// by the first Serve unless Options.Loops is negative.
	loops     *loops
	loopCount int

	// maxConns is Options.MaxConnections, defaults applied (0: none);
	// open counts the client connections (connTicket), turning the ones
	// being turned away.
	maxConns int64
	open     atomic.Int64
	turning  atomic.Int64

	shutting atomic.Bool
	// passer takes the idle connections at Shutdown (PassIdle).
	passer atomic.Pointer[Passer]
	// clock is the time (UnixNano) as of the sweeper's last tick: the
	// phases of connections are timed by it, which is precise enough for
	// their timeouts and cheaper than reading the clock per request.
	clock    atomic.Int64
	handoffs atomic.Int64 // connections handed to net/http, for tests
	mu       sync.Mutex
	conns    map[*frontConn]struct{}
	lns      map[net.Listener]struct{}
	started  bool
	closed   bool          // Close was called
	stop     chan struct{} // ends the sweeper
	stopOnce sync.Once
	// serving is closed once the first Serve started the event loops and
	// the sweeper, whose clock times the connections.
	serving chan struct{}
}

// New returns a front end for the router r. Serve it on listeners;
// Shutdown or Close it at the end.
func New(r Router, opts Options) *Front {
	f := &Front{
		core:      r,
		logf:      opts.Logf,
		direct:    opts.Direct,
		directTLS: opts.DirectTLS,
		tlsConfig: opts.TLSConfig,
		header:    opts.ReadHeaderTimeout,
		idle:      opts.IdleTimeout,
		loopCount: opts.Loops,
		lim:       newLimits(opts),
		conns:     map[*frontConn]struct{}{},
		lns:       map[net.Listener]struct{}{},
		stop:      make(chan struct{}),
		serving:   make(chan struct{}),
	}
	if f.logf == nil {
		f.logf = func(string, ...any) {}
	}
	switch n := opts.MaxConnections; {
	case n == 0:
		f.maxConns = int64(DefaultMaxConnections())
	case n > 0:
		f.maxConns = int64(n)
	}
	if f.header <= 0 {
		f.header = 30 * time.Second
	}
	if f.idle <= 0 {
		f.idle = 2 * time.Minute
	}
	h := opts.Handler
	if h == nil {
		h = r
	}
	f.plain = f.newFallback(h, opts.ErrorLog)
	th := opts.TLSHandler
	if th == nil {
		th = r
	}
	f.secure = f.newFallback(withTLSState(th), opts.ErrorLog)
	f.secure.srv.TLSConfig = opts.TLSConfig
	f.secure.srv.ConnContext = tlsStateContext
	return f
}

// fallback is the net/http server of the connections a listener hands
// over.
type fallback struct {
	srv *http.Server
	// drain serves srv: its Stop ends the HTTP/1.1 connections
	// (handoffConn) without dropping a request, before srv's Shutdown
	// ends the HTTP/2 ones.
	drain   *drain.Server
	l       *handoffListener
	started bool // guarded by Front.mu
}

func (f *Front) newFallback(h http.Handler, errorLog *log.Logger) *fallback {
	srv := &http.Server{Handler: f.guard(h), ReadHeaderTimeout: f.header, IdleTimeout: f.idle,
		MaxHeaderBytes: f.lim.maxHead, ErrorLog: errorLog, ConnState: connState}
	return &fallback{
		srv: srv,
		drain: drain.New(srv).Only(func(c net.Conn) bool {
			_, http1 := c.(*handoffConn)
			return http1
		}),
		l: &handoffListener{ch: make(chan net.Conn), done: make(chan struct{})},
	}
}

// Serve accepts connections on ln until ln fails or the Front is shut
// down, which returns http.ErrServerClosed.
func (f *Front) Serve(ln net.Listener) error { return f.serve(ln, false) }

// ServeTLS is Serve for TLS connections, with Options.TLSConfig. A
// connection that negotiates HTTP/2 (or another protocol than HTTP/1.1)
// is handed to net/http once its handshake is done; requests net/http
// serves for a connection handed over after a fast request see the TLS
// state in Request.TLS as usual.
func (f *Front) ServeTLS(ln net.Listener) error {
	if f.tlsConfig == nil {
		return errors.New("router: front end: ServeTLS without a TLSConfig")
	}
	return f.serve(ln, true)
}

func (f *Front) serve(ln net.Listener, secure bool) error {
	fb := f.plain
	if secure {
		fb = f.secure
	}
	f.mu.Lock()
	if f.shutting.Load() {
		f.mu.Unlock()
		return http.ErrServerClosed
	}
	f.lns[ln] = struct{}{}
	if !fb.started {
		fb.started = true
		fb.l.addr = ln.Addr()
		go fb.drain.Serve(fb.l)
	}
	if f.loops == nil && f.loopCount >= 0 {
		f.loops = f.startLoops(f.loopCount)
		if f.loops == nil {
			f.loopCount = -1 // not again
		}
	}
	var ls *loops
	if !secure {
		ls = f.loops // TLS connections go to a loop after their handshake
	}
	if !f.started {
		f.started = true
		f.clock.Store(time.Now().UnixNano())
		go f.sweep(f.loops)
		close(f.serving)
	}
	f.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.shutting.Load() {
				return http.ErrServerClosed
			}
			if acceptAgain(err) {
				// Out of descriptors, say: the listener is not given
				// up, the daemon serves on as connections close.
				if backoff == 0 {
					f.logf("router: front end: accept: %v; trying again", err)
				}
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		t := f.admit()
		if t == nil {
			f.turnAway(c, secure)
			continue
		}
		if ls != nil {
			if err := ls.adopt(c, t); err == nil {
				continue
			}
			// Not adopted (the loops are closing, or the connection
			// has no descriptor): it is served as below.
		}
		fc := f.newConn(c, secure, nil, t)
		if fc == nil {
			return http.ErrServerClosed
		}
		go fc.serve()
	}
}

// newConn tracks a client connection served by a goroutine: a new one, or
// one an event loop gives back with the bytes it read ahead (pending). It
// returns nil, with c closed, if the Front is shutting down.
func (f *Front) newConn(c net.Conn, secure bool, pending []byte, t *connTicket) *frontConn {
	var tc *tls.Conn
	if secure {
		c = &switchConn{Conn: c, write: f.lim.write, ticket: t}
		tc = tls.Server(c, f.tlsConfig)
	}
	return f.track(c, tc, pending, t)
}

// track is newConn for a client connection c, with tc its TLS layer
// (over a *switchConn) if it has one, and t its ticket.
func (f *Front) track(c net.Conn, tc *tls.Conn, pending []byte, t *connTicket) *frontConn {
	fc := &frontConn{f: f, c: c, remote: c.RemoteAddr().String(), fb: f.plain, direct: f.direct, ticket: t}
	if tc != nil {
		fc.tls = tc
		fc.c, fc.direct, fc.fb = tc, f.directTLS, f.secure
	}
	fc.cr.c, fc.cr.h, fc.cr.pending = fc.c, &fc.hangup, pending
	fc.given = pending != nil
	fc.since.Store(f.clock.Load())
	fc.phase.Store(phaseNew)
	f.mu.Lock()
	defer f.mu.Unlock()
	// A connection an event loop gives back with a request under way is
	// served to its end at shutdown, but not after Close.
	if f.closed || f.shutting.Load() && pending == nil {
		c.Close()
		t.release()
		return nil
	}
	f.conns[fc] = struct{}{}
	return fc
}

// loopConns is how many connections the event loops hold, -1 if there
// are none.
func (f *Front) loopConns() int {
	f.mu.Lock()
	ls := f.loops
	f.mu.Unlock()
	if ls == nil {
		return -1
	}
	return ls.count()
}

// Shutdown stops accepting, lets the requests in flight finish, closes idle
// connections and returns once every connection is closed, or with ctx's
// error (call Close then). Connections handed to net/http end by
// drain.Server's Stop (HTTP/1.1), then http.Server.Shutdown (HTTP/2).
func (f *Front) Shutdown(ctx context.Context) error {
	f.closeListeners()
	// net/http closes its idle connections now and the others after
	// their response; connections still handed over meanwhile serve one
	// request. Its own Shutdown, which stops taking them, must wait until
	// no connection can be handed over any more.
	f.plain.srv.SetKeepAlivesEnabled(false)
	f.secure.srv.SetKeepAlivesEnabled(false)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if f.expire(true) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	f.stopOnce.Do(func() { close(f.stop) })
	// The HTTP/1.1 connections handed to net/http end first: the idle
	// ones now (closed, or passed on once net/http's read of them is cut,
	// pass.go), each other one after its response. net/http's Shutdown
	// would close unanswered one whose request it reads after it began —
	// a large head's end that comes late, say (internal/drain). It ends
	// the HTTP/2 ones, which it tells to go away.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, fb := range []*fallback{f.plain, f.secure} {
		wg.Go(func() {
			if errs[i] = fb.drain.Stop(ctx); errs[i] == nil {
				errs[i] = fb.srv.Shutdown(ctx)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close closes the listeners and every connection at once.
func (f *Front) Close() error {
	f.closeListeners()
	f.mu.Lock()
	f.closed = true
	for fc := range f.conns {
		fc.phase.Store(phaseClosed)
		fc.c.Close()
	}
	ls := f.loops
	f.mu.Unlock()
	ls.close()
	f.stopOnce.Do(func() { close(f.stop) })
	return errors.Join(f.plain.srv.Close(), f.secure.srv.Close())
}

func (f *Front) closeListeners() {
	f.mu.Lock()
	f.shutting.Store(true)
	for ln := range f.lns {
		ln.Close()
		delete(f.lns, ln)
	}
	for _, fb := range []*fallback{f.plain, f.secure} {
		if !fb.started {
			// Serve never ran: its Shutdown would wait for nothing.
			fb.l.Close()
		}
	}
	f.mu.Unlock()
}

// sweep enforces the header and idle timeouts: cheaper than a read
// deadline per request. It has the event loops ls check theirs on the same
// ticks.
func (f *Front) sweep(ls *loops) {
	tick := min(f.header, f.idle) / 4
	tick = min(max(tick, 5*time.Millisecond), watchDelay)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			ls.stop()
			return
		case now := <-t.C:
			f.clock.Store(now.UnixNano())
			f.expire(f.shutting.Load())
			ls.tick()
		}
	}
}

// expire closes the connections past their timeout, and with shutting the
// idle ones, and starts watching the clients of requests that run longer
// than watchDelay; it returns how many connections remain.
func (f *Front) expire(shutting bool) int {
	now := f.clock.Load()
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		ph := fc.phase.Load()
		age := time.Duration(now - fc.since.Load())
		if ph == phaseActive && age > watchDelay && fc.cr.armed.CompareAndSwap(true, false) {
			go fc.cr.backgroundRead()
		}
		if shutting && f.passIdle(fc, ph) {
			continue
		}
		if f.expired(ph, age, shutting) && fc.phase.CompareAndSwap(ph, phaseClosed) {
			fc.c.Close()
		}
	}
	return len(f.conns) + f.loops.count()
}

// expired reports whether a connection that has been in phase ph for age
// is to be closed: past the header or idle timeout, or idle at shutdown.
func (f *Front) expired(ph int32, age time.Duration, shutting bool) bool {
	switch ph {
	case phaseNew:
		// A connection whose request may be on its way is given a
		// moment at shutdown, as net/http does.
		return age > f.header || shutting && age > 5*time.Second
	case phaseHeader:
		return age > f.header
	case phaseIdle:
		return age > f.idle || shutting
	case phaseWriting:
		return age > f.lim.write
	}
	return false
}

const (
	phaseNew     int32 = iota // accepted, no byte read yet
	phaseIdle                 // between requests
	phaseHeader               // reading a request's header
	phaseActive               // serving a request
	phaseClosed               // closed by the sweeper or shutdown
	phaseWriting              // an event loop's: the client has yet to take a response
	phasePassing              // idle at shutdown, being passed on (pass.go)
)

// watchDelay is about how long a request runs before its client
// connection is watched for a hang-up (the sweeper starts the watch): quick
// requests pay nothing for it.
const watchDelay = 50 * time.Millisecond

var (
	frontReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	frontWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

type frontConn struct {
	f      *Front
	c      net.Conn  // the client connection (fc.tls for TLS)
	tls    *tls.Conn // nil for plain HTTP
	fb     *fallback
	direct func(host, path string) bool
	remote string
	state  *tls.ConnectionState
	cr     connReader
	wr     timedWriter
	br     *bufio.Reader
	bw     *bufio.Writer
	phase  atomic.Int32
	since  atomic.Int64 // UnixNano of the phase's start
	hangup hangup
	req    Request
	// fromLoop: an event loop gave the connection back; it is not
	// offered to one again.
	fromLoop bool
	// given: it came with bytes read of it, or a request under way; not
	// idle before it served one (pass.go).
	given bool
	// slot is the request an event loop gave back with the connection,
	// if any: released when run ends, whether or not it got to serve it.
	slot slot
	// ticket is the connection's among MaxConnections: given back when
	// run closes it, or passed on with the connection.
	ticket *connTicket
}

func (fc *frontConn) serve() { fc.run(nil) }

// run serves the connection; first, if set, finishes a request an event
// loop began (it writes the response to w and reports whether the
// connection can carry another request) before the next is read.
func (fc *frontConn) run(first func(w *bufio.Writer, h *hangup) bool) {
	f := fc.f
	fc.br = frontReaders.Get().(*bufio.Reader)
	fc.br.Reset(&fc.cr)
	fc.bw = frontWriters.Get().(*bufio.Writer)
	fc.wr.c = fc.c
	if fc.tls == nil {
		fc.wr.d = f.lim.write // a TLS connection's switchConn times its writes
	}
	fc.bw.Reset(&fc.wr)
	fc.req.shutting = &f.shutting
	handedOff := false
	defer func() {
		if e := recover(); e != nil {
			// As net/http does for a handler: one connection is lost,
			// not the daemon.
			f.logf("router: front end: panic serving %s: %v\n%s", fc.remote, e, debug.Stack())
		}
		if !handedOff {
			fc.phase.Store(phaseClosed)
			fc.c.Close()
			fc.ticket.release()
			fc.release()
			f.untrack(fc)
		}
		fc.slot.release()
	}()
	if fc.tls != nil {
		// Bounded by the header timeout, as the connection is new.
		if fc.tls.Handshake() != nil {
			return
		}
		st := fc.tls.ConnectionState()
		if p := st.NegotiatedProtocol; p != "" && p != "http/1.1" {
			// HTTP/2 and the rest are net/http's, on the *tls.Conn
			// itself. Active: the sweeper leaves it alone.
			if !fc.phase.CompareAndSwap(phaseNew, phaseActive) {
				return
			}
			fc.release()
			fc.f.handoffs.Add(1)
			handedOff = fc.fb.l.push(fc.tls)
			fc.f.untrack(fc)
			return
		}
		fc.state = &st
		if first == nil && !fc.fromLoop {
			f.mu.Lock()
			ls := f.loops
			f.mu.Unlock()
			if ls != nil && ls.adoptTLS(fc.tls, fc.remote, fc.ticket) == nil {
				// An event loop serves it from now on.
				fc.release()
				handedOff = true
				f.untrack(fc)
				return
			}
		}
	}
	if first != nil {
		if !fc.phase.CompareAndSwap(phaseNew, phaseActive) {
			return
		}
		fc.startWatch()
		keep := first(fc.bw, &fc.hangup)
		fc.slot.release() // before the flush, as serveFast's
		fc.stopWatch()
		if fc.bw.Flush() != nil || !keep {
			return
		}
		if f.shutting.Load() {
			fc.passOn() // a response that kept the connection (pass.go)
			return
		}
		fc.since.Store(f.clock.Load())
		fc.phase.Store(phaseIdle)
	}
	for {
		ph := fc.phase.Load()
		if ph == phasePassing {
			fc.passOn()
			return
		}
		if fc.br.Buffered() == 0 {
			if _, err := fc.br.Peek(1); err != nil {
				if fc.phase.Load() == phasePassing {
					fc.passOn()
				}
				return
			}
		}
		if ph == phaseIdle {
			fc.since.Store(f.clock.Load())
		}
		if !fc.phase.CompareAndSwap(ph, phaseHeader) {
			if fc.phase.Load() == phasePassing {
				fc.passOn() // with the bytes that came meanwhile
			}
			return
		}
		// No head: a large header, which net/http reads, or a broken
		// request, which net/http answers what it can of.
		head, err := bufferedHead(fc.br)
		if err != nil && (fc.br.Buffered() == 0 || fc.phase.Load() == phaseClosed) {
			return
		}
		var b *Backend
		if head != nil {
			b = f.fastBackend(string(head), &fc.req, fc.remote, fc.tls != nil)
		}
		if !fc.phase.CompareAndSwap(phaseHeader, phaseActive) {
			return // closed by the sweeper or Close
		}
		if b == nil {
			handedOff = fc.handOff()
			return
		}
		fc.br.Discard(len(head))
		fc.req.RemoteAddr, fc.req.TLS = fc.remote, fc.tls != nil
		fc.startWatch()
		keep := b.serveFast(&fc.req, fc.bw, &fc.hangup, false)
		fc.stopWatch()
		if fc.bw.Flush() != nil || !keep {
			return
		}
		if f.shutting.Load() {
			fc.passOn()
			return
		}
		fc.since.Store(f.clock.Load())
		fc.phase.Store(phaseIdle)
	}
}

// fastBackend parses a request head into req and returns the backend the
// fast path forwards it to, for the goroutines and the event loops alike;
// nil leaves the request to net/http: a request the parser does not take,
// a host the router does not forward (a redirect, an unknown host, a
// domain whose backend is gone: the router core decides), or one Options.Direct
// keeps for the handler chain (an ACME challenge, a redirect to HTTPS).
func (f *Front) fastBackend(head string, req *Request, remote string, secure bool) *Backend {
	if !parseRequest(head, req) {
		return nil
	}
	b := f.core.Route(req.Host, remote)
	if b != nil && !b.acct.Open() {
		// Held (asleep, waking, paused): net/http holds it, its body
		// read meanwhile (hold.go).
		return nil
	}
	direct := f.direct
	if secure {
		direct = f.directTLS
	}
	if b != nil && direct != nil {
		path, _, _ := strings.Cut(req.Target, "?")
		if !direct(req.Host, path) {
			return nil
		}
	}
	return b
}

// handOff passes the connection to net/http with what was read of it in
// front. It reports false if the Front was closed meanwhile.
func (fc *frontConn) handOff() bool {
	pending, _ := fc.br.Peek(fc.br.Buffered())
	hc := &handoffConn{Conn: fc.c, f: fc.f, tls: fc.state, write: fc.wr.d, ticket: fc.ticket}
	hc.src = handoffSource{pending: append([]byte(nil), pending...), r: &fc.cr, c: hc}
	hc.scan = newHeadScanner(&hc.src, &fc.f.lim)
	fc.release()
	fc.f.handoffs.Add(1)
	ok := fc.fb.l.push(hc)
	fc.f.untrack(fc)
	return ok
}

func (fc *frontConn) release() {
	if fc.br != nil {
		fc.br.Reset(nil)
		frontReaders.Put(fc.br)
		fc.br = nil
	}
	if fc.bw != nil {
		fc.bw.Reset(nil)
		frontWriters.Put(fc.bw)
		fc.bw = nil
	}
	fc.cr.armed.Store(false)
}

func (f *Front) untrack(fc *frontConn) {
	f.mu.Lock()
	delete(f.conns, fc)
	f.mu.Unlock()
}

// startWatch arms the hang-up watch of a request that is about to be
// forwarded.
func (fc *frontConn) startWatch() {
	fc.hangup.reset()
	fc.cr.mu.Lock()
	fc.cr.stopped = false
	fc.cr.mu.Unlock()
	fc.since.Store(fc.f.clock.Load())
	fc.cr.armed.Store(true)
}

// stopWatch ends the hang-up watch once the response is written.
func (fc *frontConn) stopWatch() {
	cr := &fc.cr
	cr.armed.Store(false)
	cr.mu.Lock()
	cr.stopped = true
	watching, done := cr.watching, cr.done
	cr.mu.Unlock()
	if watching {
		fc.c.SetReadDeadline(aLongTimeAgo)
		<-done
		fc.c.SetReadDeadline(time.Time{})
	}
}
