package router

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
	"hostel/internal/spec"
)

// testWaker starts a fresh backend for every wake, as the supervisor
// starts a fresh process: it answers with a digest of the body it got.
type testWaker struct {
	t       testing.TB
	wakes   atomic.Int32
	release chan struct{} // a wake waits for it; nil: no wait
	fail    error         // every wake fails with it
}

func (w *testWaker) Wake(ctx context.Context, key spec.VersionKey) (string, error) {
	w.wakes.Add(1)
	if w.release != nil {
		select {
		case <-w.release:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if w.fail != nil {
		return "", w.fail
	}
	return digestBackend(w.t), nil
}

func digestBackend(t testing.TB) string {
	return fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %x", r.URL.Path, len(b), sha256.Sum256(b))
	}))
}

// sleepingRouter returns a router, its public URL, and apiV1 registered
// at a backend and put to sleep.
func sleepingRouter(t *testing.T, w *testWaker) (*Router, string) {
	t.Helper()
	r, pub := startRouter(t, Options{Waker: w})
	r.AddBackend(apiV1, digestBackend(t))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	if !r.Sleep(apiV1, 0) {
		t.Fatal("Sleep of an idle backend: false")
	}
	return r, pub
}

// TestHerdWakesOnce: many requests to a sleeping version, bodies small and
// larger than what is spooled in memory, are all held and answered in full
// after exactly one wake.
func TestHerdWakesOnce(t *testing.T) {
	for _, loops := range []int{-1, 0} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			w := &testWaker{t: t, release: make(chan struct{})}
			r := New(Options{Zone: zone, Logf: t.Logf, Waker: w})
			t.Cleanup(func() { r.Close() })
			r.AddBackend(apiV1, digestBackend(t))
			mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})
			_, addr := fronttest.Serve(t, r, front.Options{Loops: loops})
			if !r.Sleep(apiV1, 0) {
				t.Fatal("Sleep of an idle backend: false")
			}
			big := bytes.Repeat([]byte("x"), front.HeldRequestMemory+12345)
			const n = 200
			var sent, done sync.WaitGroup
			sent.Add(n)
			errs := make(chan error, n)
			for i := range n {
				done.Add(1)
				go func() {
					defer done.Done()
					var body []byte
					switch i % 10 {
					case 0:
						body = big
					case 1:
						body = []byte("small body")
					}
					method := "GET"
					if body != nil {
						method = "POST"
					}
					req, _ := http.NewRequest(method, "http://"+addr+fmt.Sprintf("/r%d", i), bytes.NewReader(body))
					req.Host = host
					sent.Done()
					resp, err := fronttest.Client.Do(req)
					if err != nil {
						errs <- err
						return
					}
					got, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					want := fmt.Sprintf("/r%d %d %x", i, len(body), sha256.Sum256(body))
					if err != nil || resp.StatusCode != 200 || string(got) != want {
						errs <- fmt.Errorf("request %d: %d %q (%v), want 200 %q", i, resp.StatusCode, got, err, want)
					}
				}()
			}
			sent.Wait()
			fronttest.WaitFor(t, "a wake", func() bool { return w.wakes.Load() > 0 })
			if sl, _ := r.Sleeping(apiV1); !sl.Waking {
				t.Errorf("while waking: Sleeping = %+v, want Waking", sl)
			}
			close(w.release)
			done.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got := w.wakes.Load(); got != 1 {
				t.Errorf("wakes = %d, want 1", got)
			}
			sl, _ := r.Sleeping(apiV1)
			if sl.Asleep || sl.Waking || sl.Wakes != 1 || sl.WakeError != nil {
				t.Errorf("after the wake: %+v, want awake with 1 wake", sl)
			}
			if got := r.InFlight(apiV1); got != 0 {
				t.Errorf("InFlight = %d after every request ended", got)
			}
		})
	}
}

