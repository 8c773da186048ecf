package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"hostel/internal/nix"
)

// twenty is a spec of 20 services: app00 is needed by app01…app18, and
// app19, the leaf, needs app05; the leaf's title is leaf, and its env
// names storePath when it is set (so its version pins a GC root).
func twenty(e *Env, leaf string, storePath ...string) map[string]any {
	svcs := map[string]any{}
	for i := range 20 {
		name := fmt.Sprintf("app%02d", i)
		extra := map[string]any{"env": map[string]string{"SHOP_TITLE": name}, "domains": []string{name + ".example"}}
		switch {
		case i == 19:
			env := map[string]string{"SHOP_TITLE": leaf}
			for _, p := range storePath {
				env["PINNED"] = p
			}
			extra["env"] = env
			extra["needs"] = []string{"app05"}
		case i > 0:
			extra["needs"] = []string{"app00"}
		}
		svcs[name] = e.App("shop", extra)
	}
	return map[string]any{"services": svcs}
}

// processes returns the pid of every process of the daemon's root (found,
// as the daemon finds leftovers, by the RUNTIME_DIRECTORY under ROOT/run
// in its environment), by that directory's name.
func (e *Env) processes() map[int]string {
	e.t.Helper()
	run := filepath.Join(e.Root, "run") + "/"
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		var pid int
		if _, err := fmt.Sscanf(ent.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(string(b), "\x00") {
			if dir, ok := strings.CutPrefix(kv, "RUNTIME_DIRECTORY="); ok && strings.HasPrefix(dir, run) {
				out[pid] = strings.TrimPrefix(dir, run)
			}
		}
	}
	return out
}

// envStatus returns `hostel status --env env --json`'s services by name.
func (e *Env) envStatus(env string) map[string]ServiceStatus {
	e.t.Helper()
	var st struct{ Services []ServiceStatus }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--env", env, "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]ServiceStatus{}
	for _, s := range st.Services {
		out[s.Name] = s
	}
	return out
}

