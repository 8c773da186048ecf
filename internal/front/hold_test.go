package front

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
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

func (a *gateAcct) Refused(time.Duration, *Outcome) {}

func (a *gateAcct) Release(int64, *Outcome) {
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
	p := NewProxy(t.Logf, HoldLimits{})
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
		{"past the memory spool", HeldRequestMemory + 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Repeat("h", tc.held-1) + "\n"
			gotFirst := make(chan string, 1)
			app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				br := bufio.NewReaderSize(r.Body, 2*HeldRequestMemory)
				first, _ := br.ReadString('\n')
				gotFirst <- first
				rest, _ := io.ReadAll(br)
				io.WriteString(w, string(rest))
			}))
			t.Cleanup(app.Close)
			addr := strings.TrimPrefix(app.URL, "http://")
			p := NewProxy(t.Logf, HoldLimits{})
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

// heldGate is an Accounting whose gate stays closed until open is
// called: a request is held until then, or until its context ends.
type heldGate struct {
	mu     sync.Mutex
	opened chan struct{}
	isOpen bool
	n      int // slots taken and not given back
}

func newHeldGate() *heldGate { return &heldGate{opened: make(chan struct{})} }

func (g *heldGate) Acquire() (int64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.isOpen {
		return 0, false
	}
	g.n++
	return 1, true
}

func (g *heldGate) Refused(time.Duration, *Outcome) {}

func (g *heldGate) Release(int64, *Outcome) {
	g.mu.Lock()
	g.n--
	g.mu.Unlock()
}

func (g *heldGate) Open() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.isOpen
}

func (g *heldGate) Wait(ctx context.Context) error {
	select {
	case <-g.opened:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *heldGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.isOpen {
		g.isOpen = true
		close(g.opened)
	}
}

func (g *heldGate) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// oneBackend is a Router that sends everything to one backend.
type oneBackend struct{ b *Backend }

func (o oneBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) { o.b.ServeHTTP(w, r) }
func (o oneBackend) Route(string, string) *Backend                    { return o.b }

// heldWorld is a front end on loopback in front of one backend, app,
// whose gate is closed: its requests are held until gate.open().
type heldWorld struct {
	p    *Proxy
	gate *heldGate
	pub  string // the front end's address
	// seen counts the requests the app got.
	seen *atomic.Int64
}

func newHeldWorld(t *testing.T, lim HoldLimits, app http.Handler) *heldWorld {
	t.Helper()
	return newHeldWorldOpts(t, lim, Options{}, app)
}

func newHeldWorldOpts(t *testing.T, lim HoldLimits, opts Options, app http.Handler) *heldWorld {
	t.Helper()
	w := &heldWorld{gate: newHeldGate(), seen: new(atomic.Int64)}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.seen.Add(1)
		app.ServeHTTP(rw, r)
	}))
	t.Cleanup(srv.Close)
	w.p = NewProxy(t.Logf, lim)
	t.Cleanup(w.p.Close)
	b := w.p.NewBackend(spec.Key("app", "0123456789ab"), strings.TrimPrefix(srv.URL, "http://"), w.gate)
	opts.Logf = t.Logf
	f := New(oneBackend{b}, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go f.Serve(ln)
	t.Cleanup(func() { f.Close() })
	w.pub = ln.Addr().String()
	return w
}

// post sends a POST of body (chunked if chunked) on a new connection in
// the background; the result comes on the channel.
func (w *heldWorld) post(t *testing.T, body []byte, chunked bool) <-chan heldResult {
	t.Helper()
	out := make(chan heldResult, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+w.pub+"/upload", bytes.NewReader(body))
		if chunked {
			req.Body = io.NopCloser(bytes.NewReader(body))
			req.ContentLength = -1
		}
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			out <- heldResult{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- heldResult{code: resp.StatusCode, header: resp.Header, body: string(b)}
	}()
	return out
}

type heldResult struct {
	code   int
	header http.Header
	body   string
	err    error
}

func (w *heldWorld) waitUsage(t *testing.T, what string, cond func(mem, disk int64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mem, disk := w.p.heldUsage()
		if cond(mem, disk) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: memory %d, disk %d", what, mem, disk)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// digestApp answers with the length and SHA-256 of the body it read.
var digestApp = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
})

func digestOf(b []byte) string { return fmt.Sprintf("%d %x", len(b), sha256.Sum256(b)) }

