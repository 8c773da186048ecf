package front

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// This file is an event loop's client connections (loop_linux.go).

// The states of a loop's client connection: front.go's phases, and one
// of its own.
const (
	lcNew     = phaseNew     // adopted, no byte read yet
	lcIdle    = phaseIdle    // between requests
	lcHeader  = phaseHeader  // reading a request's head
	lcActive  = phaseActive  // the request is with the backend
	lcWriting = phaseWriting // the response is being written
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
	slot      slot // of the request in flight (slot.go)
	u         *upstream
	bc        *loopBackend
	reused    bool // bc came from the pool
	keep      bool // the connection carries on after the response
	eof       bool // the client sent its end of input
	hup       bool // epoll reported the end (or an error): read until it shows
	advancing bool // advance is on the stack: finish need not call it
	closed    bool
	ticket    *connTicket // the connection's among MaxConnections
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
	b := l.f.fastBackend(string(c.in[:n]), &c.req, c.remote, c.tls != nil)
	if b == nil {
		c.giveBack(nil)
		return
	}
	c.in = c.in[:copy(c.in, c.in[n:])]
	c.req.RemoteAddr, c.req.TLS = c.remote, c.tls != nil
	s, ok := b.acquire()
	if !ok {
		// Its gate closed since it was routed: a goroutine holds it.
		c.giveBack(func(w *bufio.Writer, h *hangup) bool { return b.serveFast(&c.req, w, h, true) })
		return
	}
	c.slot, c.u = s, b.up.Load()
	c.req.startOutcome(false)
	c.slot.out = &c.req.out
	c.state, c.since = lcActive, l.now
	c.send()
}

// send writes the request to a backend connection: a pooled one or a new
// one. The head is made first, so that a pooled connection's check
// (backendFor) comes right before the write.
func (c *loopClient) send() {
	l := c.l
	idempotent := replayable(c.req.Method, c.req.Header)
	writeRequestTo(l.writer(), &c.req)
	for !c.closed {
		if c.slot.b.aborted.Load() {
			c.fail(errAborted)
			return
		}
		bc, reused, err := l.backendFor(c.u, !idempotent)
		if err == errNotLoopable || err != nil && c.u.retryRefused(err, time.Unix(0, l.now)) {
			// A named backend, or an app just started that does not
			// accept yet: a goroutine dials it.
			c.dialElsewhere()
			return
		}
		if err != nil {
			c.fail(err)
			return
		}
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

// dialElsewhere hands the request, not sent yet, to a goroutine, whose
// dial may wait (upstream.dial): a loop never does.
func (c *loopClient) dialElsewhere() {
	u := c.u
	c.giveBack(func(w *bufio.Writer, h *hangup) bool { return u.forwardFast(&c.req, w, h) })
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
	c.req.out.Status, c.req.out.Bytes = h.code, int64(bc.total-h.n)
	w.Flush()
	extra := len(bc.in) > bc.total
	// Checked before reuse: a response without a body by rule (HEAD,
	// 204, 304), after which a broken app may send one anyway; and one
	// whose last read filled the buffer (readable is still set): what
	// the app wrote after it may be in the socket already, where no new
	// edge will announce it.
	bc.check = noBody || bc.readable
	c.bc, bc.client = nil, nil
	if extra || h.close || c.slot.b.aborted.Load() {
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
	c.slot.release()
	c.u = nil
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
		// Timed from now on, and from each write that makes progress
		// (Options.WriteTimeout): the request's state has ended.
		c.state, c.since = lcWriting, c.l.now
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
	if n > 0 {
		c.since = c.l.now
	}
	if len(c.out) == 0 {
		c.out = nil
		c.finish()
	}
}

// finish ends the request in flight once its response is written.
func (c *loopClient) finish() {
	if !c.keep {
		c.close()
		return
	}
	c.state, c.since = lcIdle, c.l.now
	if c.l.f.shutting.Load() {
		// A response that kept the connection: passed on, with what
		// came of a next request, if there is a Passer (pass.go).
		if !c.passIdle() {
			c.close()
		}
		return
	}
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
	c.slot.release()
	c.l.forget(c.fd)
	unix.Close(c.fd)
	c.ticket.release()
	delete(c.l.clients, c)
	c.l.ls.conns.Add(-1)
	if c.in != nil {
		putLoopBuffer(c.in)
		c.in = nil
	}
}

// passIdle passes an idle plain connection on, at a shutdown with a
// Passer (pass.go), and closes it; it reports whether it did. The loop
// alone reads the socket: what it has not read goes with it.
func (c *loopClient) passIdle() bool {
	p := c.l.f.passTo()
	if p == nil || c.tls != nil || c.state != lcIdle && c.state != lcNew || c.eof || c.hup {
		return false
	}
	if err := p(c.fd, c.in); err != nil {
		c.l.f.logf("router: front end: passing %s on: %v", c.remote, err)
	}
	c.close()
	return true
}

// giveBack hands the connection to a goroutine (front.go) with what was
// read ahead; first, if set, finishes the request in flight there, whose
// slot goes with the connection. It reports false if the connection was
// closed instead (the Front is closed, or the descriptor could not be
// handed over).
func (c *loopClient) giveBack(first func(w *bufio.Writer, h *hangup) bool) bool {
	l := c.l
	s := c.slot.take()
	defer s.release() // unless the goroutine took it
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
		l.f.logf("router: front end: handing %s over: %v", c.remote, err)
		c.ticket.release()
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
		fc = l.f.track(c.sw, c.tls, pending, c.ticket)
		if fc != nil {
			st := c.tls.ConnectionState()
			fc.state, fc.fromLoop = &st, true
		}
	} else {
		fc = l.f.newConn(conn, false, pending, c.ticket)
	}
	if fc == nil {
		return false
	}
	fc.remote, fc.slot = c.remote, s.take()
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
