package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// genConfirm is how a generation's confirmation stands in `generations --json`.
type genConfirm struct {
	Number       uint64
	Confirmed    bool
	Confirmation string
	ConfirmError string `json:"confirm_error"`
}

// generationsJSON returns `hostel generations --json`, by number.
func (e *Env) generationsJSON() (current uint64, gens map[uint64]genConfirm) {
	e.t.Helper()
	var out struct {
		Current     uint64
		Generations []genConfirm
	}
	if err := json.Unmarshal([]byte(e.MustRun("generations", "--json")), &out); err != nil {
		e.t.Fatal(err)
	}
	gens = map[uint64]genConfirm{}
	for _, g := range out.Generations {
		gens[g.Number] = g
	}
	return out.Current, gens
}

// eventually polls cond every 200ms until it holds, failing after limit.
func eventually(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestKilledInConfirmWindow: a daemon SIGKILLed in a deploy's confirm
// window leaves the generation pending; the next daemon finishes the
// window: it confirms a healthy generation, and switches back from one
// whose version crashes in what is left of the window. `generations
// --json` says which generations were confirmed.
func TestKilledInConfirmWindow(t *testing.T) {
	for _, tc := range []struct {
		name    string
		crash   bool
		confirm string // long enough to outlast the restart when it crashes
	}{{"healthy", false, "6s"}, {"crashes after the restart", true, "30s"}} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewEnv(t)
			e.StartDaemon()
			e.WriteSpec(crashSpec(t, map[string]string{"APP_ID": "one"}))
			e.MustRun("deploy", "--no-confirm")
			trigger := filepath.Join(t.TempDir(), "crash")
			e.WriteSpec(crashSpec(t, map[string]string{"APP_ID": "two", "CRASH_FILE": trigger}))

			// The deploy runs in the background; the daemon dies in its window.
			deploy := exec.Command(e.Bin, "--root", e.Root, "deploy", "--confirm", tc.confirm)
			deploy.Dir = e.Dir
			var dOut, dErr bytes.Buffer
			deploy.Stdout, deploy.Stderr = &dOut, &dErr
			if err := deploy.Start(); err != nil {
				t.Fatal(err)
			}
			eventually(t, 60*time.Second, "the confirm window to open", func() bool {
				return strings.Contains(e.DaemonLog(), "confirming for")
			})
			e.stopDaemonWith(os.Kill)
			if err := deploy.Wait(); deploy.ProcessState.ExitCode() != 1 || !strings.Contains(dErr.String(), "hostel generations") {
				t.Errorf("deploy cut by the daemon's death: %v, exit %d, want 1 and where to look\n%s", err, deploy.ProcessState.ExitCode(), dErr.String())
			}

			e.StartDaemon()
			if !strings.Contains(e.DaemonLog(), "resuming the confirm window of generation 2") {
				t.Errorf("the new daemon did not resume the window:\n%s", e.DaemonLog())
			}
			if tc.crash {
				if err := os.WriteFile(trigger, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want := "confirmed"
			if tc.crash {
				want = "failed"
			}
			eventually(t, 60*time.Second, "generation 2 "+want, func() bool {
				_, gens := e.generationsJSON()
				return gens[2].Confirmation == want
			})
			cur, gens := e.generationsJSON()
			wantCur, wantApp := uint64(2), "two"
			if tc.crash {
				wantCur, wantApp = 1, "one"
			}
			if cur != wantCur || gens[2].Confirmed != !tc.crash {
				t.Errorf("current %d, generation 2 %+v; want current %d, confirmed %v", cur, gens[2], wantCur, !tc.crash)
			}
			if tc.crash && !strings.Contains(gens[2].ConfirmError, `service "web"`) {
				t.Errorf("generation 2 confirm_error %q does not name the service", gens[2].ConfirmError)
			}
			var st struct {
				SwitchedBackFrom uint64 `json:"switched_back_from"`
			}
			json.Unmarshal([]byte(e.MustRun("status", "--json")), &st)
			if want := map[bool]uint64{true: 2}[tc.crash]; st.SwitchedBackFrom != want {
				t.Errorf("status says switched back from %d, want %d", st.SwitchedBackFrom, want)
			}
			// Exactly one version runs, and it serves: the other was drained.
			eventually(t, 30*time.Second, "one version left", func() bool {
				var st struct{ Services []ServiceStatus }
				json.Unmarshal([]byte(e.MustRun("status", "--json")), &st)
				return len(st.Services) == 1
			})
			if code, _, body := e.Get("web.example", "/"); code != 200 || body != wantApp {
				t.Errorf("web.example: %d %q, want 200 %q", code, body, wantApp)
			}
			if out := e.MustRun("generations"); !strings.Contains(out, "CONFIRMED") {
				t.Errorf("generations does not show confirmations:\n%s", out)
			}
		})
	}
}

// TestConfirmWindowLeavesDaemonFree: during a 30 s confirm window, status,
// restart and rollback answer long before the window would end (each
// under a deadline of a third of it), and the rollback ends the window:
// the deploy then exits 0 and says its generation was superseded.
func TestConfirmWindowLeavesDaemonFree(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(crashSpec(t, map[string]string{"APP_ID": "one"}))
	e.MustRun("deploy", "--no-confirm")
	e.WriteSpec(crashSpec(t, map[string]string{"APP_ID": "two"}))

	deploy := exec.Command(e.Bin, "--root", e.Root, "deploy", "--confirm", "30s")
	deploy.Dir = e.Dir
	var dOut, dErr bytes.Buffer
	deploy.Stdout, deploy.Stderr = &dOut, &dErr
	if err := deploy.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { deploy.Wait(); close(exited) }()
	eventually(t, 60*time.Second, "the confirm window to open", func() bool {
		return strings.Contains(e.DaemonLog(), "confirming for")
	})
	for _, args := range [][]string{{"status", "--json"}, {"restart", "web"}, {"rollback"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, e.Bin, append([]string{"--root", e.Root}, args...)...)
		cmd.Dir = e.Dir
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("hostel %s during the window: %v\n%s", strings.Join(args, " "), err, out)
		}
		select {
		case <-exited:
			if args[0] != "rollback" {
				t.Fatalf("the deploy ended before hostel %s returned:\n%s%s", args[0], dOut.String(), dErr.String())
			}
		default:
		}
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the deploy did not end with the rollback that ended its window")
	}
	if code := deploy.ProcessState.ExitCode(); code != 0 || !strings.Contains(dOut.String(), "ended the confirm window") {
		t.Errorf("deploy: exit %d, stdout %q; want 0 and its window ended", code, dOut.String())
	}
	cur, gens := e.generationsJSON()
	if cur != 1 || gens[2].Confirmation != "superseded" || gens[2].Confirmed {
		t.Errorf("current %d, generation 2 %+v; want 1, superseded", cur, gens[2])
	}
	if code, _, body := e.Get("web.example", "/"); code != 200 || body != "one" {
		t.Errorf("web.example: %d %q, want 200 one", code, body)
	}
}
