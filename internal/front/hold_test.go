package front

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/spec"
)

// gateAcct is an Accounting whose gate is closed until the first Wait
// opens it; it counts the calls a request makes of it.
type gateAcct struct {
	mu                       sync.Mutex
	open                     bool
	acquires, refused, waits int
	inflight, released       int
}

func (a *gateAcct) Acquire() (int64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.acquires++
	if !a.open {
		a.refused++
		return 0, false
	}
	a.inflight++
	return 1, true
}

func (a *gateAcct) Release(int64) {
	a.mu.Lock()
	a.inflight--
	a.released++
	a.mu.Unlock()
}

func (a *gateAcct) Open() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.open
}

func (a *gateAcct) Wait(context.Context) error {
	a.mu.Lock()
	a.waits++
	a.open = true // the version woke
	a.mu.Unlock()
	return nil
}

// TestHeldRequestAcquiresOnce: a request that finds its backend's gate
// closed is refused once, waits once and takes its slot once the gate
// opens — on the net/http path (with and without a body) and on the
// front end's own path as the event loops hand it on. The slot is given
// back once.
func TestHeldRequestAcquiresOnce(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	t.Cleanup(app.Close)
	addr := strings.TrimPrefix(app.URL, "http://")
	p := NewProxy(t.Logf)
	t.Cleanup(p.Close)

	for _, tc := range []struct {
		name  string
		serve func(b *Backend) (status int)
	}{
		{"net/http GET", func(b *Backend) int {
			rec := httptest.NewRecorder()
			b.ServeHTTP(rec, httptest.NewRequest("GET", "http://"+addr+"/", nil))
			return rec.Code
		}},
		{"net/http POST with a body", func(b *Backend) int {
			rec := httptest.NewRecorder()
			b.ServeHTTP(rec, httptest.NewRequest("POST", "http://"+addr+"/", strings.NewReader("a body")))
			return rec.Code
		}},
		{"handed on by an event loop", func(b *Backend) int {
			// What the loop does when its acquire failed.
			if _, ok := b.acquire(); ok {
				t.Fatal("the gate is open before the wait")
			}
			req := &Request{Method: "GET", Target: "/", Host: "app.example.org"}
			var out strings.Builder
			w := bufio.NewWriter(&out)
			b.serveFast(req, w, &hangup{}, true)
			w.Flush()
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out.String())), nil)
			if err != nil {
				t.Fatalf("reading the answer: %v (%q)", err, out.String())
			}
			return resp.StatusCode
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acct := &gateAcct{}
			b := p.NewBackend(spec.Key("app", "0123456789ab"), addr, acct)
			if code := tc.serve(b); code != http.StatusOK {
				t.Fatalf("held request answered %d, want 200", code)
			}
			acct.mu.Lock()
			defer acct.mu.Unlock()
			if acct.acquires != 2 || acct.refused != 1 || acct.waits != 1 {
				t.Errorf("acquires %d (refused %d), waits %d; want 2 (1), 1: one refused acquire, one wait, one acquire once the gate opened",
					acct.acquires, acct.refused, acct.waits)
			}
			if acct.released != 1 || acct.inflight != 0 {
				t.Errorf("released %d times, %d in flight; want 1, 0", acct.released, acct.inflight)
			}
		})
	}
}

// TestGuardHandsOnTheRequest: the guard passes a request with a body on
// as it got it, its body timed, without a copy of the request.
func TestGuardHandsOnTheRequest(t *testing.T) {
	f := New(nil, Options{})
	var got *http.Request
	h := f.guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		io.Copy(io.Discard, r.Body)
	}))
	req := httptest.NewRequest("POST", "http://app.example.org/", strings.NewReader("a body"))
	h.ServeHTTP(httptest.NewRecorder(), req)
	if got != req {
		t.Errorf("the handler got a copy of the request")
	}
	if _, ok := got.Body.(*clientBody); !ok {
		t.Errorf("the handler got body %T, want the guard's *clientBody", got.Body)
	}
}

// BenchmarkGuardBody: what the guard costs a request with a body.
func BenchmarkGuardBody(b *testing.B) {
	f := New(nil, Options{})
	h := f.guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	rec := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "http://app.example.org/", strings.NewReader("a body"))
		h.ServeHTTP(rec, req)
	}
}

// TestHeldRequestReleasedWhileItsBodyComes: a held request whose body is
// still coming when the gate opens goes to the app then, its body
// following as the client sends it: an upload that streams (or one that
// waits for the app's first answer) is not held until it ends. What came
// while it was held reaches the app first, whole and in order.
func TestHeldRequestReleasedWhileItsBodyComes(t *testing.T) {
	for _, tc := range []struct {
		name string
		held int // bytes the client sent while the request was held
	}{
		{"in memory", 100},
		{"past the memory spool", SpoolMemory + 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Repeat("h", tc.held-1) + "\n"
			gotFirst := make(chan string, 1)
			app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				br := bufio.NewReaderSize(r.Body, 2*SpoolMemory)
				first, _ := br.ReadString('\n')
				gotFirst <- first
				rest, _ := io.ReadAll(br)
				io.WriteString(w, string(rest))
			}))
			t.Cleanup(app.Close)
			addr := strings.TrimPrefix(app.URL, "http://")
			p := NewProxy(t.Logf)
			t.Cleanup(p.Close)
			acct := &gateAcct{}
			b := p.NewBackend(spec.Key("app", "0123456789ab"), addr, acct)

			pr, pw := io.Pipe()
			req := httptest.NewRequest("POST", "http://"+addr+"/", pr)
			req.ContentLength = -1
			rec := httptest.NewRecorder()
			served := make(chan struct{})
			go func() {
				defer close(served)
				b.ServeHTTP(rec, req)
			}()
			t.Cleanup(func() { pw.Close(); <-served })
			if _, err := io.WriteString(pw, before); err != nil {
				t.Fatal(err)
			}
			select {
			case first := <-gotFirst:
				if first != before {
					t.Fatalf("the app got a first line of %d bytes, want the %d sent while held", len(first), len(before))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the request was not released while its body was still coming")
			}
			io.WriteString(pw, "after")
			pw.Close()
			<-served
			if rec.Code != http.StatusOK || rec.Body.String() != "after" {
				t.Errorf("answer %d %q, want 200 %q", rec.Code, rec.Body.String(), "after")
			}
			acct.mu.Lock()
			defer acct.mu.Unlock()
			if acct.released != 1 || acct.inflight != 0 {
				t.Errorf("released %d times, %d in flight; want 1, 0", acct.released, acct.inflight)
			}
		})
	}
}
