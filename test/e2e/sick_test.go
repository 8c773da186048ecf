package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sickApp builds testdata/sickapp into a package directory every service
// user can read, and returns it.
func sickApp(t testing.TB) string {
	t.Helper()
	return testApp(t, "sickapp", "./test/e2e/testdata/sickapp")
}

// switches is a directory of cue files for sickapp that its users can
// read: a file there makes an app ill while it exists.
type switches struct {
	t   testing.TB
	dir string
}

func newSwitches(t testing.TB) switches {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	return switches{t, dir}
}

func (s switches) path(name string) string { return filepath.Join(s.dir, name) }

func (s switches) on(name string) {
	s.t.Helper()
	if err := os.WriteFile(s.path(name), nil, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

func (s switches) off(name string) {
	s.t.Helper()
	if err := os.Remove(s.path(name)); err != nil {
		s.t.Fatal(err)
	}
}

// sickSpec is a spec of two sickapp services, a (health-checked, ill when
// SICK_FILE or FAIL_FILE says so) and b (always well).
func sickSpec(e *Env, sw switches, aEnv map[string]string) map[string]any {
	app := sickApp(e.t)
	env := map[string]string{"SICK_FILE": sw.path("a-sick"), "FAIL_FILE": sw.path("a-fail")}
	for k, v := range aEnv {
		env[k] = v
	}
	return map[string]any{"services": map[string]any{
		"a": map[string]any{"package": app, "exec": []string{"bin/sickapp"}, "env": env, "domains": []string{"a.test"},
			"health": map[string]any{"path": "/healthz", "timeout": "3s"}},
		"b": map[string]any{"package": app, "exec": []string{"bin/sickapp"}, "domains": []string{"b.test"}},
	}}
}

// fullStatus is `hostel status --json` with what these tests read.
func (e *Env) fullStatus() (gen uint64, svcs map[string]map[string]any) {
	e.t.Helper()
	var st struct {
		Generation uint64
		Services   []map[string]any
	}
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	svcs = map[string]map[string]any{}
	for _, s := range st.Services {
		if s["state"] != "draining" {
			svcs[s["name"].(string)] = s
		}
	}
	return st.Generation, svcs
}

// restartDaemon stops the daemon the way named and starts a new one.
func (e *Env) restartDaemon(how string) {
	e.t.Helper()
	switch how {
	case "SIGTERM":
		e.stopDaemonWith(syscall.SIGTERM)
	case "SIGKILL":
		e.stopDaemonWith(syscall.SIGKILL)
	case "shutdown":
		e.Shutdown()
	default:
		e.t.Fatalf("restart by %q", how)
	}
	e.StartDaemon()
}

// TestSickServiceNeverStopsTheDaemon: a service that turned unhealthy, or
// that exits at start, never keeps the daemon from starting or another
// service from being served, whatever stopped the daemon before: its
// domains answer 503, status says it failed and why, and its next request
// (or a restart, or a deploy) starts it again once it can.
//
// make chaos (-chaos) runs every case again, ten times over, on one daemon.
func TestSickServiceNeverStopsTheDaemon(t *testing.T) {
	rounds := 1
	if *chaos {
		rounds = 10
	}
	for _, tc := range []struct{ how, ill string }{
		{"SIGTERM", "a-sick"}, {"SIGKILL", "a-sick"}, {"shutdown", "a-sick"}, {"shutdown", "a-fail"},
	} {
		t.Run(tc.how+"/"+tc.ill, func(t *testing.T) {
			t.Parallel()
			e := NewEnv(t)
			sw := newSwitches(t)
			e.StartDaemon()
			e.WriteSpec(sickSpec(e, sw, nil))
			e.MustRun("deploy", "--no-confirm")
			if code, _, body := e.Get("a.test", "/"); code != 200 {
				t.Fatalf("a.test before: %d %q", code, body)
			}
			for round := range rounds {
				t.Logf("round %d", round)
				sickRound(t, e, sw, tc.how, tc.ill)
			}
		})
	}
}

// sickRound makes a ill the way named, restarts the daemon the way
// named, and checks that b is served, a answers 503 and status says why,
// and that a is served again once well, at its next request.
func sickRound(t *testing.T, e *Env, sw switches, how, ill string) {
	t.Helper()
	sw.on(ill)
	e.restartDaemon(how)
	if code, _, body := e.Get("b.test", "/"); code != 200 || !strings.HasPrefix(body, "b ") {
		t.Errorf("b.test with a ill: %d %q, want b's 200", code, body)
	}
	_, st := e.fullStatus()
	if st["a"]["state"] != "failed" || !strings.Contains(fmt.Sprint(st["a"]["error"]), "a-") {
		t.Errorf("status of a = %v, want failed saying why", st["a"])
	}
	if st["b"]["state"] != "running" {
		t.Errorf("status of b = %v, want running", st["b"])
	}
	code, h, _ := e.Get("a.test", "/")
	if code != 503 || h.Get("Retry-After") == "" {
		t.Errorf("a.test while ill: %d (Retry-After %q), want 503 with Retry-After", code, h.Get("Retry-After"))
	}

	// Well again: the next request starts it.
	sw.off(ill)
	if code, _, body := e.Get("a.test", "/"); code != 200 || !strings.HasPrefix(body, "a ") {
		t.Errorf("a.test once well: %d %q, want a's 200", code, body)
	}
	if _, st := e.fullStatus(); st["a"]["state"] != "running" {
		t.Errorf("status of a once well = %v, want running", st["a"])
	}
}

// TestSickServiceRestartAndDeployTryAgain: a version a resume could not
// start is started again by `hostel restart` and by a deploy that keeps it.
func TestSickServiceRestartAndDeployTryAgain(t *testing.T) {
	e := NewEnv(t)
	sw := newSwitches(t)
	e.StartDaemon()
	e.WriteSpec(sickSpec(e, sw, nil))
	e.MustRun("deploy", "--no-confirm")

	sw.on("a-fail")
	e.restartDaemon("shutdown")
	if _, st := e.fullStatus(); st["a"]["state"] != "failed" {
		t.Fatalf("status of a = %v, want failed", st["a"])
	}
	// Still failing: restart says so, and the daemon goes on.
	if _, errOut, code := e.Run("restart", "a"); code != 1 || !strings.Contains(errOut, "a-") {
		t.Errorf("hostel restart a while it cannot start: exit %d %q, want 1 naming it", code, errOut)
	}
	sw.off("a-fail")
	e.MustRun("restart", "a")
	if _, st := e.fullStatus(); st["a"]["state"] != "running" {
		t.Errorf("status of a after restart = %v, want running", st["a"])
	}

	// Down again at a restart, then a deploy of b alone starts it too.
	sw.on("a-fail")
	e.restartDaemon("shutdown")
	sw.off("a-fail")
	sp := sickSpec(e, sw, nil)
	sp["services"].(map[string]any)["b"].(map[string]any)["env"] = map[string]string{"V": "2"}
	e.WriteSpec(sp)
	e.MustRun("deploy", "--no-confirm")
	if _, st := e.fullStatus(); st["a"]["state"] != "running" {
		t.Errorf("status of a after a deploy = %v, want running", st["a"])
	}
}

// TestResumedWindowSwitchesBackFromSickVersion: a daemon killed in a
// confirm window, whose new version turned unhealthy while it was down,
// switches back to the previous generation at its next start instead of
// exiting.
func TestResumedWindowSwitchesBackFromSickVersion(t *testing.T) {
	e := NewEnv(t)
	sw := newSwitches(t)
	e.StartDaemon()
	e.WriteSpec(sickSpec(e, sw, nil))
	e.MustRun("deploy", "--no-confirm")
	_, st1 := e.fullStatus()

	// Generation 2 changes a; its own cue file makes only it ill.
	e.WriteSpec(sickSpec(e, sw, map[string]string{"SICK_FILE": sw.path("a2-sick")}))
	cmd := exec.Command(e.Bin, "--root", e.Root, "deploy", "--confirm", "2m")
	cmd.Dir = e.Dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "generation 2 live", func() bool {
		gen, _ := e.fullStatus()
		return gen == 2
	})
	sw.on("a2-sick")
	e.stopDaemonWith(syscall.SIGKILL)
	cmd.Wait()

	e.StartDaemon()
	eventually(t, 30*time.Second, "switch back to generation 1", func() bool {
		gen, _ := e.fullStatus()
		return gen == 1
	})
	if code, _, body := e.Get("a.test", "/"); code != 200 || !strings.Contains(body, fmt.Sprint(st1["a"]["version"])) {
		t.Errorf("a.test after the switch back: %d %q, want generation 1's version %v", code, body, st1["a"]["version"])
	}
	if code, _, _ := e.Get("b.test", "/"); code != 200 {
		t.Errorf("b.test: %d, want 200", code)
	}
}
