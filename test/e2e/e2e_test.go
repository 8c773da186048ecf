package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func monoliths(e *Env, greeting string) map[string]any {
	return map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"env": map[string]string{"GREETING": greeting}, "health": map[string]any{"path": "/healthz"}}),
		"blog":   e.App("blog", map[string]any{"needs": []string{"quotes"}, "domains": []string{"blog.example"}, "health": map[string]any{"path": "/healthz"}}),
		"shop":   e.App("shop", map[string]any{"domains": []string{"shop.example"}, "redirects": []string{"www.shop.example"}, "stop_grace": "3s"}),
		"wiki":   e.App("wiki", map[string]any{"domains": []string{"wiki.example"}}),
	}}
}

// TestDeployStory is the user's walkthrough: deploy, route by host, change
// one service, see exactly it and its dependents replaced, roll back, and
// fail to deploy a bad spec without changing anything.
func TestDeployStory(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(monoliths(e, "Hello"))

	plan := e.MustRun("plan")
	for _, want := range []string{"add  blog", "add  quotes", "add  shop", "add  wiki"} {
		if !strings.Contains(plan, want) {
			t.Errorf("first plan lacks %q:\n%s", want, plan)
		}
	}
	e.MustRun("deploy", "--no-confirm")
	gen1, st1 := e.Status()
	if gen1 != 1 || len(st1) != 4 {
		t.Fatalf("after first deploy: generation %d, services %v", gen1, st1)
	}
	for name, s := range st1 {
		if s.State != "running" || !s.Ready || s.PID == 0 {
			t.Errorf("%s: %+v, want running and ready", name, s)
		}
	}

	t.Run("routing", func(t *testing.T) {
		if code, _, body := e.Get("shop.example", "/"); code != 200 || !strings.Contains(body, "The Shop") {
			t.Errorf("shop: %d %q", code, body)
		}
		if code, _, body := e.Get("SHOP.example:8080", "/"); code != 200 || !strings.Contains(body, "The Shop") {
			t.Errorf("shop with port and capitals: %d %q", code, body)
		}
		code, h, _ := e.Get("www.shop.example", "/cart?x=1")
		if code != 301 || h.Get("Location") != "http://shop.example/cart?x=1" {
			t.Errorf("www redirect: %d Location %q", code, h.Get("Location"))
		}
		if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hello! Quote of the day") || !strings.Contains(body, "from quotes "+st1["quotes"].Version) {
			t.Errorf("blog through quotes: %d %q", code, body)
		}
		if code, _, body := e.Get("nobody.example", "/"); code != 404 || strings.Contains(body, "Shop") || strings.Contains(body, "blog") {
			t.Errorf("unknown host: %d %q", code, body)
		}
		// The immutable name reaches exactly that version.
		if code, _, body := e.Get("quotes-"+st1["quotes"].Version+".hostel.internal", "/quote"); code != 200 || !strings.Contains(body, st1["quotes"].Version) {
			t.Errorf("immutable name: %d %q", code, body)
		}
		// The wiki's state survives in STATE_DIRECTORY.
		if err := put(e, "wiki.example", "/home", "hello wiki"); err != nil {
			t.Fatal(err)
		}
		if code, _, body := e.Get("wiki.example", "/home"); code != 200 || body != "hello wiki" {
			t.Errorf("wiki page: %d %q", code, body)
		}
	})

	// Change quotes' env: quotes and blog (which needs it) update; shop and wiki keep their PIDs.
	e.WriteSpec(monoliths(e, "Howdy"))
	var p struct {
		Services []struct {
			Name, Action, From, To string
			Reasons                []string
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("plan", "--json")), &p); err != nil {
		t.Fatal(err)
	}
	actions := map[string]string{}
	reasons := map[string]string{}
	for _, c := range p.Services {
		actions[c.Name] = c.Action
		reasons[c.Name] = strings.Join(c.Reasons, "; ")
	}
	if actions["quotes"] != "update" || actions["blog"] != "update" || actions["shop"] != "keep" || actions["wiki"] != "keep" {
		t.Fatalf("plan actions = %v", actions)
	}
	if reasons["quotes"] != "env.GREETING changed" || !strings.HasPrefix(reasons["blog"], "needs quotes: "+st1["quotes"].Version+"→") {
		t.Errorf("plan reasons = %v", reasons)
	}
	e.MustRun("deploy", "--no-confirm")
	gen2, st2 := e.Status()
	if gen2 != 2 {
		t.Fatalf("generation %d after second deploy", gen2)
	}
	for _, name := range []string{"shop", "wiki"} {
		if st2[name].PID != st1[name].PID || st2[name].Version != st1[name].Version {
			t.Errorf("%s was restarted: %+v → %+v", name, st1[name], st2[name])
		}
	}
	for _, name := range []string{"quotes", "blog"} {
		if st2[name].PID == st1[name].PID || st2[name].Version == st1[name].Version {
			t.Errorf("%s was not replaced: %+v → %+v", name, st1[name], st2[name])
		}
		if pidAlive(st1[name].PID) {
			t.Errorf("old %s (pid %d) still runs", name, st1[name].PID)
		}
	}
	if _, _, body := e.Get("blog.example", "/"); !strings.Contains(body, "Howdy!") {
		t.Errorf("blog after update: %q", body)
	}
	if code, _, _ := e.Get("quotes-"+st1["quotes"].Version+".hostel.internal", "/quote"); code != 404 {
		t.Errorf("stopped version still answers its immutable name: %d", code)
	}

	t.Run("bad spec changes nothing", func(t *testing.T) {
		cases := badSpecs(t, e.Dir)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if err := os.WriteFile(filepath.Join(e.Dir, "hostel.json"), []byte(c.spec), 0o644); err != nil {
					t.Fatal(err)
				}
				for _, args := range [][]string{{"plan"}, {"deploy", "--no-confirm"}} {
					cmd := args[0]
					_, stderr, code := e.Run(args...)
					if code != 2 {
						t.Errorf("%s: exit %d, want 2 (stderr %q)", cmd, code, stderr)
					}
					// One line, in the spec's words, naming file, service and field.
					if stderr != c.want+"\n" {
						t.Errorf("%s: stderr %q, want the one line %q", cmd, stderr, c.want)
					}
				}
				gen, st := e.Status()
				if gen != gen2 || st["quotes"].PID != st2["quotes"].PID || st["shop"].PID != st2["shop"].PID {
					t.Errorf("a bad spec changed something: generation %d, %v", gen, st)
				}
			})
		}
	})

	// Roll back to generation 1: the old quotes and blog versions return.
	e.MustRun("rollback")
	gen3, st3 := e.Status()
	if gen3 != 1 || st3["quotes"].Version != st1["quotes"].Version || st3["blog"].Version != st1["blog"].Version {
		t.Fatalf("after rollback: generation %d, %v", gen3, st3)
	}
	if st3["shop"].PID != st1["shop"].PID {
		t.Errorf("rollback restarted shop")
	}
	if _, _, body := e.Get("blog.example", "/"); !strings.Contains(body, "Hello!") {
		t.Errorf("blog after rollback: %q", body)
	}
	e.MustRun("rollback", "--to", "2")
	if gen, _ := e.Status(); gen != 2 {
		t.Fatalf("rollback --to 2: generation %d", gen)
	}

	t.Run("generations and gc", func(t *testing.T) {
		var gs struct {
			Current     uint64
			Generations []struct {
				Number   uint64
				Current  bool
				Versions map[string]string
			}
		}
		json.Unmarshal([]byte(e.MustRun("generations", "--json")), &gs)
		if gs.Current != 2 || len(gs.Generations) != 2 || gs.Generations[0].Versions["quotes"] != st1["quotes"].Version {
			t.Fatalf("generations: %+v", gs)
		}
		out := e.MustRun("gc", "--keep", "1")
		if !strings.Contains(out, "removed 1") {
			t.Errorf("gc: %q", out)
		}
		json.Unmarshal([]byte(e.MustRun("generations", "--json")), &gs)
		if len(gs.Generations) != 1 || gs.Generations[0].Number != 2 {
			t.Errorf("after gc: %+v", gs)
		}
		if _, _, code := e.Run("rollback", "--to", "1"); code != 2 {
			t.Errorf("rollback to a collected generation: exit %d, want 2", code)
		}
	})

	t.Run("logs and restart", func(t *testing.T) {
		logs := e.MustRun("logs", "shop")
		if !strings.Contains(logs, "shop "+st2["shop"].Version+" listening") {
			t.Errorf("logs: %q", logs)
		}
		// logs -f prints what the service writes after it started following.
		follow := exec.Command(e.Bin, "--root", e.Root, "logs", "shop", "-f")
		out := lockedWriter{&sync.Mutex{}, &bytes.Buffer{}}
		follow.Stdout = out
		if err := follow.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { follow.Process.Kill(); follow.Wait() }()
		line := "shop " + st2["shop"].Version + " listening"
		count := func() int {
			out.mu.Lock()
			defer out.mu.Unlock()
			return strings.Count(out.b.String(), line)
		}
		waitUntil(t, "logs -f to print the log so far", func() bool { return count() >= 1 })
		before := st2["shop"].PID
		e.MustRun("restart", "shop")
		waitUntil(t, "logs -f to print the restarted process's first line", func() bool { return count() >= 2 })
		_, st := e.Status()
		if st["shop"].PID == before || st["shop"].Version != st2["shop"].Version || !st["shop"].Ready {
			t.Errorf("restart: %+v (pid before %d)", st["shop"], before)
		}
		if code, _, _ := e.Get("shop.example", "/"); code != 200 {
			t.Errorf("shop after restart: %d", code)
		}
	})
}

