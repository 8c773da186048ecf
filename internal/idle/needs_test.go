package idle

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// marks is a directory every service user may write to, where the test
// app records when it started and when it was about to listen (-mark).
type marks string

func newMarks(t *testing.T) marks {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm")
	if err != nil {
		t.Fatal(err)
	}
	// Services run as their own users.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return marks(dir)
}

// prefix is the -mark argument of service name.
func (m marks) prefix(name string) string { return filepath.Join(string(m), name) }

// at returns the time name recorded for what ("start" or "ready"), and
// whether it did.
func (m marks) at(t *testing.T, name, what string) (time.Time, bool) {
	t.Helper()
	b, err := os.ReadFile(m.prefix(name) + "." + what)
	if errors.Is(err, os.ErrNotExist) {
		return time.Time{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	ns, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		t.Fatalf("%s.%s: %v", name, what, err)
	}
	return time.Unix(0, ns), true
}

// must is at for a mark that must be there.
func (m marks) must(t *testing.T, name, what string) time.Time {
	t.Helper()
	at, ok := m.at(t, name, what)
	if !ok {
		t.Fatalf("%s recorded no %s", name, what)
	}
	return at
}

// clear removes every mark: what follows is the wake's.
func (m marks) clear(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir(string(m))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if err := os.Remove(filepath.Join(string(m), e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

// touch makes file in the marks directory.
func (m marks) touch(t *testing.T, file string) {
	t.Helper()
	// Writable by the service that records it later.
	path := filepath.Join(string(m), file)
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
}

// app is one version of the test app in a needs test.
type app struct {
	name  string
	needs []string // services it needs, each given as NAME_URL
	args  []string
	ready time.Duration // its health timeout; 10s if zero
}

// startApps starts apps in order (needs first), each with its needs'
// endpoints in its environment, each routed at NAME.example.org with an
// endpoint open, each allowed to sleep; it returns their keys by name.
func (w *world) startApps(t *testing.T, apps ...app) map[string]spec.VersionKey {
	t.Helper()
	keys := map[string]spec.VersionKey{}
	urls := map[string]string{}
	for _, a := range apps {
		env := map[string]string{}
		var needs []spec.VersionKey
		for _, n := range a.needs {
			env[strings.ToUpper(n)+"_URL"] = urls[n]
			needs = append(needs, keys[n])
		}
		ready := a.ready
		if ready == 0 {
			ready = 10 * time.Second
		}
		cfg := supervisor.Config{Service: a.name, Version: "0123456789ab", Dir: w.pkg,
			Exec: append([]string{w.app}, a.args...), Env: env,
			HealthPath: "/healthz", ReadyTimeout: ready, StopGrace: 2 * time.Second}
		inst, err := w.sup.Start(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := inst.WaitReady(context.Background()); err != nil {
			t.Fatal(err)
		}
		key := cfg.Key()
		w.r.AddBackend(key, inst.Addr())
		url, err := w.r.OpenEndpoint(key, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		keys[a.name], urls[a.name] = key, url
		w.mu.Lock()
		w.policies[key] = Policy{Idle: time.Second, Needs: needs}
		w.table.Domains[a.name+".example.org"] = key
		err = w.r.Swap(w.table)
		w.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// TestWakeChainFromItsEnd: a→b→c all asleep, each calling the one it
// needs as it starts: a request to a wakes c, then b once c is ready, then
// a once b is ready, and is answered.
func TestWakeChainFromItsEnd(t *testing.T) {
	w := newWorld(t, time.Second)
	m := newMarks(t)
	keys := w.startApps(t,
		// c takes a while to listen: b started beside it would call it
		// before it is ready.
		app{name: "c", args: []string{"-mark", m.prefix("c"), "-slow-start", "300ms"}},
		app{name: "b", needs: []string{"c"}, args: []string{"-mark", m.prefix("b"), "-call-first", "C_URL"}},
		app{name: "a", needs: []string{"b"}, args: []string{"-mark", m.prefix("a"), "-call-first", "B_URL"}},
	)
	for _, n := range []string{"a", "b", "c"} {
		w.sleepKey(t, keys[n])
	}
	m.clear(t)

	if resp, body := getHost(t, w.pub, "a.example.org", "/healthz"); resp.StatusCode != 200 {
		t.Fatalf("request to a sleeping a→b→c: %d %q", resp.StatusCode, body)
	}
	cReady, bStart := m.must(t, "c", "ready"), m.must(t, "b", "start")
	bReady, aStart := m.must(t, "b", "ready"), m.must(t, "a", "start")
	if bStart.Before(cReady) {
		t.Errorf("b started %v before c, which it needs, was ready", cReady.Sub(bStart))
	}
	if aStart.Before(bReady) {
		t.Errorf("a started %v before b, which it needs, was ready", bReady.Sub(aStart))
	}
	for _, n := range []string{"a", "b", "c"} {
		if sl, _ := w.r.Sleeping(keys[n]); sl.Asleep || sl.Wakes != 1 {
			t.Errorf("%s after the wake: %+v, want awake, woken once", n, sl)
		}
	}
}

// TestWakeSiblingsTogether: a needs b and c, which sleep; each waits, as
// it starts, until the other has started. They wake only if they are
// started together, and then a.
func TestWakeSiblingsTogether(t *testing.T) {
	w := newWorld(t, time.Second)
	m := newMarks(t)
	// Present for their first start, one after the other.
	m.touch(t, "b.start")
	m.touch(t, "c.start")
	keys := w.startApps(t,
		app{name: "b", args: []string{"-mark", m.prefix("b"), "-await", m.prefix("c") + ".start"}, ready: 5 * time.Second},
		app{name: "c", args: []string{"-mark", m.prefix("c"), "-await", m.prefix("b") + ".start"}, ready: 5 * time.Second},
		app{name: "a", needs: []string{"b", "c"}, args: []string{"-mark", m.prefix("a")}},
	)
	for _, n := range []string{"a", "b", "c"} {
		w.sleepKey(t, keys[n])
	}
	m.clear(t)

	if resp, body := getHost(t, w.pub, "a.example.org", "/healthz"); resp.StatusCode != 200 {
		t.Fatalf("request to a sleeping a that needs b and c: %d %q", resp.StatusCode, body)
	}
	aStart := m.must(t, "a", "start")
	for _, n := range []string{"b", "c"} {
		if ready := m.must(t, n, "ready"); aStart.Before(ready) {
			t.Errorf("a started %v before %s, which it needs, was ready", ready.Sub(aStart), n)
		}
	}
}

// TestNeedThatFailsFailsTheWake: a needs b, and b cannot become ready: a
// request to a is answered 503 with Retry-After, a is never started,
// nothing of either is left running, and a's status says which need did
// not wake.
func TestNeedThatFailsFailsTheWake(t *testing.T) {
	w := newWorld(t, time.Second)
	m := newMarks(t)
	m.touch(t, "ok")
	keys := w.startApps(t,
		app{name: "b", args: []string{"-await", filepath.Join(string(m), "ok")}, ready: 2 * time.Second},
		app{name: "a", needs: []string{"b"}, args: []string{"-mark", m.prefix("a")}},
	)
	for _, n := range []string{"a", "b"} {
		w.sleepKey(t, keys[n])
	}
	m.clear(t) // b now waits for "ok" past its health timeout

	resp, _ := getHost(t, w.pub, "a.example.org", "/healthz")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("wake of a whose need fails: %d Retry-After %q, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if _, started := m.at(t, "a", "start"); started {
		t.Error("a was started though b, which it needs, did not wake")
	}
	for _, n := range []string{"a", "b"} {
		if st, ok := w.sup.Status(keys[n]); ok {
			t.Errorf("%s left after the failed wake: %+v", n, st)
		}
	}
	sl, _ := w.r.Sleeping(keys["a"])
	if !sl.Asleep || !errors.Is(sl.WakeError, ErrNeedNotAwake) || !strings.Contains(sl.WakeError.Error(), string(keys["b"])) {
		t.Errorf("a after the failed wake: %+v, want asleep with an error that names %s", sl, keys["b"])
	}
	if sl, _ := w.r.Sleeping(keys["b"]); !sl.Asleep || !errors.Is(sl.WakeError, supervisor.ErrNotReady) {
		t.Errorf("b after its failed wake: %+v, want asleep, not ready in time", sl)
	}
}
