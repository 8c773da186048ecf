package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// releaseRuns is a file every service user may append to, where the
// release step of releaseSpec notes each run ("run PID"), and then "done
// PID" when it ends.
func releaseRuns(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o777)
	path := filepath.Join(dir, "runs")
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o666)
	return path
}

// releaseSpec is a quotes service whose release step notes its runs in
// runs and takes seconds.
func releaseSpec(e *Env, runs string, seconds int) map[string]any {
	// $$$$: the shell's own pid ($$ is hostel's literal $, docs/spec.md).
	script := `echo "run $$$$" >> "$RUNS"; sleep "$RELEASE_SECONDS"; echo "done $$$$" >> "$RUNS"`
	return map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"release": []string{"/bin/sh", "-c", script},
			"env": map[string]string{"RUNS": runs, "RELEASE_SECONDS": strconv.Itoa(seconds)}}),
	}}
}

// runsOf returns the lines of runs, "run" and "done" (pids dropped).
func runsOf(t *testing.T, runs string) string {
	t.Helper()
	b, err := os.ReadFile(runs)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if w, _, _ := strings.Cut(l, " "); w != "" {
			out = append(out, w)
		}
	}
	return strings.Join(out, " ")
}

// TestReleaseCrashRestart: the daemon dies (SIGKILL, at a failpoint) in a
// deploy's release step — after its claim, before the step runs; or after
// the step ran, before it was recorded. The deploy did not go through. The
// next daemon on that root finds the claim its predecessor left, takes it
// over at once (its lease would have kept it for claimTTL), and the next
// deploy runs the release: a step that had run runs again, which a
// release must bear. On bbolt and on an etcd member in the daemon.
func TestReleaseCrashRestart(t *testing.T) {
	for _, tc := range []struct {
		fp     string
		before string // runs after the crash
		after  string // and after the deploy that follows
	}{
		{"release-claimed", "", "run done"},
		{"release-ran", "run done", "run done run done"},
	} {
		for _, backend := range []string{"bbolt", "etcd-embed"} {
			t.Run(tc.fp+"/"+backend, func(t *testing.T) {
				testReleaseCrashRestart(t, tc.fp, tc.before, tc.after, backend)
			})
		}
	}
}

func testReleaseCrashRestart(t *testing.T, fp, before, after, backend string) {
	e := NewEnv(t)
	runs := releaseRuns(t)
	e.WriteSpec(releaseSpec(e, runs, 0))
	listen := []string{"--http", "127.0.0.1:0", "--https", ""}
	if backend == "etcd-embed" {
		listen = append(listen, "--etcd-embed")
	}
	e.killedAt(fp, listen, "deploy", "--no-confirm")
	if got := runsOf(t, runs); got != before {
		t.Errorf("runs after the crash: %q, want %q", got, before)
	}
	e.StartDaemonArgs(listen...)
	defer e.Shutdown()
	if gen, _ := e.Status(); gen != 0 {
		t.Errorf("generation %d after a deploy that died in its release, want 0", gen)
	}
	t0 := time.Now()
	e.MustRun("deploy", "--no-confirm")
	t.Logf("the deploy after the restart took %s", time.Since(t0).Round(time.Millisecond))
	if got := runsOf(t, runs); got != after {
		t.Errorf("runs after deploying again: %q, want %q", got, after)
	}
	if !strings.Contains(e.DaemonLog(), "which is gone (this daemon restarted on its root): running it again") {
		t.Errorf("the daemon does not say it took its predecessor's claim over:\n%s", e.DaemonLog())
	}
	if _, st := e.Status(); st["quotes"].State != "running" {
		t.Errorf("quotes after the deploy: %+v", st["quotes"])
	}
	// Ran and recorded: a restart and a deploy of the same spec
	// do not run it again.
	e.StopDaemon()
	e.StartDaemonArgs(listen...)
	e.MustRun("deploy", "--no-confirm")
	if got := runsOf(t, runs); got != after {
		t.Errorf("runs after a restart and another deploy: %q, want %q", got, after)
	}
}

