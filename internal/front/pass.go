package front

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// This file passes the idle client connections of a Front that shuts down
// on to the process that serves after it (hostel upgrade), instead of
// closing them. A keep-alive connection closed between requests races the
// client's next request: sent just as the close is, it fails — and a
// client retries only what it may send twice, not a POST with its body.
// A connection passed on is never closed: the next process reads the
// request from the socket, whenever it comes.
//
// Only plain HTTP is passed: a TLS session's state lives in this process.
// A connection is passed only where nothing of a next request was taken
// from its socket, or with what was (pending): each path that serves
// connections decides it where it alone reads them — an event loop on its
// own thread, a goroutine once its read is cut by a deadline, net/http's
// connections once net/http lets go of them.

// A Passer takes a plain-HTTP client connection that a shutting-down
// Front would close between requests, with the bytes read ahead of its
// next request (pending, often none), and passes it on: it sends or
// duplicates fd, which stays the Front's to close after. An error leaves
// the connection closed, as without a Passer. It may be called from
// several goroutines at once.
type Passer func(fd int, pending []byte) error

// PassIdle makes Shutdown pass the idle plain-HTTP connections to p rather
// than close them. Call it before Shutdown.
func (f *Front) PassIdle(p Passer) { f.passer.Store(&p) }

func (f *Front) passTo() Passer {
	if p := f.passer.Load(); p != nil && f.shutting.Load() {
		return *p
	}
	return nil
}

// rawConn returns c's descriptor, to be used in its Control.
func rawConn(c net.Conn) (syscall.RawConn, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, errors.New("no descriptor")
	}
	return sc.SyscallConn()
}

// passFD calls p with c's descriptor.
func passFD(p Passer, c net.Conn, pending []byte) error {
	rc, err := rawConn(c)
	if err != nil {
		return err
	}
	var perr error
	if err := rc.Control(func(fd uintptr) { perr = p(int(fd), pending) }); err != nil {
		return err
	}
	return perr
}

// Adopt serves c, a plain-HTTP client connection that the Front of the
// process before this one passed on (its Passer), with pending, the bytes
// it had read of it, first. It waits for Serve to start (up to
// adoptWait), which times connections and starts the event loops. It
// reports false, with c closed, if MaxConnections are open or the Front
// shuts down or never served.
func (f *Front) Adopt(c net.Conn, pending []byte) bool {
	select {
	case <-f.serving:
	case <-time.After(adoptWait):
		c.Close()
		return false
	}
	t := f.admit()
	if t == nil {
		c.Close()
		return false
	}
	f.mu.Lock()
	ls := f.loops
	f.mu.Unlock()
	if len(pending) == 0 && ls != nil && !f.shutting.Load() && ls.adopt(c, t) == nil {
		return true
	}
	fc := f.newConn(c, false, pending, t)
	if fc == nil {
		return false
	}
	go fc.serve()
	return true
}

// adoptWait bounds Adopt's wait for Serve: the daemon serves before it
// says it is ready, which is when connections are passed to it.
const adoptWait = 5 * time.Second

// passIdle, at a shutdown with a Passer, cuts the read of an idle
// plain connection a goroutine serves (phase ph): that goroutine passes
// it on (run), with whatever it read meanwhile. It reports whether it did.
func (f *Front) passIdle(fc *frontConn, ph int32) bool {
	if fc.tls != nil || ph != phaseIdle && (ph != phaseNew || fc.given) || f.passTo() == nil {
		return false
	}
	if !fc.phase.CompareAndSwap(ph, phasePassing) {
		return false
	}
	fc.c.SetReadDeadline(aLongTimeAgo)
	return true
}

