// Package drain stops an HTTP/1.1 server without dropping a request it
// reads: what a daemon that is replaced, or stops, owes the requests sent
// to it.
//
// net/http's Server.Shutdown closes, unanswered, a connection whose request
// it reads after the shutdown began: one accepted just before, whose client
// sent its request just after, gets EOF. A client retries on a connection
// it reused, never on a fresh one — there, the request is lost. A Server
// stops taking connections and closes idle ones (between requests, where
// HTTP/1.1 lets a server close), but answers every request it reads, each
// response closing its connection, and returns once none is left.
//
// HTTP/1.1 only: an HTTP/2 connection is not told to go away (Shutdown
// sends it GOAWAY) and holds Stop until its ctx ends. The servers of
// hostel's own ports offer HTTP/1.1 alone; the front end, which serves
// HTTP/2 too, has Stop wait for its HTTP/1.1 connections alone (Only)
// and Shutdown end the rest.
package drain

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// A Server is an http.Server whose connections are counted, for Stop.
type Server struct {
	srv     *http.Server
	open    atomic.Int64        // connections counted, not yet closed or hijacked
	counted func(net.Conn) bool // nil: every connection (Only)

	mu       sync.Mutex
	lns      []net.Listener
	onStop   []func()
	stopping bool
	serving  sync.WaitGroup // the Serve calls under way
}

// New returns srv made stoppable; srv's own ConnState hook, if any, is
// still called. Use the Server's Serve, Stop and Close, not srv's.
func New(srv *http.Server) *Server {
	s := &Server{srv: srv}
	hook := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		if s.counted == nil || s.counted(c) {
			switch st {
			case http.StateNew:
				s.open.Add(1)
			case http.StateClosed, http.StateHijacked:
				s.open.Add(-1)
			}
		}
		if hook != nil {
			hook(c, st)
		}
	}
	return s
}

// Only makes Stop wait for the connections counted reports true of, and
// for no other: the HTTP/1.1 ones of a server that also serves HTTP/2,
// whose own Shutdown, called after Stop, tells those to go away. counted
// must give the same answer for a connection every time. Call it before
// Serve.
func (s *Server) Only(counted func(net.Conn) bool) *Server {
	s.counted = counted
	return s
}

// Serve serves ln until Stop or Close, when it returns
// http.ErrServerClosed; it closes ln when it returns.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.lns = append(s.lns, ln)
	s.serving.Add(1)
	s.mu.Unlock()
	defer s.serving.Done()
	err := s.srv.Serve(ln)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping && errors.Is(err, net.ErrClosed) {
		return http.ErrServerClosed
	}
	return err
}

// OnStop registers f to be called, in a goroutine of its own, when Stop
// begins: to end what never ends by itself, such as a stream of events
// (http.Server's RegisterOnShutdown).
func (s *Server) OnStop(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onStop = append(s.onStop, f)
}

// Stop closes the listeners, then waits until every connection is closed:
// idle ones at once, the others once the response to the request they
// carry, or the one they will carry, is sent. If ctx ends first, it closes
// them all (Close) and returns ctx's error.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	lns, onStop := s.lns, s.onStop
	s.onStop = nil
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, f := range onStop {
		go f()
	}
	// A connection accepted before the close is counted (its StateNew)
	// before its Serve returns.
	s.serving.Wait()
	t := time.NewTimer(0)
	defer t.Stop()
	for delay := time.Millisecond; ; delay = min(2*delay, maxPoll) {
		// Closes the idle connections, and those that have sent nothing
		// for 5 s; each other one closes after its next response.
		s.srv.SetKeepAlivesEnabled(false)
		if s.open.Load() <= 0 {
			return nil
		}
		t.Reset(delay)
		select {
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// maxPoll bounds the interval at which Stop looks for the last connection.
const maxPoll = 50 * time.Millisecond

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	return s.srv.Close()
}