// TestReleaseCrashOtherDaemon: two daemons, each with its own root, share
// one etcd: two nodes of one deployment, both of which start a deploy's
// new versions. The release step runs once, on the node that claims it
// first; the other waits for the claim. The one that runs it is killed
// (SIGKILL) while it runs: the other waits for its claim to end — its
// lease expires claimTTL (10 s) after its last renewal — and then runs
// the release itself; the deploy, through whichever daemon leads the
// engine then, goes through. The release ran twice, never at once.
func TestReleaseCrashOtherDaemon(t *testing.T) {
	url := startEtcd(t)
	listen := []string{"--http", "127.0.0.1:0", "--https", "", "--etcd", url}
	runs := releaseRuns(t)
	a, b := NewEnv(t), NewEnv(t)
	// replicas: an instance on each node, so both start the version and
	// both would run its release.
	withReplicas := func(e *Env, n int) {
		s := releaseSpec(e, runs, 3)
		s["services"].(map[string]any)["quotes"].(map[string]any)["replicas"] = n
		e.WriteSpec(s)
	}
	withReplicas(a, 2)
	withReplicas(b, 2)
	// a leads the engine, b follows (and takes over once a is gone).
	a.StartDaemonArgs(append(listen, "--node", "a")...)
	b.StartDaemonArgs(append(listen, "--node", "b")...)

	go a.Run("deploy", "--no-confirm")
	waitUntil(t, "the release to start", func() bool { return runsOf(t, runs) == "run" })
	// The node that waits says so; the other runs the release.
	var runner, waiter *Env
	waitUntil(t, "the other node to wait for the claim", func() bool {
		switch {
		case strings.Contains(b.DaemonLog(), "waiting: claimed by the daemon of "+a.Root):
			runner, waiter = a, b
		case strings.Contains(a.DaemonLog(), "waiting: claimed by the daemon of "+b.Root):
			runner, waiter = b, a
		}
		return runner != nil
	})
	runner.killDaemon()
	died := time.Now()
	defer waiter.Shutdown()

	// The deploy goes through the daemon that leads the engine — the
	// waiter, once a's lease ends, if the runner was a — once the
	// runner's claim ended and the waiter ran the release; with one
	// replica, which the node left can run (replicas is not part of the
	// version: the release is the same).
	withReplicas(waiter, 1)
	for deadline := time.Now().Add(40 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, errOut, code := waiter.Run("deploy", "--no-confirm")
		if code == 0 {
			break
		}
		// Until a's lease ends, b is a standby and a, gone, leads: b
		// cannot pass the deploy on to it (no node-to-node port here).
		if !strings.Contains(errOut, "lead") || time.Now().After(deadline) {
			t.Fatalf("deploy through the node left: exit %d: %s\n%s", code, errOut, waiter.DaemonLog())
		}
	}
	t.Logf("the deploy went through %s after the release's runner died (claim TTL 10s, release 3s)", time.Since(died).Round(time.Millisecond))
	if !strings.Contains(waiter.DaemonLog(), "the claim of the daemon of "+runner.Root) {
		t.Errorf("the waiter does not say the runner's claim ended:\n%s", waiter.DaemonLog())
	}
	// The runner's release process outlives its daemon (it runs in a
	// process group of its own) and ended before the waiter's began: it
	// takes 3 s, the claim 10. A release longer than the claim's TTL
	// would overlap the waiter's.
	if got := runsOf(t, runs); !strings.HasPrefix(got, "run") || strings.Count(got, "run") != 2 || strings.Count(got, "done") < 1 {
		t.Errorf("runs %q, want the runner's and the waiter's", got)
	}
	// Generation 1, or 2 when the leader's own deploy went through
	// (the runner was b) before the waiter's with one replica.
	if gen, st := waiter.Status(); gen < 1 || gen > 2 || st["quotes"].State != "running" {
		t.Errorf("after the deploy: generation %d, %+v", gen, st["quotes"])
	}
	// The runner comes back: its node runs the current generation, and
	// the release step, recorded, is not run again.
	runner.StartDaemonArgs(append(listen, "--node", map[*Env]string{a: "a", b: "b"}[runner])...)
	defer runner.Shutdown()
	withReplicas(waiter, 2)
	waitUntil(t, "the runner's node back", func() bool {
		_, _, code := waiter.Run("deploy", "--no-confirm")
		return code == 0
	})
	waitUntil(t, "the runner's node running quotes", func() bool {
		_, st := runner.Status()
		return st["quotes"].State == "running"
	})
	if got := strings.Count(runsOf(t, runs), "run"); got != 2 {
		t.Errorf("the release ran %d times after the runner came back, want 2", got)
	}
}
