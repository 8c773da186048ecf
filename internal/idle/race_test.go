package idle

import (
	"bytes"
	"fmt"
	"net/http"
	"runtime"
	"testing"
	"time"

	"hostel/internal/spec"
)

// requestAtSleep is the router as the Sleeper sees it, with a request
// sent to the version the moment the router decided it sleeps: before
// the Sleeper went on from that decision.
type requestAtSleep struct {
	Routes
	atSleep func(key spec.VersionKey)
}

func (r requestAtSleep) Sleep(key spec.VersionKey, idle time.Duration) bool {
	if !r.Routes.Sleep(key, idle) {
		return false
	}
	r.atSleep(key)
	return true
}

// TestRequestAtTheSleepDecisionWakes: a request that finds the gate just
// closed by the decision to sleep, before the Sleeper took note of the
// version asleep, wakes it like any other: 200 from a new process, not
// 503 for a version "not put to sleep".
func TestRequestAtTheSleepDecisionWakes(t *testing.T) {
	w := newWorld(t, time.Second)
	type answer struct {
		code int
		body string
	}
	answered := make(chan answer, 1)
	sent := false
	w.s = New(w.sup, requestAtSleep{Routes: w.r, atSleep: func(key spec.VersionKey) {
		if key != w.key || sent {
			return
		}
		sent = true
		go func() {
			resp, body := w.get(t, "/pid")
			answered <- answer{resp.StatusCode, body}
		}()
		// Until the request is answered, or is held by a wake that
		// waits for the Sleeper to finish putting the version to sleep.
		for !wakeWaitsForSleeper() {
			select {
			case a := <-answered:
				answered <- a
				return
			case <-time.After(time.Millisecond):
			}
		}
	}}, w.s.catalog, t.Logf)
	for deadline := time.Now().Add(15 * time.Second); !sent; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not put to sleep after 15s")
		}
		w.s.Check()
	}
	a := <-answered
	if a.code != http.StatusOK || a.body == fmt.Sprint(w.first) {
		t.Fatalf("request at the sleep decision: %d %q, want 200 from a new process (old pid %d)", a.code, a.body, w.first)
	}
}

// wakeWaitsForSleeper reports whether a goroutine is in Sleeper.Wake,
// blocked on a lock.
func wakeWaitsForSleeper() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("idle.(*Sleeper).Wake(")) && bytes.Contains(g, []byte("sync.(*Mutex).Lock")) {
			return true
		}
	}
	return false
}