func receive(t *testing.T, ch <-chan heldResult) heldResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no answer after 30 s")
	}
	return heldResult{}
}

// TestHeldBodyLimits: a held request whose body outgrows what may be
// held for it is answered 413, one that would pass the shared disk
// budget or meets a full disk 503 with Retry-After, all while still held:
// the app never sees them, nothing stays counted, and a request held
// beside them within the limits reaches the app whole once released.
func TestHeldBodyLimits(t *testing.T) {
	const k = 1 << 10
	for _, tc := range []struct {
		name     string
		lim      HoldLimits
		full     bool // the spool's files are on a full disk (/dev/full)
		body     int
		chunked  bool
		want     int
		wantBody string
	}{
		{"past the body limit", HoldLimits{Body: 256 * k}, false, 1 << 20, false, 413, "too large"},
		{"chunked past the body limit", HoldLimits{Body: 256 * k}, false, 1 << 20, true, 413, "too large"},
		{"past the disk budget", HoldLimits{Disk: 256 * k}, false, 400 * k, false, 503, "no room"},
		{"disk full", HoldLimits{}, true, 400 * k, false, 503, "no room"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newHeldWorld(t, tc.lim, digestApp)
			if tc.full {
				w.p.held.create = func() (*os.File, error) { return os.OpenFile("/dev/full", os.O_RDWR, 0) }
			}
			small := bytes.Repeat([]byte("s"), 100*k) // within every limit
			if tc.full {
				small = small[:10*k] // in memory
			}
			within := w.post(t, small, false)
			w.waitUsage(t, "the small body spooled", func(mem, disk int64) bool { return mem+disk >= int64(len(small)) })
			big := bytes.Repeat([]byte("b"), tc.body)
			r := receive(t, w.post(t, big, tc.chunked))
			if r.err != nil || r.code != tc.want || !strings.Contains(r.body, tc.wantBody) {
				t.Fatalf("held %d bytes: %d %q (%v), want %d %q", tc.body, r.code, r.body, r.err, tc.want, tc.wantBody)
			}
			if tc.want == 503 && r.header.Get("Retry-After") == "" {
				t.Errorf("503 without Retry-After")
			}
			if n := w.seen.Load(); n != 0 {
				t.Errorf("the app got %d requests while the gate was closed", n)
			}
			w.gate.open()
			if r = receive(t, within); r.err != nil || r.code != 200 || r.body != digestOf(small) {
				t.Errorf("the request within the limits: %d %q (%v), want 200 %q", r.code, r.body, r.err, digestOf(small))
			}
			w.waitUsage(t, "nothing held", func(mem, disk int64) bool { return mem == 0 && disk == 0 })
			waitFor(t, "nothing in flight", func() bool { return w.gate.inFlight() == 0 })
		})
	}
}

// TestHeldMemoryBudget: held bodies share one memory budget, each taking
// at most HeldRequestMemory of it; past it they go to a temporary file.
// Released, each reaches the app whole, and the budget is given back.
func TestHeldMemoryBudget(t *testing.T) {
	const budget = 3 * HeldRequestMemory
	w := newHeldWorld(t, HoldLimits{Memory: budget}, digestApp)
	var bodies [][]byte
	var answers []<-chan heldResult
	total := int64(0)
	for i := range 8 {
		b := bytes.Repeat([]byte{byte('a' + i)}, 100<<10+i)
		bodies = append(bodies, b)
		answers = append(answers, w.post(t, b, i%2 == 1))
		total += int64(len(b))
	}
	w.waitUsage(t, "every body spooled", func(mem, disk int64) bool { return mem+disk == total })
	if mem, disk := w.p.heldUsage(); mem > budget || disk < total-budget {
		t.Errorf("held in memory %d, on disk %d; want at most %d in memory, the rest on disk", mem, disk, budget)
	}
	w.gate.open()
	for i, ch := range answers {
		if r := receive(t, ch); r.err != nil || r.code != 200 || r.body != digestOf(bodies[i]) {
			t.Errorf("request %d: %d %q (%v), want 200 %q", i, r.code, r.body, r.err, digestOf(bodies[i]))
		}
	}
	w.waitUsage(t, "nothing held", func(mem, disk int64) bool { return mem == 0 && disk == 0 })
}

