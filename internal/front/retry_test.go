package front_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
	"hostel/internal/router"
	"hostel/internal/spec"
)

// lateBackend reserves a loopback port and returns its address; listen
// starts an app there that answers "late METHOD BODY". Until then a
// connection to the address is refused: an app that says it is ready
// (READY=1) before its port accepts.
func lateBackend(t testing.TB) (addr string, listen func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()
	return addr, func() {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listening late on %s: %v", addr, err)
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "late %s %s", r.Method, b)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
}

// refusedRequests are a request of each forwarding path: the fast path
// (an event loop's or a goroutine's, as -front-loops says), net/http's
// own forwarder (HTTP/1.0) and httputil.ReverseProxy (a body).
var refusedRequests = []struct {
	name, raw, method, want string
}{
	{"fast path", "GET / HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n", "GET", "late GET "},
	{"net/http forwarder", "GET / HTTP/1.0\r\nHost: " + host + "\r\n\r\n", "GET", "late GET "},
	{"reverse proxy", "POST / HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", "POST", "late POST hello"},
}

// TestRefusedByANewBackend: an app whose port accepts 300 ms after it was
// registered (a deploy's switch to it, a restart on a new port) is tried
// again until it does, on every forwarding path: no 502.
func TestRefusedByANewBackend(t *testing.T) {
	for _, tc := range refusedRequests {
		t.Run(tc.name, func(t *testing.T) {
			addr, listen := lateBackend(t)
			_, _, pub := frontTo(t, addr, front.Options{})
			time.AfterFunc(300*time.Millisecond, listen)
			resp, body := exchange(t, pub, tc.raw)
			if resp == nil || resp.StatusCode != 200 || body != tc.want {
				t.Fatalf("got %v %q, want 200 %q", resp, body, tc.want)
			}
		})
	}
}

// TestRefusedByAWokenBackend: a version woken by a held request whose app
// says it is ready before its port accepts (300 ms later) answers the held
// requests, on every path.
func TestRefusedByAWokenBackend(t *testing.T) {
	for _, tc := range refusedRequests {
		t.Run(tc.name, func(t *testing.T) {
			waker := wakerFunc(func(context.Context, spec.VersionKey) (string, error) {
				addr, listen := lateBackend(t)
				time.AfterFunc(300*time.Millisecond, listen)
				return addr, nil
			})
			r := router.New(router.Options{Zone: zone, Logf: t.Logf, Waker: waker})
			t.Cleanup(func() { r.Close() })
			r.AddSleepingBackend(apiV1)
			mustSwap(t, r, router.Table{Domains: map[string]spec.VersionKey{host: apiV1}})
			_, pub := fronttest.Serve(t, r, front.Options{})
			resp, body := exchange(t, pub, tc.raw)
			if resp == nil || resp.StatusCode != 200 || body != tc.want {
				t.Fatalf("got %v %q, want 200 %q", resp, body, tc.want)
			}
		})
	}
}

// TestRefusedByAnOldBackend: a backend whose app refused connections long
// after it was registered (it died) is not waited for: 502 at once.
func TestRefusedByAnOldBackend(t *testing.T) {
	defer front.SetRetryRefused(50 * time.Millisecond)()
	addr, _ := lateBackend(t)
	_, _, pub := frontTo(t, addr, front.Options{})
	time.Sleep(100 * time.Millisecond)
	for _, tc := range refusedRequests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := exchange(t, pub, tc.raw)
			if resp == nil || resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "late") {
				t.Fatalf("got %v %q, want 502", resp, body)
			}
		})
	}
}

// wakerFunc is a router.Waker.
type wakerFunc func(ctx context.Context, key spec.VersionKey) (string, error)

func (f wakerFunc) Wake(ctx context.Context, key spec.VersionKey) (string, error) { return f(ctx, key) }
