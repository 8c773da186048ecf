package router

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file is the front end's event loops (Linux): HTTP/1.1 client
// connections (plain ones, and TLS ones once their handshake is done) and
// the backend connections their requests go to are served by a few
// goroutines that each wait on their own epoll set and do the reads and
// writes themselves, as nginx's worker does. The goroutine-per-connection
// front end (front.go) costs a Go scheduler wake-up per read that has to
// wait, a read that finds nothing (EAGAIN) first, and the runtime's own
// poller in between: about a quarter of the router's CPU time per request,
// which is what kept it level with nginx instead of ahead.
//
// A TLS connection keeps its crypto/tls session: the loop puts what it
// reads into the session's switchConn and writes out what the session
// wrote there (front.go).
//
// A loop takes only the common exchange: a request parseRequest accepts
// for a host the router forwards, and a response checkHead accepts whose
// head and body fit maxLoopResponse. Anything else — a request the fast
// path does not take, a streamed, chunked or large response, a backend
// given by name — goes back to a goroutine: the client connection (and
// the backend connection of a response under way) become net.Conns again,
// with the bytes the loop read ahead in front, and front.go serves them
// from there on.
//
// The loop owns its descriptors: adopt duplicates an accepted connection's
// descriptor and closes the net.Conn, so that Go's poller forgets it and
// nothing else can close it under the loop.

// maxLoopResponse bounds the response (head and body) a loop buffers to
// forward whole; larger ones are streamed by a goroutine.
const maxLoopResponse = 64 << 10

// loopTick is how often a loop checks its connections' timeouts and the
// backends aborted past their stop grace.
const loopTick = 50 * time.Millisecond

const loopEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// loopPartialWrites counts responses a client's socket did not take at
// once, for tests.
var loopPartialWrites atomic.Int64

var errLoopClosed = errors.New("router: event loops closed")

// loops are a Front's event loops.
type loops struct {
	f     *Front
	ls    []*eventLoop
	next  atomic.Uint32
	conns atomic.Int64 // client connections the loops hold
	wg    sync.WaitGroup
}

// startLoops starts n event loops for f (0: one per two CPUs, see
// defaultLoops); nil if they cannot be set up, which leaves every
// connection to goroutines.
func (f *Front) startLoops(n int) *loops {
	if n <= 0 {
		n = defaultLoops()
	}
	ls := &loops{f: f}
	for range n {
		l, err := newEventLoop(ls)
		if err != nil {
			f.r.logf("router: front end: no event loop (%v): connections are served by goroutines", err)
			for _, l := range ls.ls {
				l.closeFDs()
			}
			return nil
		}
		ls.ls = append(ls.ls, l)
	}
	for _, l := range ls.ls {
		ls.wg.Go(l.run)
	}
	// The ticker wakes the loops for their timeouts; the end of
	// Shutdown wakes them to stop.
	go func() {
		t := time.NewTicker(loopTick)
		defer t.Stop()
		for {
			select {
			case <-f.stop:
				for _, l := range ls.ls {
					l.wake()
				}
				return
			case <-t.C:
				for _, l := range ls.ls {
					l.wake()
				}
			}
		}
	}()
	return ls
}

// adopt hands an accepted plain-HTTP connection to a loop. On error c is
// untouched.
func (ls *loops) adopt(c net.Conn) error {
	return ls.adoptFD(c, c.RemoteAddr().String(), nil)
}

// adoptTLS hands a TLS connection whose handshake is done to a loop: its
// switchConn turns to the loop's buffers. On error tc is untouched.
func (ls *loops) adoptTLS(tc *tls.Conn, remote string) error {
	sw, ok := tc.NetConn().(*switchConn)
	if !ok {
		return errors.New("not a switchConn")
	}
	return ls.adoptFD(sw.Conn, remote, tc)
}