// TestOneChangeOfTwenty: a redeploy of 20 services where one changed
// restarts exactly one process.
func TestOneChangeOfTwenty(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	mk := func(changed string) map[string]any {
		svcs := map[string]any{}
		for i := range 20 {
			name := fmt.Sprintf("app%02d", i)
			title := name
			if name == "app07" {
				title = changed
			}
			svcs[name] = e.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": title}, "domains": []string{name + ".example"}})
		}
		return map[string]any{"services": svcs}
	}
	e.WriteSpec(mk("before"))
	e.MustRun("deploy", "--no-confirm")
	_, before := e.Status()
	e.WriteSpec(mk("after"))
	t0 := time.Now()
	e.MustRun("deploy", "--no-confirm")
	t.Logf("redeploy of 20 with one change took %s", time.Since(t0))
	_, after := e.Status()
	var changed []string
	for name, s := range after {
		if s.PID != before[name].PID {
			changed = append(changed, name)
		}
	}
	if len(changed) != 1 || changed[0] != "app07" {
		t.Fatalf("restarted %v, want exactly [app07]", changed)
	}
	if _, _, body := e.Get("app07.example", "/"); !strings.HasPrefix(body, "after ") {
		t.Errorf("app07 serves %q", body)
	}
	// A no-op deploy restarts nothing and makes no generation.
	out := e.MustRun("deploy", "--no-confirm")
	if !strings.Contains(out, "nothing changed") {
		t.Errorf("no-op deploy said %q", out)
	}
	if gen, _ := e.Status(); gen != 2 {
		t.Errorf("no-op deploy made generation %d", gen)
	}
}

