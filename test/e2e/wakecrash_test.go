package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestCrashDuringWake kills the daemon (SIGKILL, from itself at a named
// failpoint) in the middle of the launch that wakes a sleeping version:
// the next daemon leaves nothing of a launch not yet recorded running,
// keeps the version asleep, and its next request wakes it once; a
// recorded launch is adopted as it runs.
func TestCrashDuringWake(t *testing.T) {
	for _, tc := range []struct {
		fp       string
		recorded bool // the launch's record was written: the process is adopted
	}{
		{"launch-before-start", false},
		{"launch-after-start", false},
		{"launch-after-record", true},
	} {
		fp, recorded := tc.fp, tc.recorded
		t.Run(fp, func(t *testing.T) {
			e := NewEnv(t)
			e.StartDaemon()
			e.WriteSpec(map[string]any{"services": map[string]any{
				"shop": e.App("shop", map[string]any{"idle": "1s", "domains": []string{"shop.test"}}),
			}})
			e.MustRun("deploy", "--no-confirm")
			e.waitState(20*time.Second, "idle", "shop")
			e.StopDaemon()
			e.DaemonEnv = []string{"HOSTEL_FAILPOINT=" + fp}
			e.StartDaemon()
			// The wake's launch kills the daemon: no answer — except at
			// launch-after-record, which the instance's own loop reaches
			// once the process started, possibly after its answer.
			req, _ := http.NewRequest("GET", "http://"+e.HTTP+"/", nil)
			req.Host = "shop.test"
			if resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req); err == nil {
				resp.Body.Close()
				if !recorded {
					t.Fatalf("the request to wake shop was answered %d; the daemon should have died at %s", resp.StatusCode, fp)
				}
			}
			select {
			case <-e.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("the daemon did not die at failpoint %s", fp)
			}
			e.daemon = nil

			e.DaemonEnv = nil
			e.StartDaemon()
			if recorded {
				// Recorded: adopted as it runs, the only process of shop.
				if s := e.sleepStatus()["shop"]; s.State != "running" || !pidAlive(s.PID) {
					t.Errorf("after the restart: %+v, want its recorded process adopted", s)
				}
				if left := rootProcesses(t, e.Root); len(left) != 1 {
					t.Errorf("processes of the root after the restart: %v, want 1", left)
				}
				if code, _, body := e.Get("shop.test", "/"); code != 200 {
					t.Fatalf("after the restart, a request to shop: %d %q", code, body)
				}
				return
			}
			if left := rootProcesses(t, e.Root); len(left) != 0 {
				t.Errorf("after the restart, processes of the root run: %v; the wake's launch died with its daemon", left)
			}
			if s := e.sleepStatus()["shop"]; s.State != "idle" || s.PID != 0 {
				t.Errorf("after the restart: %+v, want idle", s)
			}
			if code, _, body := e.Get("shop.test", "/"); code != 200 {
				t.Fatalf("after the restart, a request to shop: %d %q", code, body)
			}
			if s := e.sleepStatus()["shop"]; s.State != "running" || s.Wakes != 1 {
				t.Errorf("after its request: %+v, want running, woken once", s)
			}
			if left := rootProcesses(t, e.Root); len(left) != 1 {
				t.Errorf("processes of the root after the wake: %v, want 1", left)
			}
		})
	}
}
