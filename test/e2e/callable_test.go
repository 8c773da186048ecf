package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// keptStatus is what status --all --json says of one version.
type keptStatus struct {
	Name, Version, State string
	PID                  int
	Kept                 bool
	LastRequest          *time.Time `json:"last_request"`
}

// allStatus returns `hostel status --all --json`'s services, by
// SERVICE-VERSION.
func (e *Env) allStatus() map[string]keptStatus {
	e.t.Helper()
	var st struct{ Services []keptStatus }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--all", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]keptStatus{}
	for _, s := range st.Services {
		out[s.Name+"-"+s.Version] = s
	}
	return out
}

// currentVersions returns the version of each service of the current
// generation: status lists them first, before versions no longer current.
func (e *Env) currentVersions() map[string]string {
	e.t.Helper()
	var st struct{ Services []keptStatus }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range st.Services {
		if _, seen := out[s.Name]; !seen {
			out[s.Name] = s.Version
		}
	}
	return out
}

// running returns the versions (SERVICE-VERSION) that have a process.
func (e *Env) running() map[string]bool {
	e.t.Helper()
	out := map[string]bool{}
	for _, key := range rootProcesses(e.t, e.Root) {
		out[key] = true
	}
	return out
}

// waitNoProcess waits until none of keys has a process, up to limit.
func (e *Env) waitNoProcess(limit time.Duration, keys ...string) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		run := e.running()
		left := []string{}
		for _, k := range keys {
			if run[k] {
				left = append(left, k)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("after %s, %v still run", limit, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// callableSpec is blog (old_versions "callable", needs quotes) and
// quotes, both sleeping after a second idle; greeting shapes quotes'
// version, and so blog's.
func callableSpec(e *Env, greeting string) map[string]any {
	health := map[string]any{"path": "/healthz"}
	return map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"idle": "1s", "health": health, "env": map[string]string{"GREETING": greeting}}),
		"blog": e.App("blog", map[string]any{"idle": "1s", "health": health, "needs": []string{"quotes"},
			"domains": []string{"blog.test"}, "old_versions": "callable"}),
	}}
}

// TestCallableOldVersion: a version of an old_versions "callable" service
// that a deploy replaced answers on its immutable name — itself, through
// the QUOTES_URL it was built with, to the quotes version it was built
// against — sleeps (no process) when nothing asks for it, stays callable
// and asleep across daemon restarts (SIGTERM and SIGKILL), is listed by
// status --all as kept and idle with its last request, and is gone after
// gc drops the last generation holding it: 404, no process, no run record.
// Current versions asleep at a restart stay asleep too.
func TestCallableOldVersion(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(callableSpec(e, "Hello"))
	e.MustRun("deploy", "--no-confirm")
	v1 := e.currentVersions()
	e.WriteSpec(callableSpec(e, "Bonjour"))
	e.MustRun("deploy", "--no-confirm")
	v2 := e.currentVersions()
	blog1, quotes1 := "blog-"+v1["blog"], "quotes-"+v1["quotes"]
	blog2, quotes2 := "blog-"+v2["blog"], "quotes-"+v2["quotes"]
	if blog1 == blog2 || quotes1 == quotes2 {
		t.Fatalf("the second deploy kept the versions: %s %s", blog2, quotes2)
	}
	host := blog1 + ".hostel.internal"
	call := func(when string) {
		t.Helper()
		code, h, body := e.Get(host, "/")
		if code != 200 || h.Get("X-Hostel-Version") != v1["blog"] || !strings.Contains(body, "Hello!") ||
			!strings.Contains(body, "from quotes "+v1["quotes"]) {
			t.Fatalf("%s: GET %s: %d %q, want the first blog answering with the first quotes", when, host, code, body)
		}
	}

	all := []string{blog1, quotes1, blog2, quotes2}
	e.waitNoProcess(30*time.Second, all...)
	call("after the deploy")
	e.waitNoProcess(30*time.Second, blog1, quotes1)

	restarts := []struct {
		name string
		stop func()
	}{{"SIGTERM", e.StopDaemon}, {"SIGKILL", e.killDaemon}}
	for _, r := range restarts {
		r.stop()
		e.StartDaemon()
		if run := e.running(); len(run) != 0 {
			t.Fatalf("after a %s restart, %v were started, want every version still asleep", r.name, run)
		}
		st := e.allStatus()
		for _, k := range []string{blog1, quotes1} {
			if s := st[k]; s.State != "idle" || !s.Kept || s.PID != 0 || s.LastRequest == nil {
				t.Errorf("after a %s restart, status --all of %s: %+v, want kept, idle, with a last request", r.name, k, s)
			}
		}
		for _, k := range []string{blog2, quotes2} {
			if s := st[k]; s.State != "idle" || s.Kept {
				t.Errorf("after a %s restart, status --all of the current %s: %+v, want idle, not kept", r.name, k, s)
			}
		}
		if r.name == "SIGTERM" {
			e.goldenStatusAll()
		}
		call("after a " + r.name + " restart")
		if code, _, body := e.Get("blog.test", "/"); code != 200 || !strings.Contains(body, "Bonjour!") {
			t.Fatalf("after a %s restart, the current blog: %d %q", r.name, code, body)
		}
		e.waitNoProcess(30*time.Second, all...)
	}
	if out := e.MustRun("status", "--all"); !strings.Contains(out, v1["blog"]+" (kept)") {
		t.Errorf("status --all does not mark the kept version:\n%s", out)
	}
	if _, ok := e.allStatus()[blog1]; !ok {
		t.Fatalf("status --all does not list %s", blog1)
	}
	var plain struct{ Services []keptStatus }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &plain); err != nil {
		t.Fatal(err)
	}
	for _, s := range plain.Services {
		if k := s.Name + "-" + s.Version; k == blog1 || k == quotes1 {
			t.Errorf("status without --all lists %s, kept and asleep", k)
		}
	}

	e.MustRun("gc", "--keep", "1")
	if code, _, body := e.Get(host, "/"); code != 404 {
		t.Errorf("after gc: GET %s: %d %q, want 404", host, code, body)
	}
	if run := e.running(); run[blog1] || run[quotes1] {
		t.Errorf("after gc, %v run", run)
	}
	for _, k := range []string{blog1, quotes1} {
		if _, err := os.Stat(filepath.Join(e.Root, "run", k+".json")); err == nil {
			t.Errorf("after gc, %s has a run record", k)
		}
		if _, ok := e.allStatus()[k]; ok {
			t.Errorf("after gc, status --all lists %s", k)
		}
	}
	if code, _, body := e.Get("blog.test", "/"); code != 200 || !strings.Contains(body, "Bonjour!") {
		t.Errorf("after gc, the current blog: %d %q", code, body)
	}
}