// TestPreviewOneLeafOfTwenty: a preview of the 20-service spec with its
// leaf changed starts exactly one process; every other service of the
// preview is production's process (same pid); the preview answers on
// SERVICE.ENV.ZONE while production's domains stay; `env rm` leaves no
// process, route, run record, state directory or GC root of it; and bad
// input changes nothing (exit 2).
func TestPreviewOneLeafOfTwenty(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(twenty(e, "before"))
	e.MustRun("deploy", "--no-confirm")
	prod := e.envStatus("production")
	before := e.processes()
	if len(before) != 20 {
		t.Fatalf("%d processes run for production, want 20: %v", len(before), before)
	}

	// The preview's leaf mentions a real store path: its version pins a
	// GC root, which env rm must remove.
	src := filepath.Join(t.TempDir(), "pinned")
	os.WriteFile(src, []byte(t.Name()), 0o644)
	storePath := addToStore(t, src)

	// Bad input: nothing changes, exit 2.
	e.WriteSpec(twenty(e, "after", storePath))
	for _, args := range [][]string{
		{"deploy", "--env", "PR_1", "--no-confirm"},
		{"deploy", "--env", "a-name-far-too-long-for-one", "--no-confirm"},
		{"env", "rm", "production"},
		{"env", "rm", "pr-9"},
		{"env", "rm", "Bad_Name"},
		{"status", "--env", "pr-9"},
		{"logs", "app19", "--env", "pr-9"},
	} {
		if _, errOut, code := e.Run(args...); code != 2 {
			t.Errorf("hostel %s: exit %d, want 2\n%s", strings.Join(args, " "), code, errOut)
		}
	}
	if got := e.processes(); len(got) != 20 {
		t.Fatalf("bad input changed the processes: %v", got)
	}

	// The plan says what the preview shares and starts.
	var p struct {
		Services []struct{ Name, Action string }
	}
	if err := json.Unmarshal([]byte(e.MustRun("plan", "--env", "pr-1", "--json")), &p); err != nil {
		t.Fatal(err)
	}
	for _, c := range p.Services {
		want := "shared"
		if c.Name == "app19" {
			want = "start"
		}
		if c.Action != want {
			t.Errorf("plan --env pr-1: %s %s, want %s", c.Name, c.Action, want)
		}
	}

	e.MustRun("deploy", "--env", "pr-1", "--no-confirm")
	after := e.processes()
	var started []string
	for pid, dir := range after {
		if _, ok := before[pid]; !ok {
			started = append(started, dir)
		}
	}
	if len(after) != 21 || len(started) != 1 || !strings.HasPrefix(started[0], "app19-") || !strings.HasSuffix(started[0], "@pr-1") {
		t.Fatalf("with the preview: %d processes, new ones %v; want 21, exactly the preview's own app19", len(after), started)
	}
	preview := e.envStatus("pr-1")
	for name, s := range preview {
		if len(s.Domains) != 0 {
			// Without previews.domain a preview has no public name, and
			// production's domains never answer for it.
			t.Errorf("pr-1's %s: domains %v, want none", name, s.Domains)
		}
		if name == "app19" {
			if s.PID == prod[name].PID || s.Env != "pr-1" {
				t.Errorf("pr-1's app19: pid %d env %q, want its own process", s.PID, s.Env)
			}
			continue
		}
		if s.PID != prod[name].PID || s.Env != "production" {
			t.Errorf("pr-1's %s: pid %d env %q, want production's pid %d", name, s.PID, s.Env, prod[name].PID)
		}
	}
	if code, _, body := e.Get("app19.pr-1.hostel.internal", "/"); code != 200 || !strings.HasPrefix(body, "after ") {
		t.Errorf("app19.pr-1.hostel.internal: %d %q, want the preview's leaf", code, body)
	}
	if code, _, body := e.Get("app05.pr-1.hostel.internal", "/"); code != 200 || !strings.HasPrefix(body, "app05 ") {
		t.Errorf("app05.pr-1.hostel.internal: %d %q, want production's app05", code, body)
	}
	if _, _, body := e.Get("app19.example", "/"); !strings.HasPrefix(body, "before ") {
		t.Errorf("production's app19.example serves %q after the preview", body)
	}
	var l struct {
		Envs []struct {
			Name    string
			Started []string
			Shared  map[string]string
			URLs    []string
			State   string
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("env", "list", "--json")), &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Envs) != 1 || l.Envs[0].Name != "pr-1" || !slices.Equal(l.Envs[0].Started, []string{"app19"}) ||
		len(l.Envs[0].Shared) != 19 || len(l.Envs[0].URLs) != 20 || l.Envs[0].State != "running" {
		t.Errorf("env list: %+v", l.Envs)
	}
	own := preview["app19"]
	rootDir := filepath.Join(nix.RootsFor(e.Root).Dir, "app19-"+own.Version)
	if _, err := os.Stat(rootDir); err != nil {
		t.Errorf("the preview's leaf pinned no GC root: %v", err)
	}
	stateDir := filepath.Join(e.Root, "state", "app19@pr-1")
	if _, err := os.Stat(stateDir); err != nil {
		t.Errorf("the preview's own state directory: %v", err)
	}

	e.MustRun("env", "rm", "pr-1")
	if got := e.processes(); !maps.Equal(got, before) {
		t.Errorf("after env rm: processes %v, want production's %v", got, before)
	}
	if pidAlive(own.PID) {
		t.Errorf("process: the preview's app19 (pid %d) still runs", own.PID)
	}
	if code, _, _ := e.Get("app19.pr-1.hostel.internal", "/"); code != http.StatusNotFound {
		t.Errorf("route: app19.pr-1.hostel.internal answers %d, want 404", code)
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("state directory: %s: %v, want it gone", stateDir, err)
	}
	runs, _ := filepath.Glob(filepath.Join(e.Root, "run", "*@pr-1*"))
	logs, _ := filepath.Glob(filepath.Join(e.Root, "state", "*@pr-1"))
	if len(runs)+len(logs) != 0 {
		t.Errorf("run records or state left: %v %v", runs, logs)
	}
	if _, err := os.Stat(rootDir); !os.IsNotExist(err) {
		t.Errorf("GC root: %s: %v, want it gone", rootDir, err)
	}
	if out := e.MustRun("env", "list", "--json"); !strings.Contains(out, `"envs": []`) {
		t.Errorf("env list after rm: %s", out)
	}
	if _, errOut, code := e.Run("env", "rm", "pr-1"); code != 2 {
		t.Errorf("env rm of a removed environment: exit %d, want 2\n%s", code, errOut)
	}
	for name, s := range e.envStatus("production") {
		if s.PID != prod[name].PID {
			t.Errorf("production's %s: pid %d, was %d", name, s.PID, prod[name].PID)
		}
	}
}

