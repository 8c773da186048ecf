package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMoveToEtcd: a machine deployed on bbolt restarts on an etcd member
// of its own (--etcd-embed): its history moves over exactly (hostel
// generations prints the same), its services are adopted (same pids),
// deploys go on from the moved numbers; the bbolt file is kept aside,
// and a daemon started on bbolt again refuses, saying where the state
// went.
func TestMoveToEtcd(t *testing.T) {
	e := NewEnv(t)
	e.Store = "bbolt" // then moved
	e.StartDaemon()
	e.WriteSpec(monoliths(e, "Hi"))
	e.MustRun("deploy", "--no-confirm")
	e.WriteSpec(monoliths(e, "Hello"))
	e.MustRun("deploy", "--no-confirm")
	e.MustRun("rollback") // generation 1 current, 2 kept
	gens := e.MustRun("generations", "--json")
	gen, before := e.Status()
	if gen != 1 {
		t.Fatalf("generation %d current after the rollback, want 1", gen)
	}
	e.StopDaemon()

	embed := []string{"--http", "127.0.0.1:0", "--https", "", "--etcd-embed"}
	e.StartDaemonArgs(embed...)
	if got := e.MustRun("generations", "--json"); got != gens {
		t.Errorf("generations on etcd:\n%s\non bbolt:\n%s", got, gens)
	}
	gen, after := e.Status()
	if gen != 1 {
		t.Errorf("generation %d current on etcd, want 1", gen)
	}
	for name, s := range before {
		if a := after[name]; a.PID != s.PID || a.State != "running" {
			t.Errorf("%s on etcd: %+v, want it adopted (pid %d)", name, a, s.PID)
		}
	}
	if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hi!") {
		t.Errorf("blog on etcd: %d %q", code, body)
	}
	if !strings.Contains(e.DaemonLog(), "moved 2 generations") {
		t.Errorf("the daemon did not say what it moved:\n%s", e.DaemonLog())
	}
	if _, err := os.Stat(filepath.Join(e.Root, "state.db")); err == nil {
		t.Error("state.db is still there after the move")
	}
	if fi, err := os.Stat(filepath.Join(e.Root, "etcd")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("ROOT/etcd: %v, %v; want a 0700 directory", fi, err)
	}
	e.WriteSpec(monoliths(e, "Hey"))
	e.MustRun("deploy", "--no-confirm")
	if gen, _ := e.Status(); gen != 3 {
		t.Errorf("first deploy on etcd made generation %d, want 3", gen)
	}
	e.StopDaemon()

	// bbolt again: refused, nothing started.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, e.Bin, "serve", "--root", e.Root, "--http", "127.0.0.1:0", "--https", "").CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "moved to etcd") {
		t.Errorf("serve on bbolt after the move: exit %d (%v)\n%s\nwant exit 1, saying the state moved to etcd", code, err, out)
	}

	e.StartDaemonArgs(embed...)
	if gen, st := e.Status(); gen != 3 || st["blog"].State != "running" {
		t.Errorf("after a restart on etcd: generation %d, %+v", gen, st["blog"])
	}
	if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hey!") {
		t.Errorf("blog after a restart on etcd: %d %q", code, body)
	}
}

// exitCode is the exit code of a command that ran (-1 if it did not).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// startEtcd runs Debian's etcd on free loopback ports until the test
// ends, and returns its client URL.
func startEtcd(t *testing.T) string { return startEtcdProc(t).url }

// etcdProc is one etcd of Debian's, which a test may kill and start again
// on its data.
type etcdProc struct {
	t    *testing.T
	url  string
	args []string
	cmd  *exec.Cmd
	log  bytes.Buffer
}

func startEtcdProc(t *testing.T) *etcdProc {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		if os.Getenv("HOSTEL_REQUIRE_ETCD") != "" {
			t.Fatal("etcd is not installed (apt-get install etcd-server)")
		}
		t.Skip("etcd is not installed (apt-get install etcd-server)")
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	p := &etcdProc{t: t, url: client, args: []string{"--name", "e2e", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "e2e=" + peer}}
	p.start()
	t.Cleanup(p.kill)
	return p
}

// start starts etcd (again, on its data) and waits until it answers.
func (p *etcdProc) start() {
	p.t.Helper()
	p.cmd = exec.Command("etcd", p.args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(p.url + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("etcd does not answer at %s", p.url)
		}
	}
}

// kill stops etcd with SIGKILL.
func (p *etcdProc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// TestServeOnEtcd: the daemon keeps its state in an etcd it is given
// (--etcd URL, Debian's etcd here) and finds it again after a restart;
// another machine's bbolt state is not moved into an etcd that holds a
// deployment: that daemon refuses to start.
func TestServeOnEtcd(t *testing.T) {
	url := startEtcd(t)
	args := []string{"--http", "127.0.0.1:0", "--https", "", "--etcd", url}
	e := NewEnv(t)
	e.StartDaemonArgs(args...)
	e.WriteSpec(monoliths(e, "Hi"))
	e.MustRun("deploy", "--no-confirm")
	e.StopDaemon()
	if _, err := os.Stat(filepath.Join(e.Root, "state.db")); err == nil {
		t.Error("a daemon on --etcd made ROOT/state.db")
	}
	e.StartDaemonArgs(args...)
	if gen, st := e.Status(); gen != 1 || st["blog"].State != "running" {
		t.Errorf("after a restart on --etcd: generation %d, %+v", gen, st["blog"])
	}
	e.Shutdown()

	other := NewEnv(t)
	other.Store = "bbolt"
	other.StartDaemon()
	other.WriteSpec(monoliths(other, "Hello"))
	other.MustRun("deploy", "--no-confirm")
	other.Shutdown()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, other.Bin, append([]string{"serve", "--root", other.Root}, args...)...).CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "etcd already holds a deployment") {
		t.Errorf("serve --etcd beside another deployment's state.db: exit %d\n%s\nwant exit 1, refused", code, out)
	}
	if _, err := os.Stat(filepath.Join(other.Root, "state.db")); err != nil {
		t.Errorf("the refused start moved state.db: %v", err)
	}
}