// goldenStatusAll compares status --all --json, with the kept versions
// asleep and never woken since the daemon started, with its golden file
// (-update rewrites it).
func (e *Env) goldenStatusAll() {
	e.t.Helper()
	n := &normalizer{paths: map[string]string{e.Root: "<root>", e.Apps: "<apps>"}, versions: map[string]string{}, specs: map[string]string{}}
	got := n.normalize(e.t, e.MustRun("status", "--all", "--json"))
	path := filepath.Join("testdata", "golden", "status-all.json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatalf("%v (go test ./test/e2e -run TestCallableOldVersion -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		e.t.Errorf("hostel status --all --json differs from %s (-update to accept):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestIdleAsleepAcrossRestart: a service with idle that was asleep when
// the daemon stopped (SIGTERM or SIGKILL) is still asleep after it starts
// again — no process — and its next request wakes it.
func TestIdleAsleepAcrossRestart(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(map[string]any{"services": map[string]any{
		"shop": e.App("shop", map[string]any{"idle": "1s", "domains": []string{"shop.test"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	e.waitState(20*time.Second, "idle", "shop")
	for _, stop := range []func(){e.StopDaemon, e.killDaemon} {
		stop()
		e.StartDaemon()
		if run := e.running(); len(run) != 0 {
			t.Fatalf("after a restart, %v run; shop slept", run)
		}
		if s := e.sleepStatus()["shop"]; s.State != "idle" || s.PID != 0 {
			t.Errorf("after a restart: %+v, want idle", s)
		}
		if code, _, _ := e.Get("shop.test", "/"); code != 200 {
			t.Fatalf("after a restart, a request to shop: %d", code)
		}
		if s := e.sleepStatus()["shop"]; s.State != "running" || s.Wakes != 1 {
			t.Errorf("after its request: %+v, want running, woken once", s)
		}
		e.waitState(20*time.Second, "idle", "shop")
	}
}

// TestIdleAsleepAcrossRestartNeedAwake: a service with idle that was
// asleep when the daemon stopped stays asleep after it starts again
// though what it needs does not sleep (and is adopted only during the
// start); its next request wakes it, reaching its need.
func TestIdleAsleepAcrossRestartNeedAwake(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	health := map[string]any{"path": "/healthz"}
	e.WriteSpec(map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"health": health}),
		"blog":   e.App("blog", map[string]any{"idle": "1s", "health": health, "needs": []string{"quotes"}, "domains": []string{"blog.test"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	e.waitState(20*time.Second, "idle", "blog")
	e.StopDaemon()
	e.StartDaemon()
	for key := range e.running() {
		if strings.HasPrefix(key, "blog-") {
			t.Errorf("after a restart, %s runs; it slept", key)
		}
	}
	if s := e.sleepStatus()["blog"]; s.State != "idle" || s.PID != 0 {
		t.Errorf("after a restart: blog %+v, want idle", s)
	}
	if code, _, body := e.Get("blog.test", "/"); code != 200 || !strings.Contains(body, "from quotes") {
		t.Fatalf("after a restart, a request to blog: %d %q", code, body)
	}
}
