package drain

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// serve starts a Server on a loopback port with h; states gets each
// connection state change. Serve's result is sent on served.
func serve(t *testing.T, h http.HandlerFunc) (s *Server, addr string, states chan http.ConnState, served chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	states = make(chan http.ConnState, 64)
	s = New(&http.Server{Handler: h, ConnState: func(_ net.Conn, st http.ConnState) { states <- st }})
	served = make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() { s.Close() })
	return s, ln.Addr().String(), states, served
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// await takes states until want.
func await(t *testing.T, states chan http.ConnState, want http.ConnState) {
	t.Helper()
	for {
		select {
		case st := <-states:
			if st == want {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no connection went %s", want)
		}
	}
}

// stop runs Stop with ctx in the background; its result comes on the
// channel.
func stop(s *Server, ctx context.Context) chan error {
	done := make(chan error, 1)
	go func() { done <- s.Stop(ctx) }()
	return done
}

// refused waits until addr refuses connections: Stop closed its listener.
func refused(t *testing.T, addr string) {
	t.Helper()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c.Close()
		if i == 1000 {
			t.Fatal("the listener is still open")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// get sends a GET on c and reads its response.
func get(t *testing.T, c net.Conn) *http.Response {
	t.Helper()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the request got no response: %v", err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp
}

// eof reports whether the server closed c: a read ends.
func eof(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("read %d bytes, %v: want the connection closed", n, err)
	}
}

func ok(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }

// TestStopAnswersARequestSentAfter: a connection accepted before Stop
// whose request comes after it is answered, its response closing it.
// net/http's Shutdown closes it unanswered.
func TestStopAnswersARequestSentAfter(t *testing.T) {
	s, addr, states, served := serve(t, ok)
	c := dial(t, addr)
	await(t, states, http.StateNew)
	done := stop(s, context.Background())
	refused(t, addr)

	resp := get(t, c)
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("got %s, Connection: close %v; want 200 closing", resp.Status, resp.Close)
	}
	eof(t, c)
	if err := <-done; err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
	}
}

// TestStopClosesIdle: a keep-alive connection idle between requests is
// closed, and Stop returns.
func TestStopClosesIdle(t *testing.T) {
	s, addr, states, _ := serve(t, ok)
	c := dial(t, addr)
	if resp := get(t, c); resp.Close {
		t.Fatal("the first response closed the connection")
	}
	await(t, states, http.StateIdle)
	if err := s.Stop(context.Background()); err != nil {
		t.Errorf("Stop: %v", err)
	}
	eof(t, c)
}

// TestStopWaitsInFlight: Stop returns once the request in flight is
// answered, not before; one past ctx is cut.
func TestStopWaitsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name    string
		expired bool
	}{{"answered", false}, {"past ctx", true}} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			s, addr, _, _ := serve(t, func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-release:
				case <-r.Context().Done():
				}
				io.WriteString(w, "done")
			})
			c := dial(t, addr)
			answered := make(chan *http.Response, 1)
			go func() {
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					resp = nil
				}
				answered <- resp
			}()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// In flight once the listener is closed and Stop still waits.
			time.Sleep(50 * time.Millisecond)
			done := stop(s, ctx)
			refused(t, addr)
			select {
			case err := <-done:
				t.Fatalf("Stop returned (%v) with a request in flight", err)
			case <-time.After(100 * time.Millisecond):
			}
			if tc.expired {
				cancel()
				if err := <-done; !errors.Is(err, context.Canceled) {
					t.Errorf("Stop past ctx: %v, want context.Canceled", err)
				}
				if resp := <-answered; resp != nil {
					t.Errorf("the request in flight past ctx got %s, want its connection cut", resp.Status)
				}
				return
			}
			close(release)
			if resp := <-answered; resp == nil || resp.StatusCode != http.StatusOK {
				t.Errorf("the request in flight got %v, want 200", resp)
			}
			if err := <-done; err != nil {
				t.Errorf("Stop: %v", err)
			}
		})
	}
}

// TestServeAfterStop: a Serve that starts after Stop returns at once.
func TestServeAfterStop(t *testing.T) {
	s := New(&http.Server{Handler: http.HandlerFunc(ok)})
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Stop: %v, want http.ErrServerClosed", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("the listener given to Serve after Stop was left open")
	}
}

// TestOnly: Stop waits for the connections Only counts, not for others
// (a front end's HTTP/2 ones, which its Shutdown ends after).
func TestOnly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	active := make(chan struct{}, 1)
	s := New(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		active <- struct{}{}
		<-release
	})}).Only(func(net.Conn) bool { return false })
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	c := dial(t, ln.Addr().String())
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	<-active
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Errorf("Stop with a request in flight on a connection not counted: %v, want nil", err)
	}
}