// TestHeldReadAheadStopsAtRelease: once a held request is released, its
// body is read only as the app reads it, as for a running app: a client
// cannot push a large upload into the spool while the app reads nothing.
func TestHeldReadAheadStopsAtRelease(t *testing.T) {
	appReads := make(chan struct{})
	var got atomic.Int64
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-appReads
		n, _ := io.Copy(io.Discard, r.Body)
		got.Store(n)
		fmt.Fprint(w, n)
	})
	w := newHeldWorld(t, HoldLimits{}, app)
	const size = 128 << 20
	c, err := net.Dial("tcp", w.pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", size)
	var written atomic.Int64
	go func() {
		buf := make([]byte, 64<<10)
		for written.Load() < size {
			n, err := c.Write(buf[:min(len(buf), int(size-written.Load()))])
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	w.waitUsage(t, "a first part spooled", func(mem, disk int64) bool { return mem+disk > 1<<20 })
	w.gate.open()
	// The app reads nothing: the client must get stuck, well before the
	// whole body is out.
	last, still := written.Load(), 0
	for still < 50 && written.Load() < size {
		time.Sleep(10 * time.Millisecond)
		if n := written.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	if n := written.Load(); n >= size/2 {
		t.Fatalf("the client wrote %d MiB of its body while the released request's app read nothing: read ahead without bound", n>>20)
	}
	close(appReads)
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != fmt.Sprint(size) {
		t.Errorf("answer %d %q, want 200 %d", resp.StatusCode, b, size)
	}
	w.waitUsage(t, "nothing held", func(mem, disk int64) bool { return mem == 0 && disk == 0 })
}

// waitFor polls cond until it holds, failing t after 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHeldBodyStalls: a held request whose body stalls is answered 408
// when it does, not once released.
func TestHeldBodyStalls(t *testing.T) {
	w := newHeldWorldOpts(t, HoldLimits{}, Options{BodyTimeout: 300 * time.Millisecond}, digestApp)
	c, err := net.Dial("tcp", w.pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n%s", strings.Repeat("x", 500))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestTimeout {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("status %d %q, want 408", resp.StatusCode, b)
	}
	w.waitUsage(t, "nothing held", func(mem, disk int64) bool { return mem == 0 && disk == 0 })
	if n := w.seen.Load(); n != 0 {
		t.Errorf("the app got %d requests", n)
	}
}

// TestHeldExpectContinue: a held request that asks "Expect:
// 100-continue" is not read ahead — its client waits for the app's go-ahead
// — even if the client sends its body anyway; released, the app gets it
// whole.
func TestHeldExpectContinue(t *testing.T) {
	w := newHeldWorld(t, HoldLimits{}, digestApp)
	body := bytes.Repeat([]byte("e"), 1<<20)
	c, err := net.Dial("tcp", w.pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", len(body))
	wrote := make(chan error, 1)
	go func() { _, err := c.Write(body); wrote <- err }() // as curl does after a second
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if mem, disk := w.p.heldUsage(); mem+disk != 0 {
			t.Fatalf("the body of a request expecting 100-continue was read ahead while held: %d bytes", mem+disk)
		}
	}
	w.gate.open()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	for err == nil && resp.StatusCode == http.StatusContinue {
		resp, err = http.ReadResponse(br, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(got) != digestOf(body) {
		t.Errorf("answer %d %q, want 200 %q", resp.StatusCode, got, digestOf(body))
	}
	<-wrote
}

// TestHeldRefusalAnsweredWhole: a held upload refused while its client
// still sends (or is about to) gets its whole answer at once — not one
// whose end waits for the lingering over the rest of the body — and the
// rest of the body is read and dropped meanwhile, so the client is not
// reset before it read the answer.
func TestHeldRefusalAnsweredWhole(t *testing.T) {
	w := newHeldWorld(t, HoldLimits{Body: 256 << 10}, digestApp)
	c, err := net.Dial("tcp", w.pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", 64<<20)
	c.Write(make([]byte, 1<<20)) // and the rest later
	c.SetReadDeadline(time.Now().Add(lingerTime / 2))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("answer %d %q (%v), want a whole 413 while the client may still send", resp.StatusCode, b, err)
	}
	// The rest is taken, and thrown away.
	c.SetWriteDeadline(time.Now().Add(lingerTime / 2))
	if _, err := c.Write(make([]byte, 8<<20)); err != nil {
		t.Errorf("the rest of the body after the answer: %v", err)
	}
}