// TestPreviewExpiry: a preview past its previews.ttl is removed by the
// daemon as env rm removes it — here by the check a daemon makes at its
// start — and env list says when each preview expires.
func TestPreviewExpiry(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	spec := func(ttl, greeting string) map[string]any {
		s := map[string]any{"services": map[string]any{
			"quotes": e.App("quotes", map[string]any{"env": map[string]string{"GREETING": greeting}}),
		}}
		if ttl != "" {
			s["previews"] = map[string]any{"ttl": ttl}
		}
		return s
	}
	e.WriteSpec(spec("", "production"))
	e.MustRun("deploy", "--no-confirm")
	e.WriteSpec(spec("1s", "short"))
	e.MustRun("deploy", "--env", "short", "--no-confirm")
	e.WriteSpec(spec("", "long"))
	e.MustRun("deploy", "--env", "long", "--no-confirm")
	var l struct {
		Envs []struct {
			Name             string
			Created, Expires time.Time
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("env", "list", "--json")), &l); err != nil {
		t.Fatal(err)
	}
	expires := map[string]time.Duration{}
	var short time.Time
	for _, v := range l.Envs {
		expires[v.Name] = v.Expires.Sub(v.Created)
		if v.Name == "short" {
			short = v.Expires
		}
	}
	if expires["short"] != time.Second || expires["long"] != 168*time.Hour {
		t.Fatalf("env list: expiries after creation %v, want short 1s and long the default 168h", expires)
	}
	short19 := e.envStatus("short")["quotes"].PID

	// The ttl is a time of the wall clock: wait until it has passed, then
	// start the daemon again; its first check removes the preview.
	waitUntil(t, "the short preview's ttl", func() bool { return time.Now().After(short) })
	e.StopDaemon()
	e.StartDaemon()
	waitUntil(t, "the expired preview's removal", func() bool {
		_, _, code := e.Run("status", "--env", "short")
		return code == 2
	})
	if processRuns(short19) {
		t.Errorf("the expired preview's process %d still runs", short19)
	}
	if code, _, _ := e.Get("quotes.short.hostel.internal", "/"); code != http.StatusNotFound {
		t.Errorf("the expired preview's route answers %d, want 404", code)
	}
	if code, _, body := e.Get("quotes.long.hostel.internal", "/quote"); code != 200 || !strings.Contains(body, "long") {
		t.Errorf("the preview that did not expire: %d %q", code, body)
	}
}

// processRuns reports whether pid is a process that has not exited: a
// zombie (exited, its parent — after a daemon restart, init — not having
// reaped it yet) does not run.
func processRuns(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command's closing parenthesis.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// killedAt starts the daemon (stopped) with listen as its listener flags
// and failpoint fp armed, runs the command args, which must kill it at fp,
// and waits for it to be gone.
func (e *Env) killedAt(fp string, listen []string, args ...string) {
	e.t.Helper()
	e.DaemonEnv = []string{"HOSTEL_FAILPOINT=" + fp}
	defer func() { e.DaemonEnv = nil }()
	e.StartDaemonArgs(listen...)
	if _, _, code := e.Run(args...); code == 0 {
		e.t.Fatalf("%s went through; the daemon should have died at %s", strings.Join(args, " "), fp)
	}
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		e.t.Fatalf("the daemon did not die at %s", fp)
	}
	e.daemon = nil
}