// adoptFD takes c's descriptor into a loop and closes c.
func (ls *loops) adoptFD(c net.Conn, remote string, tc *tls.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return errors.New("no descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	l := ls.ls[ls.next.Add(1)%uint32(len(ls.ls))]
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return errLoopClosed
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	// Go's poller drops the descriptor it knows; the duplicate keeps the
	// socket open.
	c.Close()
	if tc != nil {
		tc.NetConn().(*switchConn).mem = true
	}
	ls.conns.Add(1)
	l.incoming = append(l.incoming, adopted{fd, remote, tc})
	l.wakeLocked()
	return nil
}

// count is how many client connections the loops hold.
func (ls *loops) count() int {
	if ls == nil {
		return 0
	}
	return int(ls.conns.Load())
}

// close makes every loop close its connections and stop, and waits.
func (ls *loops) close() {
	if ls == nil {
		return
	}
	for _, l := range ls.ls {
		l.mu.Lock()
		l.closing = true
		l.wakeLocked()
		l.mu.Unlock()
	}
	ls.wg.Wait()
}

// defaultLoops is one event loop per two CPUs (GOMAXPROCS), at least one.
// The apps hostel serves run on the same machine and need the CPUs more
// than the router: a loop keeps a CPU busy at about 80,000 requests a
// second, and on two CPUs shared with a load generator and the apps, one
// loop spent a tenth less CPU per request than two, and two loops
// doubled the p99 of make loadtest (BENCHMARKS.md).
func defaultLoops() int {
	return max(1, runtime.GOMAXPROCS(0)/2)
}

type adopted struct {
	fd     int
	remote string
	tls    *tls.Conn // nil for plain HTTP
}

// loopObj is what a loop's descriptor serves: a client or a backend
// connection.
type loopObj interface {
	event(ev uint32)
	generation() int32
}

type eventLoop struct {
	ls   *loops
	f    *Front
	epfd int
	// ep is epfd in Go's poller: the loop waits for its set there rather
	// than in a blocking epoll_wait, which would cost the runtime a
	// processor hand-off and a thread wake-up per wait.
	ep   *os.File
	epRC syscall.RawConn
	efd  int // eventfd: adoptions, ticks, closing

	mu       sync.Mutex
	incoming []adopted
	closing  bool // Front.Close: close everything now
	stopped  bool // the loop is gone: adopt no more
	woken    bool

	objs    []loopObj // by descriptor
	gen     int32
	clients map[*loopClient]struct{}
	idle    map[*upstream][]*loopBackend
	now     int64 // UnixNano, as of the last wake-up
	lastTik int64

	out     []byte        // a response or request being written
	bw      *bufio.Writer // writes into out
	scratch []byte        // what TLS connections read
}

func newEventLoop(ls *loops) (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd), Pad: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(efd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(efd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	ep := os.NewFile(uintptr(epfd), "epoll")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		unix.Close(efd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	l := &eventLoop{
		ls: ls, f: ls.f, epfd: epfd, ep: ep, epRC: rc, efd: efd,
		clients: map[*loopClient]struct{}{},
		idle:    map[*upstream][]*loopBackend{},
	}
	l.bw = bufio.NewWriterSize((*outWriter)(l), 4096)
	return l, nil
}

// outWriter appends to the loop's out buffer.
type outWriter eventLoop

func (w *outWriter) Write(p []byte) (int, error) {
	w.out = append(w.out, p...)
	return len(p), nil
}

// writer returns the loop's buffered writer, emptied, for a new message.
func (l *eventLoop) writer() *bufio.Writer {
	l.out = l.out[:0]
	l.bw.Reset((*outWriter)(l))
	return l.bw
}

func (l *eventLoop) wake() {
	l.mu.Lock()
	l.wakeLocked()
	l.mu.Unlock()
}

func (l *eventLoop) wakeLocked() {
	if l.woken || l.stopped {
		return
	}
	l.woken = true
	one := uint64(1)
	unix.Write(l.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
}

func (l *eventLoop) closeFDs() {
	l.ep.Close()
	unix.Close(l.efd)
}

func (l *eventLoop) run() {
	defer func() {
		if e := recover(); e != nil {
			l.f.r.logf("router: front end: event loop panic: %v", e)
		}
		l.shut()
	}()
	events := make([]unix.EpollEvent, 128)
	l.now = time.Now().UnixNano()
	l.lastTik = l.now
	for {
		var n int
		err := l.epRC.Read(func(fd uintptr) bool {
			n = rawEpollWait(int(fd), events)
			return n > 0
		})
		if err != nil {
			l.f.r.logf("router: front end: event loop: %v", err)
			return
		}
		l.now = time.Now().UnixNano()
		for i := 0; i < n; i++ {
			ev := &events[i]
			if ev.Pad == -1 {
				if !l.woke() {
					return
				}
				continue
			}
			fd := int(ev.Fd)
			if fd < len(l.objs) {
				if o := l.objs[fd]; o != nil && o.generation() == ev.Pad {
					o.event(ev.Events)
				}
			}
		}
		if l.now-l.lastTik >= int64(loopTick) {
			l.lastTik = l.now
			l.tick()
		}
	}
}

// woke handles the eventfd: adoptions, Close, and the end of Shutdown. It
// returns false when the loop is to stop.
func (l *eventLoop) woke() bool {
	var buf [8]byte
	unix.Read(l.efd, buf[:])
	l.mu.Lock()
	l.woken = false
	in := l.incoming
	l.incoming = nil
	closing := l.closing
	l.mu.Unlock()
	for _, a := range in {
		l.register(a)
	}
	select {
	case <-l.f.stop:
		closing = true
	default:
	}
	return !closing
}

// shut closes everything the loop holds and stops it taking more.
func (l *eventLoop) shut() {
	l.mu.Lock()
	l.stopped = true
	in := l.incoming
	l.incoming = nil
	l.mu.Unlock()
	for _, a := range in {
		unix.Close(a.fd)
		l.ls.conns.Add(-1)
	}
	for c := range l.clients {
		c.close()
	}
	for u, bcs := range l.idle {
		for _, bc := range bcs {
			bc.close()
		}
		delete(l.idle, u)
	}
	l.closeFDs()
}

func (l *eventLoop) add(fd int, o loopObj) error {
	for fd >= len(l.objs) {
		l.objs = append(l.objs, make([]loopObj, len(l.objs)+64)...)
	}
	ev := unix.EpollEvent{Events: loopEvents, Fd: int32(fd), Pad: o.generation()}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return err
	}
	l.objs[fd] = o
	return nil
}

func (l *eventLoop) nextGen() int32 {
	l.gen = (l.gen + 1) & 0x3fffffff // never -1, the eventfd's
	return l.gen
}

func (l *eventLoop) register(a adopted) {
	c := &loopClient{l: l, fd: a.fd, gen: l.nextGen(), remote: a.remote, state: lcNew, since: l.now}
	c.req.shutting = &l.f.shutting
	if a.tls != nil {
		c.tls, c.sw = a.tls, a.tls.NetConn().(*switchConn)
	}
	if err := l.add(a.fd, c); err != nil {
		unix.Close(a.fd)
		l.ls.conns.Add(-1)
		return
	}
	l.clients[c] = struct{}{}
	// A request that arrived before the ADD is reported by it; but TLS
	// may hold one it read with the handshake.
	if c.tls != nil {
		c.advance()
	}
}

// tick enforces the header and idle timeouts, shutdown, and the abort of
// draining backends.
func (l *eventLoop) tick() {
	f := l.f
	shutting := f.shutting.Load()
	for c := range l.clients {
		age := time.Duration(l.now - c.since)
		if f.expired(c.state, age, shutting) {
			c.close()
			continue
		}
		if c.state == lcActive {
			switch {
			case c.b.aborted.Load():
				if c.bc != nil {
					c.bc.close()
					c.bc = nil
				}
				c.fail(errAborted)
			case c.eof && age > watchDelay:
				c.close() // the client is gone
			}
		}
	}
	for u, bcs := range l.idle {
		u.mu.Lock()
		retired := u.retired
		u.mu.Unlock()
		if !retired && !shutting {
			continue
		}
		for _, bc := range bcs {
			bc.close()
		}
		delete(l.idle, u)
	}
}

// Client connections.

// The states of a loop's client connection: front.go's phases, and one
// of its own.
const (
	lcNew     = phaseNew        // adopted, no byte read yet
	lcIdle    = phaseIdle       // between requests
	lcHeader  = phaseHeader     // reading a request's head
	lcActive  = phaseActive     // the request is with the backend
	lcWriting = phaseClosed + 1 // the response is being written
)

var loopBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func putLoopBuffer(b []byte) {
	b = b[:0]
	loopBuffers.Put(&b)
}

type loopClient struct {
	l         *eventLoop
	tls       *tls.Conn // over sw; nil for plain HTTP
	sw        *switchConn
	fd        int
	gen       int32
	remote    string
	state     int32
	since     int64
	readable  bool   // edge-triggered: bytes may be waiting
	in        []byte // read, not yet used; nil when empty and idle
	out       []byte // response bytes not yet written
	req       Request
	b         *backend // of the request in flight
	u         *upstream
	bc        *loopBackend
	reused    bool // bc came from the pool
	keep      bool // the connection carries on after the response
	eof       bool // the client sent its end of input
	hup       bool // epoll reported the end (or an error): read until it shows
	advancing bool // advance is on the stack: finish need not call it
	closed    bool
}

func (c *loopClient) generation() int32 { return c.gen }

func (c *loopClient) event(ev uint32) {
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && c.state == lcWriting {
		c.flush()
		if c.closed {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.readable = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		// The end may come with the last bytes, in one edge: a short
		// read of them must not hide it.
		c.hup = true
	}
	c.advance()
}

// advance reads and starts requests while the connection has any.
func (c *loopClient) advance() {
	c.advancing = true
	defer func() { c.advancing = false }()
	for !c.closed {
		switch c.state {
		case lcActive:
			if c.readable || c.hup {
				c.watch()
			}
			return
		case lcWriting:
			return
		}
		if c.in == nil {
			c.in = (*loopBuffers.Get().(*[]byte))[:0]
		}
		if n := headerEnd(c.in); n >= 0 {
			c.dispatch(n)
			continue
		}
		if len(c.in) == cap(c.in) {
			c.giveBack(nil) // a large head: net/http's
			return
		}
		if c.eof {
			c.close() // nothing more comes
			return
		}
		n, err := c.read(c.in[len(c.in):cap(c.in)])
		if err == unix.EAGAIN {
			c.releaseIn()
			return
		}
		if err != nil || n == 0 {
			c.close()
			return
		}
		c.in = c.in[:len(c.in)+n]
		switch c.state {
		case lcIdle:
			c.state, c.since = lcHeader, c.l.now
		case lcNew:
			c.state = lcHeader // timed from the accept, as front.go does
		}
	}
}

// releaseIn returns an empty read buffer to the pool: idle connections
// hold none.
func (c *loopClient) releaseIn() {
	if c.in != nil && len(c.in) == 0 {
		putLoopBuffer(c.in)
		c.in = nil
	}
}

// watch reads what a client sends while its request is with the backend:
// a pipelined request is kept. An error means the client is gone, which
// ends the backend request too; so does an end of input (the client may
// only have shut its sending side down, as `nc` does) once the request
// has run for watchDelay, as on the goroutine path — tick sees to it.
func (c *loopClient) watch() {
	if c.in == nil {
		c.in = (*loopBuffers.Get().(*[]byte))[:0]
	}
	for len(c.in) < cap(c.in) && !c.eof {
		n, err := c.read(c.in[len(c.in):cap(c.in)])
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			c.close()
			return
		}
		if n == 0 {
			c.eof, c.readable = true, false
			if time.Duration(c.l.now-c.since) > watchDelay {
				c.close()
			}
			return
		}
		c.in = c.in[:len(c.in)+n]
	}
}

// read reads what the client sent: n > 0 bytes, or (0, EAGAIN) for
// nothing now, (0, nil) for its end, (0, err) for a failure.
func (c *loopClient) read(p []byte) (int, error) {
	if c.tls != nil {
		return c.readTLS(p)
	}
	if !c.readable && !c.hup {
		return 0, unix.EAGAIN
	}
	n, err := rawRead(c.fd, p)
	if err == unix.EAGAIN || err == nil && n < len(p) {
		c.readable = false // drained: the next bytes bring an edge
	}
	return n, err
}

// readTLS is read for TLS: what the socket has goes to the switchConn,
// and TLS makes plaintext of it; TLS may also hold plaintext or records
// it read before.
func (c *loopClient) readTLS(p []byte) (int, error) {
	l := c.l
	for {
		n, err := c.tls.Read(p)
		if len(c.sw.out) > 0 {
			// An alert or a key update TLS answered with.
			if w, werr := rawWrite(c.fd, c.sw.out); werr != nil || w < len(c.sw.out) {
				return 0, errors.New("router: TLS write would block")
			}
			c.sw.out = c.sw.out[:0]
		}
		if n > 0 {
			return n, nil
		}
		if err != errWouldBlock {
			if err == io.EOF {
				return 0, nil
			}
			return 0, err
		}
		if !c.readable && !c.hup {
			return 0, unix.EAGAIN
		}
		if l.scratch == nil {
			l.scratch = make([]byte, 32<<10)
		}
		m, rerr := rawRead(c.fd, l.scratch)
		switch {
		case rerr == unix.EAGAIN:
			c.readable = false
			return 0, unix.EAGAIN
		case rerr != nil:
			return 0, rerr
		case m == 0:
			c.sw.eof = true
			c.readable = false
		default:
			if m < len(l.scratch) {
				c.readable = false
			}
			c.sw.in = append(c.sw.in, l.scratch[:m]...)
		}
	}
}

// dispatch starts the request whose head is the first n bytes of c.in.
func (c *loopClient) dispatch(n int) {
	l := c.l
	var b *backend
	if parseRequest(string(c.in[:n]), &c.req) {
		b = l.f.r.route(c.req.Host)
		direct := l.f.direct
		if c.tls != nil {
			direct = l.f.directTLS
		}
		if b != nil && direct != nil {
			path, _, _ := strings.Cut(c.req.Target, "?")
			if !direct(c.req.Host, path) {
				b = nil
			}
		}
	}
	if b == nil {
		c.giveBack(nil)
		return
	}
	c.in = c.in[:copy(c.in, c.in[n:])]
	c.req.RemoteAddr, c.req.TLS = c.remote, c.tls != nil
	b.inflight.Add(1)
	c.b, c.u = b, b.up.Load()
	c.state, c.since = lcActive, l.now
	c.send()
}

// send writes the request to a backend connection: a pooled one or a new
// one.
func (c *loopClient) send() {
	l := c.l
	idempotent := replayable(c.req.Method, c.req.Header)
	for !c.closed {
		if c.b.aborted.Load() {
			c.fail(errAborted)
			return
		}
		bc, reused, err := l.backendFor(c.u, !idempotent)
		if err == errNotLoopable {
			// Named backend: a goroutine dials it.
			c.giveBack(func(w *bufio.Writer, h *hangup) bool {
				b := c.b
				defer b.done()
				return c.u.forwardFast(&c.req, w, h)
			})
			return
		}
		if err != nil {
			c.fail(err)
			return
		}
		w := l.writer()
		writeRequestTo(w, &c.req)
		c.bc, c.reused, bc.client = bc, reused, c
		bc.in, bc.checked = bc.in[:0], false
		if bc.connecting {
			bc.out = append(bc.out[:0], l.out...)
			return
		}
		if err := bc.write(l.out); err != nil {
			c.bc, bc.client = nil, nil
			bc.close()
			if reused {
				continue // nothing was sent: the backend had closed it
			}
			c.fail(err)
		}
		return
	}
}

// respond writes the complete response bc holds to the client.
func (c *loopClient) respond(bc *loopBackend) {
	l := c.l
	h := bc.head
	noBody := c.req.Method == http.MethodHead || h.code == http.StatusNoContent || h.code == http.StatusNotModified
	c.req.closing()
	w := l.writer()
	writeHead(w, bc.in[:h.n], h, noBody, c.req.Close)
	w.Write(bc.in[h.n:bc.total])
	w.Flush()
	extra := len(bc.in) > bc.total
	bc.check = noBody
	c.bc, bc.client = nil, nil
	if extra || h.close || c.b.aborted.Load() {
		bc.close()
	} else {
		l.putIdle(bc)
	}
	c.keep = !c.req.Close
	c.answered()
	c.write(l.out)
}

// answered ends the request's count in flight once its answer is ready to
// go out: as on the goroutine path, a client that has its answer finds
// the count dropped.
func (c *loopClient) answered() {
	c.b.done()
	c.b, c.u = nil, nil
}

// fail answers a request that got no response from the backend, as
// failFast does.
func (c *loopClient) fail(err error) {
	w := c.l.writer()
	c.keep = c.u.failFast(w, &c.req, err)
	w.Flush()
	c.answered()
	c.write(c.l.out)
}

// write writes a response to the client and finishes the request, or
// keeps what is left for the client's next writable edge.
func (c *loopClient) write(p []byte) {
	if c.tls != nil {
		if _, err := c.tls.Write(p); err != nil {
			c.close()
			return
		}
		// p is written or copied below, before TLS writes again.
		p, c.sw.out = c.sw.out, c.sw.out[:0]
	}
	n, err := rawWrite(c.fd, p)
	if err != nil && err != unix.EAGAIN {
		c.close()
		return
	}
	if n < len(p) {
		c.out = append(c.out[:0], p[n:]...)
		c.state = lcWriting
		loopPartialWrites.Add(1)
		return
	}
	c.finish()
}

func (c *loopClient) flush() {
	n, err := rawWrite(c.fd, c.out)
	if err != nil && err != unix.EAGAIN {
		c.close()
		return
	}
	c.out = c.out[:copy(c.out, c.out[n:])]
	if len(c.out) == 0 {
		c.out = nil
		c.finish()
	}
}

// finish ends the request in flight once its response is written.
func (c *loopClient) finish() {
	if !c.keep || c.l.f.shutting.Load() {
		c.close()
		return
	}
	c.state, c.since = lcIdle, c.l.now
	if !c.advancing {
		c.advance() // a pipelined request, or one that is on its way
	}
}

func (c *loopClient) close() {
	if c.closed {
		return
	}
	c.closed = true
	if c.bc != nil {
		c.bc.close()
		c.bc = nil
	}
	if c.b != nil {
		c.b.done()
		c.b = nil
	}
	c.l.forget(c.fd)
	unix.Close(c.fd)
	delete(c.l.clients, c)
	c.l.ls.conns.Add(-1)
	if c.in != nil {
		putLoopBuffer(c.in)
		c.in = nil
	}
}

// giveBack hands the connection to a goroutine (front.go) with what was
// read ahead; first, if set, finishes the request in flight there. It
// reports false if the connection was closed instead (the Front is
// closed, or the descriptor could not be handed over).
func (c *loopClient) giveBack(first func(w *bufio.Writer, h *hangup) bool) bool {
	l := c.l
	conn, err := l.release(c.fd)
	c.closed = true
	delete(l.clients, c)
	// Counted until front.go tracks it, for Shutdown's count.
	defer l.ls.conns.Add(-1)
	var pending []byte
	if len(c.in) > 0 {
		pending = append([]byte(nil), c.in...)
	}
	if c.in != nil {
		putLoopBuffer(c.in)
		c.in = nil
	}
	if err != nil {
		l.f.r.logf("router: front end: handing %s over: %v", c.remote, err)
		if c.b != nil {
			c.b.done()
		}
		return false
	}
	if first != nil && pending == nil {
		pending = []byte{} // a request is in flight: not refused at shutdown
	}
	var fc *frontConn
	if c.tls != nil {
		// TLS carries on over the switchConn, now over conn, with the
		// ciphertext it holds read first.
		c.sw.Conn, c.sw.mem, c.sw.out = conn, false, nil
		fc = l.f.track(c.sw, c.tls, pending)
		if fc != nil {
			st := c.tls.ConnectionState()
			fc.state, fc.fromLoop = &st, true
		}
	} else {
		fc = l.f.newConn(conn, false, pending)
	}
	if fc == nil {
		if c.b != nil {
			c.b.done()
		}
		return false
	}
	fc.remote = c.remote
	go fc.run(first)
	return true
}

// forget drops fd from the loop's table and epoll set before it is closed
// or handed over.
func (l *eventLoop) forget(fd int) {
	if fd < len(l.objs) {
		l.objs[fd] = nil
	}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

// release turns a descriptor of the loop into a net.Conn served by Go's
// poller.
func (l *eventLoop) release(fd int) (net.Conn, error) {
	l.forget(fd)
	f := os.NewFile(uintptr(fd), "")
	conn, err := net.FileConn(f) // a duplicate
	f.Close()
	return conn, err
}

// Backend connections.

var errNotLoopable = errors.New("backend address is not an IP address")

type loopBackend struct {
	l          *eventLoop
	fd         int
	gen        int32
	u          *upstream
	client     *loopClient // the request it carries; nil when idle
	connecting bool
	readable   bool
	in         []byte
	out        []byte // request bytes not yet written
	checked    bool   // head checked: head and total are set
	head       quickHead
	total      int   // head and body
	check      bool  // as pconn.check
	hup        bool  // epoll reported the backend's end
	idleAt     int64 // UnixNano
	closed     bool
}

func (bc *loopBackend) generation() int32 { return bc.gen }

// backendFor returns an idle connection to u (reused) or dials one.
func (l *eventLoop) backendFor(u *upstream, live bool) (bc *loopBackend, reused bool, err error) {
	list := l.idle[u]
	for len(list) > 0 {
		bc = list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		if bc.closed {
			continue
		}
		if time.Duration(l.now-bc.idleAt) > idleTimeout || (live || bc.check) && !bc.alive() {
			bc.close()
			continue
		}
		l.idle[u] = list
		return bc, true, nil
	}
	l.idle[u] = list
	bc, err = l.dial(u)
	return bc, false, err
}

func (l *eventLoop) putIdle(bc *loopBackend) {
	list := l.idle[bc.u]
	if len(list) >= maxIdlePerUpstream {
		live := list[:0]
		for _, o := range list {
			if !o.closed {
				live = append(live, o)
			}
		}
		clear(list[len(live):])
		list = live
	}
	if len(list) >= maxIdlePerUpstream || bc.hup || l.f.shutting.Load() {
		bc.close()
		return
	}
	bc.idleAt, bc.readable = l.now, false
	if cap(bc.in) > 16<<10 {
		bc.in = make([]byte, 0, 4096) // a large response's buffer is not kept
	}
	l.idle[bc.u] = append(list, bc)
}

// dial opens a non-blocking connection to u.
func (l *eventLoop) dial(u *upstream) (*loopBackend, error) {
	ap, err := netip.ParseAddrPort(u.addr)
	if err != nil {
		return nil, errNotLoopable
	}
	opErr := func(call string, err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: os.NewSyscallError(call, err)}
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, opErr("socket", err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	bc := &loopBackend{l: l, fd: fd, gen: l.nextGen(), u: u}
	switch err := unix.Connect(fd, sa); err {
	case nil:
	case unix.EINPROGRESS:
		bc.connecting = true
	default:
		unix.Close(fd)
		return nil, opErr("connect", err)
	}
	if err := l.add(fd, bc); err != nil {
		unix.Close(fd)
		return nil, opErr("epoll_ctl", err)
	}
	if bc.in == nil {
		bc.in = make([]byte, 0, 4096)
	}
	return bc, nil
}

// alive is pconn.alive for a loop connection.
func (bc *loopBackend) alive() bool {
	var buf [1]byte
	_, _, err := unix.Recvfrom(bc.fd, buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return err == unix.EAGAIN
}

func (bc *loopBackend) event(ev uint32) {
	if bc.connecting {
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		bc.connecting = false
		if e, err := unix.GetsockoptInt(bc.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
			if err == nil {
				err = syscall.Errno(e)
			}
			bc.broken(&net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(bc.u.addr), Err: os.NewSyscallError("connect", err)})
			return
		}
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && len(bc.out) > 0 {
		if err := bc.write(bc.out); err != nil {
			bc.broken(err)
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		bc.readable = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		bc.hup = true // closed by the backend: not to be used again
	}
	if bc.client == nil {
		if bc.readable {
			bc.close() // closed by the backend, or an answer nobody asked for
		}
		return
	}
	if bc.readable || bc.hup {
		bc.read()
	}
}

func tcpAddr(addr string) net.Addr {
	ap, _ := netip.ParseAddrPort(addr)
	return net.TCPAddrFromAddrPort(ap)
}

// write writes p, keeping what the socket does not take for its next
// writable edge.
func (bc *loopBackend) write(p []byte) error {
	n, err := rawWrite(bc.fd, p)
	if err != nil && err != unix.EAGAIN {
		return &net.OpError{Op: "write", Net: "tcp", Addr: tcpAddr(bc.u.addr), Err: os.NewSyscallError("write", err)}
	}
	// p may be bc.out itself: append moves the rest down.
	bc.out = append(bc.out[:0], p[n:]...)
	return nil
}

// broken ends the request bc carries after a connection failure, retrying
// it on another connection when that is safe.
func (bc *loopBackend) broken(err error) {
	c := bc.client
	bc.close()
	if c == nil {
		return
	}
	c.bc = nil
	c.fail(err)
}

// read reads the response to the request bc carries and, once it is
// complete, has the client write it.
func (bc *loopBackend) read() {
	c := bc.client
	for {
		if !bc.checked {
			if n := headerEnd(bc.in); n >= 0 {
				h, ok := checkHead(bc.in[:n], c.req.Method)
				noBody := c.req.Method == http.MethodHead || h.code == http.StatusNoContent || h.code == http.StatusNotModified
				total := n
				if ok && !noBody {
					total += int(h.length)
				}
				if !ok || h.length > maxLoopResponse || total > maxLoopResponse {
					bc.giveBack()
					return
				}
				bc.checked, bc.head, bc.total = true, h, total
			} else if len(bc.in) >= maxLoopResponse {
				bc.giveBack()
				return
			}
		}
		if bc.checked && len(bc.in) >= bc.total {
			c.respond(bc)
			return
		}
		if !bc.readable && !bc.hup {
			return
		}
		if len(bc.in) == cap(bc.in) {
			want := 2 * cap(bc.in)
			if bc.checked {
				want = max(want, bc.total)
			}
			bc.in = append(make([]byte, 0, min(want, maxLoopResponse)), bc.in...)
		}
		n, err := rawRead(bc.fd, bc.in[len(bc.in):cap(bc.in)])
		if err == unix.EAGAIN {
			bc.readable = false
			return
		}
		if err != nil || n == 0 {
			if err == nil {
				err = io.EOF
			}
			c.bc, bc.client = nil, nil
			fresh := len(bc.in) == 0
			bc.close()
			if fresh && c.reused && replayable(c.req.Method, c.req.Header) {
				c.send() // the backend had closed the idle connection
				return
			}
			if !fresh {
				err = io.ErrUnexpectedEOF
			}
			c.fail(fmt.Errorf("reading response: %w", err))
			return
		}
		if n < cap(bc.in)-len(bc.in) {
			bc.readable = false
		}
		bc.in = bc.in[:len(bc.in)+n]
	}
}

// giveBack hands the client connection and bc, with the response begun,
// to a goroutine, which streams the response.
func (bc *loopBackend) giveBack() {
	l, c, u := bc.l, bc.client, bc.u
	c.bc, bc.client = nil, nil
	bc.closed = true
	conn, err := l.release(bc.fd)
	if err != nil {
		c.fail(err)
		return
	}
	pending := append([]byte(nil), bc.in...)
	pc := &pconn{conn: conn, br: bufio.NewReaderSize(&prefixReader{pending: pending, r: conn}, 4096), bw: bufio.NewWriterSize(conn, 4096), up: u}
	tracked := u.b.track(pc)
	if !tracked {
		conn.Close()
	}
	req := &c.req
	handed := c.giveBack(func(w *bufio.Writer, h *hangup) bool {
		b := u.b
		defer b.done()
		if !tracked {
			return u.failFast(w, req, errAborted)
		}
		if !h.use(pc.conn) {
			pc.close()
			return false
		}
		return u.respondTo(pc, req, w, h)
	})
	if !handed && tracked {
		pc.close()
	}
}

func (bc *loopBackend) close() {
	if bc.closed {
		return
	}
	bc.closed = true
	bc.l.forget(bc.fd)
	unix.Close(bc.fd)
}

// prefixReader reads pending, then r.
type prefixReader struct {
	pending []byte
	r       io.Reader
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.pending) > 0 {
		n := copy(b, p.pending)
		p.pending = p.pending[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// rawEpollWait is epoll_wait(2) without waiting: the number of events
// ready, 0 if none (or on an error, which the next wait reports again).
func rawEpollWait(epfd int, events []unix.EpollEvent) int {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0
	}
	return int(n)
}

// rawRead and rawWrite are read(2) and write(2) on a non-blocking socket,
// which cannot block: no scheduler hand-off around them.
func rawRead(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

func rawWrite(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}