// TestFailedWake: a wake that fails answers every held request 503 with
// Retry-After, status says why, and the next request tries again.
func TestFailedWake(t *testing.T) {
	w := &testWaker{t: t, fail: errors.New("exit 3: bad configuration")}
	r, pub := sleepingRouter(t, w)
	for i := range 2 {
		req, _ := http.NewRequest("GET", pub+"/", nil)
		req.Host = host
		resp, _ := fronttest.Send(t, fronttest.Client, req)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("request %d: %d Retry-After %q, want 503 with Retry-After", i, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		if got := w.wakes.Load(); got != int32(i+1) {
			t.Fatalf("after request %d: %d wakes, want %d", i, got, i+1)
		}
	}
	sl, _ := r.Sleeping(apiV1)
	if !sl.Asleep || sl.WakeError == nil || !strings.Contains(sl.WakeError.Error(), "bad configuration") {
		t.Errorf("Sleeping = %+v, want asleep with the wake's error", sl)
	}
	if got := r.InFlight(apiV1); got != 0 {
		t.Errorf("InFlight = %d", got)
	}
}

// TestNoSleepWhileInFlight: a version with a stream open, or with a
// request within idle, is not put to sleep.
func TestNoSleepWhileInFlight(t *testing.T) {
	release := make(chan struct{})
	opened := make(chan struct{})
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		io.WriteString(w, "data: hello\n\n")
		w.(http.Flusher).Flush()
		close(opened)
		<-release
	}))
	r, pub := routeTo(t, addr)
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		req, _ := http.NewRequest("GET", pub+"/events", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	<-opened
	if r.Sleep(apiV1, 0) {
		t.Fatal("Sleep with a stream open: true")
	}
	close(release)
	<-streamDone
	fronttest.WaitFor(t, "the stream's slot back", func() bool { return r.InFlight(apiV1) == 0 })
	if r.Sleep(apiV1, time.Hour) {
		t.Fatal("Sleep within idle of the last request: true")
	}
	if !r.Sleep(apiV1, 0) {
		t.Fatal("Sleep after the stream ended: false")
	}
}

// getAsync sends a GET for host in the background; its result comes on
// the channel.
func getAsync(t *testing.T, url, host string) <-chan heldResult {
	t.Helper()
	held := make(chan heldResult, 1)
	go func() {
		code, _, body := fronttest.Get(t, url, host)
		held <- heldResult{code, body}
	}()
	return held
}

type heldResult struct {
	code int
	body string
}

// assertHeld fails unless nothing came on held for a while.
func assertHeld(t *testing.T, held <-chan heldResult, what string) {
	t.Helper()
	select {
	case res := <-held:
		t.Fatalf("%s: answered while held: %+v", what, res)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestHoldUnhold: a version held (an exclusive handover) has its requests
// held until Unhold, and one held past the bound gets 503 with
// Retry-After.
func TestHoldUnhold(t *testing.T) {
	r, pub := routeTo(t, fronttest.StartBackend(t, "a"))
	if err := r.Hold(apiV1, time.Hour); err != nil {
		t.Fatal(err)
	}
	held := getAsync(t, pub+"/x", host)
	assertHeld(t, held, "held")
	if sl, _ := r.Sleeping(apiV1); !sl.Held || sl.Paused {
		t.Errorf("Sleeping = %+v, want Held only", sl)
	}
	if err := r.Unhold(apiV1); err != nil {
		t.Fatal(err)
	}
	if res := <-held; res.code != 200 || !strings.HasPrefix(res.body, "backend a") {
		t.Errorf("after Unhold: %+v, want 200 from the backend", res)
	}
	if err := r.Hold(apiV1, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", pub+"/y", nil)
	req.Host = host
	resp, _ := fronttest.Send(t, fronttest.Client, req)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("past the bound: %d Retry-After %q, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if err := r.Hold(spec.Key("nope", "000000000000"), time.Second); !errors.Is(err, ErrUnknown) {
		t.Errorf("Hold of an unknown version: %v, want ErrUnknown", err)
	}
}

// TestPauseFollowsTheTable: a pause by hand is the table's: every backend
// of production's instances of a paused service holds its requests — one
// registered later is born paused — and a table without the pause
// releases them; a handover's hold neither lifts a pause nor is lifted by
// the table.
func TestPauseFollowsTheTable(t *testing.T) {
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "v1"))
	paused := Table{Domains: map[string]spec.VersionKey{host: apiV1}, Paused: map[string]time.Duration{apiV1.Service(): time.Hour}}
	mustSwap(t, r, paused)
	held := getAsync(t, pub+"/x", host)
	assertHeld(t, held, "paused")

	// A new version of the paused service, registered and switched to:
	// paused too.
	r.AddBackend(apiV2, fronttest.StartBackend(t, "v2"))
	if sl, _ := r.Sleeping(apiV2); !sl.Paused {
		t.Errorf("a new backend of a paused service: %+v, want Paused", sl)
	}
	paused.Domains[host] = apiV2
	mustSwap(t, r, paused)
	held2 := getAsync(t, pub+"/y", host)
	assertHeld(t, held2, "paused, switched")

	// A handover's hold under the pause: the table's resume leaves it.
	if err := r.Hold(apiV2, time.Hour); err != nil {
		t.Fatal(err)
	}
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV2}})
	if res := <-held; res.code != 200 || !strings.HasPrefix(res.body, "backend v1") {
		t.Errorf("held on v1, resumed: %+v, want v1's 200", res)
	}
	assertHeld(t, held2, "resumed but handed over")
	if err := r.Unhold(apiV2); err != nil {
		t.Fatal(err)
	}
	if res := <-held2; res.code != 200 || !strings.HasPrefix(res.body, "backend v2") {
		t.Errorf("held on v2, released: %+v, want v2's 200", res)
	}
	if sl, _ := r.Sleeping(apiV2); sl.Paused || sl.Held {
		t.Errorf("after the resume and the release: %+v, want neither", sl)
	}
	// A preview's own instance of the same service is not production's.
	preview := spec.InstanceKey(apiV1.Service(), "222222222222", "pr-1")
	r.AddBackend(preview, fronttest.StartBackend(t, "pr"))
	mustSwap(t, r, paused)
	if sl, _ := r.Sleeping(preview); sl.Paused {
		t.Errorf("a preview's instance of a paused service: %+v, want not paused", sl)
	}
}