// passOn passes the connection on with what was read of it; run closes it
// after.
func (fc *frontConn) passOn() {
	p := fc.f.passTo()
	if p == nil {
		return
	}
	var pending []byte
	if fc.br != nil {
		b, _ := fc.br.Peek(fc.br.Buffered())
		pending = append(pending, b...)
	}
	// In the order connReader.Read gives them.
	pending = append(pending, fc.cr.pending...)
	if fc.cr.hasByte {
		pending = append(pending, fc.cr.b[0])
	}
	if err := passFD(p, fc.c, pending); err != nil {
		fc.f.logf("router: front end: passing %s on: %v", fc.remote, err)
	}
}

// handoffPass is what a connection handed to net/http needs to be passed
// on when net/http closes it idle at a shutdown: from its own goroutine
// (its response went out before keep-alives were turned off) or from
// Shutdown's while its own waits in a read for the next request. That
// read must end before the connection is passed on, or this process could
// take bytes meant for the next: the Close cuts it (a deadline) and
// returns, and the connection is passed on when net/http closes it for the
// read's error — unless net/http took bytes of a request first, which it
// then serves as usual, its response closing the connection.
type handoffPass struct {
	mu      sync.Mutex
	idle    bool // net/http's state is StateIdle
	took    bool // net/http read bytes since
	reading bool // a read of net/http's is under way
	readErr bool // a read failed since: net/http closes the connection itself
	cut     bool // a Close cut the read; the next Close is the last
	closed  bool // passed on or closed: nothing is read any more
}

// connState is the fallback servers' ConnState hook.
func connState(c net.Conn, st http.ConnState) {
	hc, ok := c.(*handoffConn)
	if !ok {
		return
	}
	p := &hc.pass
	p.mu.Lock()
	switch st {
	case http.StateIdle:
		// A read net/http cut at the end of the request (its background
		// read) failed before: not the next request's.
		p.idle, p.took, p.readErr = true, false, false
	case http.StateActive:
		p.idle = false
	}
	p.mu.Unlock()
}

// read is the connection's Read, for net/http: it reads nothing once the
// connection was passed on.
func (c *handoffConn) read(b []byte) (int, error) {
	p := &c.pass
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return 0, net.ErrClosed
	}
	p.reading = true
	p.mu.Unlock()
	n, err := c.scan.Read(b)
	p.mu.Lock()
	p.reading = false
	if n > 0 {
		p.took = true
	} else if err != nil {
		p.readErr = true
	}
	p.mu.Unlock()
	return n, err
}

// readSocket reads the connection's socket, for its scanner.
func (c *handoffConn) readSocket(r io.Reader, b []byte) (int, error) {
	n, err := r.Read(b)
	if n > 0 {
		p := &c.pass
		p.mu.Lock()
		if p.cut {
			c.Conn.SetReadDeadline(time.Time{}) // a request came: net/http times it
		}
		p.mu.Unlock()
	}
	return n, err
}

// closePassing is Close at a shutdown with a Passer: it passes the
// connection on if it is idle and no read is under way, or cuts the read
// under way and reports done (the next Close is the last). Otherwise the
// caller closes it as usual.
func (c *handoffConn) closePassing() (done bool) {
	if c.tls != nil || c.f == nil {
		return false
	}
	p := &c.pass
	p.mu.Lock()
	defer p.mu.Unlock()
	pass := c.f.passTo()
	switch {
	case p.closed:
		return false
	case p.cut:
		p.cut = false
	case pass == nil || !p.idle || p.readErr:
		p.closed = true
		return false
	case p.reading || p.took:
		p.cut = true
		if !p.took {
			c.Conn.SetReadDeadline(aLongTimeAgo)
		}
		return true
	}
	p.closed = true
	if pass == nil || p.took {
		return false // net/http served a request
	}
	// net/http read nothing since the last response: what the scanner
	// holds of a next request goes with the connection, even a byte
	// net/http's background read took of it, which net/http drops.
	rest, ok := c.scan.untaken()
	if !ok {
		return false
	}
	if err := passFD(pass, c.Conn, append(rest, c.src.pending...)); err != nil {
		c.f.logf("router: front end: passing %s on: %v", c.RemoteAddr(), err)
	}
	return false
}