// TestPreviewRemovalCrash: a daemon killed in env rm, right after the
// preview left the store, leaves its instance and data to the next start,
// which stops the instance and sweeps the state directory and GC root.
func TestPreviewRemovalCrash(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(twenty(e, "before"))
	e.MustRun("deploy", "--no-confirm")
	prod := e.processes()
	src := filepath.Join(t.TempDir(), "pinned")
	os.WriteFile(src, []byte(t.Name()), 0o644)
	e.WriteSpec(twenty(e, "after", addToStore(t, src)))
	e.MustRun("deploy", "--env", "pr-1", "--no-confirm")
	own := e.envStatus("pr-1")["app19"]
	stateDir := filepath.Join(e.Root, "state", "app19@pr-1")
	rootDir := filepath.Join(nix.RootsFor(e.Root).Dir, "app19-"+own.Version)
	for _, p := range []string{stateDir, rootDir} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("before env rm: %v", err)
		}
	}
	const previewUser = "hostel-app19_pr-1" // the preview's own instance runs as its own user
	if _, err := user.Lookup(previewUser); err != nil {
		t.Fatalf("before env rm: %v", err)
	}

	e.StopDaemon()
	e.killedAt("env-rm-after-drop", []string{"--http", "127.0.0.1:0", "--https", ""}, "env", "rm", "pr-1")
	e.StartDaemon()
	waitUntil(t, "the removed preview's instance, state, user and GC root to go", func() bool {
		_, errS := os.Stat(stateDir)
		_, errR := os.Stat(rootDir)
		_, errU := user.Lookup(previewUser)
		return !processRuns(own.PID) && os.IsNotExist(errS) && os.IsNotExist(errR) && errU != nil
	})
	if got := e.processes(); !maps.Equal(got, prod) {
		t.Errorf("processes after the restart: %v, want production's %v", got, prod)
	}
	if _, _, code := e.Run("status", "--env", "pr-1"); code != 2 {
		t.Errorf("status --env pr-1 after the restart: exit %d, want 2 (no such environment)", code)
	}
}

// TestPreviewSleeps: a preview's own instance sleeps after previews.idle
// and its next request on SERVICE.ENV.ZONE wakes it; the production
// processes it shares never sleep for it.
func TestPreviewSleeps(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	spec := func(greeting string) map[string]any {
		health := map[string]any{"path": "/healthz"}
		return map[string]any{
			"previews": map[string]any{"idle": "1s"},
			"services": map[string]any{
				"quotes": e.App("quotes", map[string]any{"health": health}),
				"blog": e.App("blog", map[string]any{"health": health, "needs": []string{"quotes"}, "domains": []string{"blog.test"},
					"env": map[string]string{"GREETING_NOTE": greeting}}),
			},
		}
	}
	e.WriteSpec(spec("production"))
	e.MustRun("deploy", "--no-confirm")
	prod := e.envStatus("production")
	e.WriteSpec(spec("preview"))
	e.MustRun("deploy", "--env", "pr-1", "--no-confirm")
	waitUntil(t, "the preview's blog to sleep", func() bool { return e.envStatus("pr-1")["blog"].State == "idle" })
	if s := e.envStatus("pr-1")["quotes"]; s.State != "running" || s.PID != prod["quotes"].PID {
		t.Errorf("the quotes pr-1 shares: %+v, want production's process %d running", s, prod["quotes"].PID)
	}
	if code, _, body := e.Get("blog.pr-1.hostel.internal", "/"); code != 200 || !strings.Contains(body, "Quote of the day") {
		t.Fatalf("the first request to the sleeping preview: %d %q", code, body)
	}
	if s := e.envStatus("pr-1")["blog"]; s.State != "running" || s.PID == 0 {
		t.Errorf("the preview's blog after a request: %+v, want running", s)
	}
	for name, s := range e.envStatus("production") {
		if s.State != "running" || s.PID != prod[name].PID {
			t.Errorf("production's %s: %+v, want its process %d running", name, s, prod[name].PID)
		}
	}
}
