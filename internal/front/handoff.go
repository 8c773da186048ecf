package front

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"
)

// This file is what a connection handed to net/http (front.go) is read
// through, and the listener net/http accepts such connections from.

// handoffConn is a client connection handed to net/http: its reads return
// the bytes the front end had read first, through a headScanner.
type handoffConn struct {
	net.Conn
	f     *Front
	src   handoffSource
	scan  *headScanner
	tls   *tls.ConnectionState // of a TLS connection, which net/http sees wrapped
	write time.Duration        // bounds each write; 0 for TLS (switchConn does)
	// ticket is the connection's among MaxConnections, given back when
	// net/http closes it, or the handler that hijacked it.
	ticket *connTicket
	pass   handoffPass
}

func (c *handoffConn) Close() error {
	if c.closePassing() {
		return nil // its read is cut: net/http closes it again (pass.go)
	}
	c.ticket.release()
	return c.Conn.Close()
}

// handoffSource is what a handed-over connection's scanner reads.
type handoffSource struct {
	pending []byte
	r       *connReader
	c       *handoffConn // told of the reads (pass.go)
}

func (s *handoffSource) Read(p []byte) (int, error) {
	if n, ok := readPending(&s.pending, p); ok {
		return n, nil
	}
	if s.c == nil {
		return s.r.Read(p)
	}
	return s.c.readSocket(s.r, p)
}

func (c *handoffConn) Write(p []byte) (int, error) { return writeTimed(c.Conn, p, c.write) }

type tlsStateKey struct{}

// tlsStateContext is the ConnContext of the TLS fallback server: it keeps
// the TLS state of a connection handed over wrapped, for withTLSState.
func tlsStateContext(ctx context.Context, c net.Conn) context.Context {
	if hc, ok := c.(*handoffConn); ok && hc.tls != nil {
		return context.WithValue(ctx, tlsStateKey{}, hc.tls)
	}
	return ctx
}

// withTLSState sets Request.TLS on the requests of TLS connections that
// net/http sees wrapped (it sets it itself for a *tls.Conn): handlers tell
// HTTPS from HTTP by it.
func withTLSState(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			if st, ok := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState); ok {
				r.TLS = st
			}
		}
		h.ServeHTTP(w, r)
	})
}

func (c *handoffConn) Read(p []byte) (int, error) { return c.read(p) }

// readPending reads into p from the bytes read ahead of a connection,
// *pending, while there are any; ok is false once there are none.
func readPending(pending *[]byte, p []byte) (n int, ok bool) {
	if len(*pending) == 0 {
		return 0, false
	}
	n = copy(p, *pending)
	if *pending = (*pending)[n:]; len(*pending) == 0 {
		*pending = nil // not kept for the connection's life
	}
	return n, true
}

// handoffListener is the listener of the http.Server that serves handed
// over connections.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func (l *handoffListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		c.Close()
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }
