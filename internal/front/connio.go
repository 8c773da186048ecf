package front

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// This file is what a client connection is read and written through: the
// reader with its hang-up watch, the TLS connection's switchable socket, and
// writes bounded in time.

// aLongTimeAgo is a deadline in the past: set, it ends a read under way.
var aLongTimeAgo = time.Unix(1, 0)

// connReader is what a client connection's bufio.Reader reads from. While
// a slow request is forwarded, a background read watches the connection:
// an EOF or error means the client is gone, which ends the backend request
// (net/http does this for every request; here only requests running longer
// than watchDelay pay for it). A byte it reads (a pipelined request) is
// kept for the next Read.
type connReader struct {
	c net.Conn
	h *hangup
	// armed: a request is being forwarded and not watched yet.
	armed atomic.Bool

	// pending holds bytes an event loop read ahead of the connection's
	// hand-over: they are read first.
	pending []byte

	mu       sync.Mutex
	stopped  bool // the request is over: no new background read
	watching bool
	done     chan struct{} // closed when the background read returns
	hasByte  bool
	b        [1]byte
}

func (cr *connReader) Read(p []byte) (int, error) {
	if n, ok := readPending(&cr.pending, p); ok {
		return n, nil
	}
	if cr.hasByte {
		if len(p) == 0 {
			return 0, nil
		}
		p[0] = cr.b[0]
		cr.hasByte = false
		return 1, nil
	}
	return cr.c.Read(p)
}

func (cr *connReader) backgroundRead() {
	cr.mu.Lock()
	if cr.stopped || cr.watching || cr.hasByte {
		cr.mu.Unlock()
		return
	}
	cr.watching = true
	done := make(chan struct{})
	cr.done = done
	cr.mu.Unlock()
	n, err := cr.c.Read(cr.b[:])
	cr.mu.Lock()
	if n > 0 {
		cr.hasByte = true
	}
	gone := n == 0 && err != nil && !cr.stopped
	cr.watching = false
	cr.mu.Unlock()
	close(done)
	if gone {
		cr.h.gone()
	}
}

// switchConn is what a TLS client connection's tls.Conn reads and writes:
// the TCP connection, or, while an event loop serves the connection,
// buffers the loop fills with what it reads and empties into the socket.
type switchConn struct {
	net.Conn
	mem bool   // an event loop's: in and out, not Conn
	eof bool   // mem: the client closed its side
	in  []byte // ciphertext read from the socket, not yet by TLS
	out []byte // mem: ciphertext TLS wrote
	// write bounds each write to the socket (Options.WriteTimeout).
	write time.Duration
	// ticket is the connection's among MaxConnections, given back when
	// TLS closes it (net/http does, for the connections it serves).
	ticket *connTicket
}

func (s *switchConn) Close() error {
	if !s.mem { // an event loop's connection is its to close
		s.ticket.release()
	}
	return s.Conn.Close()
}

// errWouldBlock is a switchConn's read with nothing buffered: temporary,
// so tls.Conn keeps the connection and what it read of a record.
var errWouldBlock net.Error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "router: no data buffered" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

func (s *switchConn) Read(p []byte) (int, error) {
	if n, ok := readPending(&s.in, p); ok {
		return n, nil
	}
	if s.mem {
		if s.eof {
			return 0, io.EOF
		}
		return 0, errWouldBlock
	}
	return s.Conn.Read(p)
}

func (s *switchConn) Write(p []byte) (int, error) {
	if s.mem {
		s.out = append(s.out, p...)
		return len(p), nil
	}
	return writeTimed(s.Conn, p, s.write)
}

// timedWriter writes to a client connection, each write bounded by d
// (none if 0): a client that stops reading is let go of, not waited for.
type timedWriter struct {
	c net.Conn
	d time.Duration
}

func (w *timedWriter) Write(p []byte) (int, error) { return writeTimed(w.c, p, w.d) }

func writeTimed(c net.Conn, p []byte, d time.Duration) (int, error) {
	if d > 0 {
		c.SetWriteDeadline(time.Now().Add(d))
	}
	return c.Write(p)
}
