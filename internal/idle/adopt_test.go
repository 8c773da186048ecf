package idle

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"hostel/internal/supervisor"
)

// TestAdoptAsleep: a version registered asleep — backend with its gate
// closed, config given to the Sleeper — has no process, is started by its
// first request, goes back to sleep after its idle, and once unregistered
// has no backend, no sleeper entry and answers nothing.
func TestAdoptAsleep(t *testing.T) {
	w := newWorld(t, 0)
	const oldHost = "old.example.org"
	cfg := supervisor.Config{Service: "old", Version: "0123456789ab", Dir: w.pkg, Exec: []string{w.app},
		HealthPath: "/healthz", ReadyTimeout: 10 * time.Second, StopGrace: 2 * time.Second}
	key := cfg.Key()
	w.r.AddSleepingBackend(key)
	w.s.Adopt(cfg, nil)
	w.mu.Lock()
	w.policies[key] = Policy{Idle: time.Second}
	w.table.Domains[oldHost] = key
	err := w.r.Swap(w.table)
	w.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}

	if _, ok := w.sup.Get(key); ok {
		t.Fatal("a version registered asleep has a process")
	}
	// A Check must not forget it: the router routes it.
	w.s.Check()
	if sl, ok := w.r.Sleeping(key); !ok || !sl.Asleep {
		t.Fatalf("registered asleep: %+v %v, want asleep", sl, ok)
	}

	resp, body := getHost(t, w.pub, oldHost, "/pid")
	if resp.StatusCode != 200 || body == "" {
		t.Fatalf("first request to a version registered asleep: %d %q, want 200", resp.StatusCode, body)
	}
	if _, ok := w.sup.Get(key); !ok {
		t.Fatal("no process after the wake")
	}
	if sl, _ := w.r.Sleeping(key); sl.Asleep || sl.Wakes != 1 {
		t.Errorf("after the wake: %+v", sl)
	}

	// Back to sleep after its idle, as any version.
	w.sleepKey(t, key)

	// Unregistered: the router forgets it, and so does the Sleeper.
	w.r.RemoveBackend(key)
	w.s.Forget(key)
	if _, ok := w.r.Sleeping(key); ok {
		t.Error("backend still registered after RemoveBackend")
	}
	if _, err := w.s.Wake(context.Background(), key); !errors.Is(err, ErrNotAsleep) {
		t.Errorf("Wake after Forget: %v, want ErrNotAsleep", err)
	}
	if resp, _ := getHost(t, w.pub, oldHost, "/pid"); resp.StatusCode == 200 {
		t.Errorf("request after unregistering: %d, want an error", resp.StatusCode)
	}
	if _, ok := w.sup.Get(key); ok {
		t.Error("a process runs after unregistering")
	}
}

// TestAdoptForgottenUnrouted: a version adopted but not routed (the
// router removed it) is forgotten at the next Check, as versions the
// Sleeper put to sleep itself are.
func TestAdoptForgottenUnrouted(t *testing.T) {
	w := newWorld(t, 0)
	cfg := supervisor.Config{Service: "old", Version: "0123456789ab", Dir: w.pkg, Exec: []string{w.app},
		HealthPath: "/healthz", ReadyTimeout: 10 * time.Second, StopGrace: 2 * time.Second}
	w.r.AddSleepingBackend(cfg.Key())
	w.s.Adopt(cfg, nil)
	w.r.RemoveBackend(cfg.Key())
	w.s.Check()
	if _, err := w.s.Wake(context.Background(), cfg.Key()); !errors.Is(err, ErrNotAsleep) {
		t.Errorf("Wake of an unrouted adopted version after Check: %v, want ErrNotAsleep", err)
	}
	if _, ok := w.sup.Get(cfg.Key()); ok {
		t.Error("a process runs")
	}
}

// getHost sends GET path to the router at pub for host.
func getHost(t *testing.T, pub, host, path string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", pub+path, nil)
	req.Host = host
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}