// TestPausedRequestGoesToTheVersionLiveAtResume: pause, deploy, resume —
// a request held on the old version, which is removed meanwhile, is
// routed again and answered by the version live at the resume, on the
// net/http path and the front end's.
func TestPausedRequestGoesToTheVersionLiveAtResume(t *testing.T) {
	for _, loops := range []int{-1, 0} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			r, _, pub := frontTo(t, fronttest.StartBackend(t, "v1"), front.Options{Loops: loops})
			paused := Table{Domains: map[string]spec.VersionKey{host: apiV1}, Paused: map[string]time.Duration{apiV1.Service(): time.Hour}}
			mustSwap(t, r, paused)
			held := getAsync(t, "http://"+pub+"/x", host)
			assertHeld(t, held, "paused")

			r.AddBackend(apiV2, fronttest.StartBackend(t, "v2"))
			paused.Domains[host] = apiV2
			mustSwap(t, r, paused)
			r.RemoveBackend(apiV1) // drained: nothing was in flight
			assertHeld(t, held, "paused, v1 removed")

			mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV2}})
			if res := <-held; res.code != 200 || !strings.HasPrefix(res.body, "backend v2") {
				t.Errorf("held across the deploy, resumed: %+v, want v2's 200", res)
			}
		})
	}
}

// BenchmarkAcquireRelease is the hot path every request takes: a slot
// through the gate (one compare-and-swap) and back, from all CPUs at once
// on one backend.
func BenchmarkAcquireRelease(b *testing.B) {
	bk := &backend{key: apiV1, idle: make(chan struct{})}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t, ok := bk.Acquire()
			if !ok {
				b.Fatal("gate closed")
			}
			bk.Release(t, &front.Outcome{})
		}
	})
}

// TestAddSleepingBackend: a version registered asleep holds its first
// request, wakes once through the Waker and answers it; registering asleep
// a version that is already registered leaves it as it is.
func TestAddSleepingBackend(t *testing.T) {
	w := &testWaker{t: t}
	r, pub := startRouter(t, Options{Waker: w})
	r.AddSleepingBackend(apiV1)
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	if sl, ok := r.Sleeping(apiV1); !ok || !sl.Asleep {
		t.Fatalf("registered asleep: Sleeping = %+v, %v; want asleep", sl, ok)
	}
	if got := w.wakes.Load(); got != 0 {
		t.Fatalf("wakes before any request = %d, want 0", got)
	}
	req, _ := http.NewRequest("GET", pub+"/first", nil)
	req.Host = host
	resp, err := fronttest.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("/first 0 %x", sha256.Sum256(nil)); resp.StatusCode != 200 || string(body) != want {
		t.Fatalf("first request: %d %q, want 200 %q", resp.StatusCode, body, want)
	}
	if got := w.wakes.Load(); got != 1 {
		t.Errorf("wakes = %d, want 1", got)
	}

	r.AddBackend(apiV2, digestBackend(t))
	r.AddSleepingBackend(apiV2)
	if sl, _ := r.Sleeping(apiV2); sl.Asleep {
		t.Errorf("AddSleepingBackend of a running backend put it to sleep: %+v", sl)
	}
}