// TestFailedDeployChangesNothing: a new version that never becomes ready
// fails the deploy before the switch; the old version keeps serving.
func TestFailedDeployChangesNothing(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(map[string]any{"services": map[string]any{
		"shop": e.App("shop", map[string]any{"domains": []string{"shop.example"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	gen, st := e.Status()
	bad := map[string]any{"services": map[string]any{
		"shop": map[string]any{"exec": []string{"/bin/sleep", "60"}, "domains": []string{"shop.example"}, "health": map[string]any{"path": "/", "timeout": "2s"}},
	}}
	e.WriteSpec(bad)
	_, stderr, code := e.Run("deploy", "--no-confirm")
	if code != 1 || !strings.Contains(stderr, "not ready") {
		t.Fatalf("deploy of a never-ready version: exit %d, stderr %q", code, stderr)
	}
	gen2, st2 := e.Status()
	if gen2 != gen || st2["shop"].PID != st["shop"].PID {
		t.Fatalf("failed deploy changed things: gen %d→%d, %+v → %+v", gen, gen2, st["shop"], st2["shop"])
	}
	if code, _, _ := e.Get("shop.example", "/"); code != 200 {
		t.Errorf("shop after failed deploy: %d", code)
	}
}

// TestRestartDaemon: the current generation comes back when the daemon starts again.
func TestRestartDaemon(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(monoliths(e, "Hi"))
	e.MustRun("deploy", "--no-confirm")
	e.StopDaemon()
	e.StartDaemon()
	gen, st := e.Status()
	if gen != 1 || st["blog"].State != "running" {
		t.Fatalf("after daemon restart: generation %d, %v", gen, st)
	}
	if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hi!") {
		t.Errorf("blog after daemon restart: %d %q", code, body)
	}
}

// waitUntil polls cond for up to 15 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func put(e *Env, host, path, body string) error {
	req, _ := newRequest("PUT", "http://"+e.HTTP+path, body)
	req.Host = host
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("PUT %s%s: %s", host, path, resp.Status)
	}
	return nil
}

// badSpec is a spec that must be refused with exit 2, and the first line of
// the error.
type badSpec struct{ name, spec, want string }

// badSpecs returns the corpus of bad specs kept beside the decoder
// (internal/spec) and the program check (internal/source), plus the ones
// too large to keep as files. The program corpus expects a package ./pkg
// with an executable bin/app and a plain file bin/data; they are made in dir.
func badSpecs(t *testing.T, dir string) []badSpec {
	t.Helper()
	for path, mode := range map[string]os.FileMode{"pkg/bin/app": 0o755, "pkg/bin/data": 0o644} {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	var out []badSpec
	for _, corpus := range []string{"../../internal/spec/testdata/bad", "../../internal/source/testdata/bad"} {
		files, err := filepath.Glob(filepath.Join(corpus, "*.txt"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no bad specs in %s: %v", corpus, err)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			in, want, ok := strings.Cut(string(data), "\n----\n")
			if !ok {
				t.Fatalf("%s: no ---- line", f)
			}
			want = strings.ReplaceAll(strings.TrimSuffix(want, "\n"), "$DIR", dir)
			out = append(out, badSpec{strings.TrimSuffix(filepath.Base(f), ".txt"), in, want})
		}
	}
	return append(out, badSpec{"10 MB env value",
		`{"services":{"a":{"exec":["/bin/true"],"env":{"BIG":"` + strings.Repeat("x", 10<<20) + `"}}}}`,
		`hostel.json: service "a": env.BIG: is 10485764 bytes, more than the 131071 a variable may have`})
}
