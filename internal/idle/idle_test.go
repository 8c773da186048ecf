package idle

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
	"hostel/internal/supervisor/supervisortest"
)

// appDir holds the supervisor's test app, built once for the package.
var appDir string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := supervisortest.BuildApp("hostel-idle-app-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	appDir = dir
	return m.Run()
}

const host = "app.example.org"

// world is a real supervisor and router with versions of the test app
// running and routed, and a Sleeper over them.
type world struct {
	sup      *supervisor.Supervisor
	r        *router.Router
	s        *Sleeper
	key      spec.VersionKey // the first version started
	pub      string          // the router's public URL
	app      string          // the app's binary
	pkg      string
	first    int // the first version's first pid
	mu       sync.Mutex
	policies map[spec.VersionKey]Policy
	table    router.Table
}

// newWorld starts version "app" of the test app with idle, routed at host.
func newWorld(t *testing.T, idle time.Duration) *world {
	t.Helper()
	root, err := os.MkdirTemp("", "hi")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(root, 0o755)
	w := &world{policies: map[spec.VersionKey]Policy{}, table: router.Table{Domains: map[string]spec.VersionKey{}}}
	// The binary is copied where the test may break it.
	w.pkg = filepath.Join(root, "pkg")
	os.MkdirAll(w.pkg, 0o755)
	w.app = filepath.Join(w.pkg, "app")
	copyFile(t, filepath.Join(appDir, "app"), w.app)
	w.sup = supervisor.New(supervisor.Options{Root: root, Logf: t.Logf, RunAsUsers: os.Geteuid() == 0})
	w.r = router.New(router.Options{Logf: t.Logf, Waker: wakerOf{w}})
	w.s = New(w.sup, w.r, func() (map[spec.VersionKey]Policy, bool) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return maps.Clone(w.policies), true
	}, t.Logf)
	srv := httptest.NewServer(w.r)
	w.pub = srv.URL
	t.Cleanup(func() {
		srv.Close()
		w.r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		w.sup.StopAll(ctx)
		os.RemoveAll(root)
	})
	w.key = w.start(t, "app", host, Policy{Idle: idle})
	inst, _ := w.sup.Get(w.key)
	w.first = inst.Status().PID
	return w
}

// start runs a version of service name, routed at domain, that may sleep
// as p says.
func (w *world) start(t *testing.T, name, domain string, p Policy) spec.VersionKey {
	t.Helper()
	key := spec.Key(name, "0123456789ab")
	inst, err := w.sup.Start(supervisor.Config{Service: name, Version: "0123456789ab", Dir: w.pkg, Exec: []string{w.app},
		HealthPath: "/healthz", ReadyTimeout: 10 * time.Second, StopGrace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.r.AddBackend(key, inst.Addr())
	w.mu.Lock()
	defer w.mu.Unlock()
	w.policies[key] = p
	w.table.Domains[domain] = key
	if err := w.r.Swap(w.table); err != nil {
		t.Fatal(err)
	}
	return key
}

// wakerOf breaks the cycle between the router (made first) and the Sleeper.
type wakerOf struct{ w *world }

func (x wakerOf) Wake(ctx context.Context, key spec.VersionKey) (string, error) {
	return x.w.s.Wake(ctx, key)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(to) // a running binary cannot be written over
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func (w *world) get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	return getHost(t, w.pub, host, path)
}

// sleepNow runs Check until the first version is asleep, probing its
// health meanwhile as the daemon does: health checks are not requests.
func (w *world) sleepNow(t *testing.T) { t.Helper(); w.sleepKey(t, w.key) }

func (w *world) sleepKey(t *testing.T, key spec.VersionKey) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if inst, ok := w.sup.Get(key); ok {
			inst.Healthy(context.Background())
		}
		w.s.Check()
		if sl, _ := w.r.Sleeping(key); sl.Asleep {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not asleep after 15s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Its process ends (SIGTERM, stop grace).
	for deadline := time.Now().Add(15 * time.Second); ; {
		if _, ok := w.sup.Get(key); !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("process still known 15s after the sleep")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSleepAndWake: a version with no request for idle, health-checked
// all along, is stopped; the next request starts it again from the same
// config and is answered by the new process.
func TestSleepAndWake(t *testing.T) {
	w := newWorld(t, time.Second)
	w.sleepNow(t)
	// Forgotten at once, the process ends within its stop grace.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", w.first)); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs 10s after the version went to sleep", w.first)
		}
	}
	resp, body := w.get(t, "/pid")
	if resp.StatusCode != 200 || body == fmt.Sprint(w.first) || body == "" {
		t.Fatalf("first request after sleep: %d %q, want 200 from a new process (old pid %d)", resp.StatusCode, body, w.first)
	}
	sl, _ := w.r.Sleeping(w.key)
	if sl.Asleep || sl.Wakes != 1 {
		t.Errorf("after the wake: %+v", sl)
	}
}

// TestFailedWakeLeavesNothing: a version that cannot start again answers
// its held request 503 with Retry-After, leaves no process or instance
// behind, reports why, and the next request after the cause is gone
// wakes it.
func TestFailedWakeLeavesNothing(t *testing.T) {
	w := newWorld(t, time.Second)
	w.sleepNow(t)
	good, err := os.ReadFile(w.app)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(w.app)
	if err := os.WriteFile(w.app, []byte("#!/bin/sh\necho broken config >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	resp, _ := w.get(t, "/pid")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("wake of a broken version: %d Retry-After %q, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if _, ok := w.sup.Get(w.key); ok {
		t.Errorf("the supervisor still knows the version after its failed wake")
	}
	if l := w.sup.List(); len(l) != 0 {
		t.Errorf("instances left after the failed wake: %+v", l)
	}
	sl, _ := w.r.Sleeping(w.key)
	if !sl.Asleep || sl.WakeError == nil {
		t.Errorf("after the failed wake: %+v, want asleep with its error", sl)
	}
	os.Remove(w.app)
	if err := os.WriteFile(w.app, good, 0o755); err != nil {
		t.Fatal(err)
	}
	if resp, body := w.get(t, "/healthz"); resp.StatusCode != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("next request once the cause is gone: %d %q", resp.StatusCode, body)
	}
}

// TestWakeWakesNeeds: the first request to a sleeping version wakes the
// sleeping version it needs too, with no request to that one.
func TestWakeWakesNeeds(t *testing.T) {
	w := newWorld(t, time.Second)
	dep := w.start(t, "dep", "dep.example.org", Policy{Idle: time.Second})
	w.mu.Lock()
	w.policies[w.key] = Policy{Idle: time.Second, Needs: []spec.VersionKey{dep}}
	w.mu.Unlock()
	w.sleepKey(t, dep)
	w.sleepNow(t)
	if resp, _ := w.get(t, "/healthz"); resp.StatusCode != 200 {
		t.Fatalf("request to the dependent: %d", resp.StatusCode)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if sl, _ := w.r.Sleeping(dep); !sl.Asleep && sl.Wakes == 1 {
			break
		}
		if time.Now().After(deadline) {
			sl, _ := w.r.Sleeping(dep)
			t.Fatalf("the needed version was not woken with its dependent: %+v", sl)
		}
	}
	if _, ok := w.sup.Get(dep); !ok {
		t.Error("the needed version has no process after its wake")
	}
}