// TestKilledOnEtcdKeepsServices: a daemon with its own etcd member
// (--etcd-embed) killed with SIGKILL, twice in a row, leaves every service
// running; each next start adopts them (same pids) and routes them, and
// takes the engine over at once: the lease its killed predecessor held in
// the store — which etcd keeps, renewed for a whole TTL when the member
// starts again — is revoked rather than waited out (the daemon says so;
// the start's time against the TTL, daemon.NodeTTL, is logged: a bound
// on it would be a timed assertion). A deploy then goes through.
func TestKilledOnEtcdKeepsServices(t *testing.T) {
	const nodeTTL = 6 * time.Second // daemon.NodeTTL
	e := NewEnv(t)
	e.Store = "etcd"
	e.StartDaemon()
	e.WriteSpec(monoliths(e, "Hi"))
	e.MustRun("deploy", "--no-confirm")
	_, before := e.Status()
	for round := 1; round <= 2; round++ {
		e.stopDaemonWith(syscall.SIGKILL)
		for name, s := range before {
			if !processRuns(s.PID) {
				t.Fatalf("%s (pid %d) is gone with the killed daemon", name, s.PID)
			}
		}
		t0 := time.Now()
		e.StartDaemon()
		took := time.Since(t0)
		t.Logf("start %d after SIGKILL: %s (the lease's TTL: %s)", round, took.Round(time.Millisecond), nodeTTL)
		if !strings.Contains(e.DaemonLog(), "ended the lease its previous daemon left") {
			t.Errorf("start %d after SIGKILL: the daemon does not say it ended the killed one's lease: it would wait out its TTL", round)
		}
		gen, st := e.Status()
		if gen != 1 {
			t.Errorf("start %d: generation %d, want 1", round, gen)
		}
		for name, s := range before {
			if st[name].PID != s.PID || st[name].State != "running" {
				t.Errorf("start %d: %s pid %d state %s, want pid %d running (adopted)", round, name, st[name].PID, st[name].State, s.PID)
			}
		}
		if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hi!") {
			t.Errorf("start %d: blog (through QUOTES_URL): %d %q", round, code, body)
		}
		u, _ := url.Parse(before["quotes"].URL)
		if code, _, body := e.Get(u.Host, "/quote"); code != 200 || !strings.Contains(body, before["quotes"].Version) {
			t.Errorf("start %d: quotes by its immutable name %s: %d %q", round, u.Host, code, body)
		}
	}
	e.WriteSpec(monoliths(e, "Hey"))
	e.MustRun("deploy", "--no-confirm")
	gen, st := e.Status()
	if gen != 2 || st["shop"].PID != before["shop"].PID {
		t.Errorf("the deploy after the restarts: generation %d, shop %+v; want generation 2, shop kept (pid %d)", gen, st["shop"], before["shop"].PID)
	}
	if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hey!") {
		t.Errorf("blog after the deploy: %d %q", code, body)
	}
}

// TestEtcdOutage: with its etcd gone, a daemon keeps serving its last
// generation — routes and processes unchanged, past its lease's TTL — and
// a deploy fails saying the store is out of reach, changing nothing; once
// etcd is back the node takes a new lease and a deploy goes through.
func TestEtcdOutage(t *testing.T) {
	etcd := startEtcdProc(t)
	e := NewEnv(t)
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--etcd", etcd.url)
	e.WriteSpec(monoliths(e, "Hi"))
	e.MustRun("deploy", "--no-confirm")
	_, before := e.Status()

	etcd.kill()
	down := time.Now()
	for time.Since(down) < 8*time.Second { // past NodeTTL (6 s)
		if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hi!") {
			t.Fatalf("blog %s after etcd went: %d %q, want it served as before", time.Since(down).Round(time.Millisecond), code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.WriteSpec(monoliths(e, "Hey"))
	t0 := time.Now()
	out, errOut, code := e.Run("deploy", "--no-confirm")
	t.Logf("deploy without etcd: exit %d after %s: %s%s", code, time.Since(t0).Round(time.Millisecond), out, errOut)
	if code != 1 || !strings.Contains(errOut, "the store does not answer") {
		t.Errorf("deploy without etcd: exit %d, want 1 saying the store is out of reach\n%s%s", code, out, errOut)
	}
	for name, s := range before {
		if !processRuns(s.PID) {
			t.Errorf("%s (pid %d) stopped while etcd was gone", name, s.PID)
		}
	}
	if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hi!") {
		t.Errorf("blog after the failed deploy: %d %q, want the last generation", code, body)
	}

	etcd.start()
	back := time.Now()
	eventually(t, 30*time.Second, "a deploy once etcd is back", func() bool {
		_, _, code := e.Run("deploy", "--no-confirm")
		return code == 0
	})
	t.Logf("a deploy went through %s after etcd was back", time.Since(back).Round(time.Millisecond))
	if !strings.Contains(e.DaemonLog(), "rejoined") {
		t.Errorf("the daemon's log does not say it rejoined once etcd was back")
	}
	if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hey!") {
		t.Errorf("blog after the deploy with etcd back: %d %q", code, body)
	}
	if _, st := e.Status(); st["shop"].PID != before["shop"].PID {
		t.Errorf("shop restarted through the outage: pid %d, was %d", st["shop"].PID, before["shop"].PID)
	}
}
