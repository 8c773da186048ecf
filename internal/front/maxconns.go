package front

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// This file bounds the client connections a Front holds open
// (Options.MaxConnections), and keeps its listeners serving when the
// process runs out of descriptors.

// DefaultMaxConnections is Options.MaxConnections by default: half the
// descriptors the process may open (RLIMIT_NOFILE, which Go raises to its
// hard limit at start) less 512, and at least a quarter of them. A client
// connection may hold a connection to an app as well, and the daemon
// needs descriptors of its own (its store, the services' logs, the app
// connections it keeps idle); past the limit a connection is answered 503
// instead of failing to be accepted at all. 1,024 where the limit is not
// known.
func DefaultMaxConnections() int {
	n := fdLimit()
	switch {
	case n == 0:
		return 1024
	case n > 1<<22:
		n = 1 << 22 // RLIM_INFINITY, or near: memory is the bound then
	}
	return int(max(n/4, n/2-512))
}

// acceptAgain reports whether an Accept that failed with err may be tried
// again, as net/http's server does for temporary errors.
func acceptAgain(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// connTicket is one client connection's place among Options.MaxConnections.
// It goes with the connection from path to path — an event loop, a
// goroutine, net/http (in the handoffConn or, for TLS, the switchConn that
// net/http closes) — and is given back once, when the connection closes.
type connTicket struct {
	f    *Front
	done atomic.Bool
}

// OpenConnections returns the client connections open on f's listeners,
// whichever path serves them.
func (f *Front) OpenConnections() int64 { return f.open.Load() }

// admit takes a ticket for a new connection; nil if MaxConnections are
// open.
func (f *Front) admit() *connTicket {
	if n := f.open.Add(1); f.maxConns > 0 && n > f.maxConns {
		f.open.Add(-1)
		return nil
	}
	return &connTicket{f: f}
}

// release gives the ticket back, once; a nil ticket does nothing.
func (t *connTicket) release() {
	if t != nil && t.done.CompareAndSwap(false, true) {
		t.f.open.Add(-1)
	}
}

// tooManyConns is the answer to a connection past MaxConnections.
var tooManyConns = func() string {
	msg := "hostel: too many connections; try again\n"
	return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Retry-After: " + strconv.Itoa(RetryAfter) + "\r\nConnection: close\r\nContent-Length: " +
		strconv.Itoa(len(msg)) + "\r\n\r\n" + msg
}()

// maxTurning bounds the connections being turned away at once; past it
// they are closed without an answer.
const maxTurning = 64

// turnAway answers a connection past MaxConnections 503 and closes it. The
// answer goes out before the request is read: what the client sends is
// then read and thrown away for up to a second, so that the close does
// not reset the connection before the client read the answer. A TLS
// connection is closed at once: its handshake is the work to spare.
func (f *Front) turnAway(c net.Conn, secure bool) {
	if secure || f.turning.Add(1) > maxTurning {
		if !secure {
			f.turning.Add(-1)
		}
		c.Close()
		return
	}
	go func() {
		defer f.turning.Add(-1)
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(c, tooManyConns); err != nil {
			return
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}()
}
