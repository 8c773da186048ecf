package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// heldGet sends a GET for host in the background, as a client that waits
// a minute; its status and body come on the channel (-1: no answer).
func (e *Env) heldGet(host string) <-chan heldAnswer {
	out := make(chan heldAnswer, 1)
	addr := e.HTTP
	go func() {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = host
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			out <- heldAnswer{code: -1, body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- heldAnswer{resp.StatusCode, string(b)}
	}()
	return out
}

type heldAnswer struct {
	code int
	body string
}

func assertStillHeld(t *testing.T, ch <-chan heldAnswer, what string) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("%s: answered %d %q while paused", what, a.code, a.body)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestPauseAcrossDeployAndRestart: pause → deploy → resume is how a
// migration is run by hand: a request held across the deploy goes to the
// new version at the resume, and a pause lasts across daemon restarts
// (SIGTERM, SIGKILL, shutdown) until hostel resume. --max is bounded.
func TestPauseAcrossDeployAndRestart(t *testing.T) {
	e := NewEnv(t)
	sw := newSwitches(t)
	e.StartDaemon()
	e.WriteSpec(sickSpec(e, sw, nil))
	e.MustRun("deploy", "--no-confirm")
	e.MustRun("pause", "a", "--max", "1m")

	held := e.heldGet("a.test")
	assertStillHeld(t, held, "paused")
	e.WriteSpec(sickSpec(e, sw, map[string]string{"V": "2"}))
	e.MustRun("deploy", "--no-confirm")
	_, st := e.fullStatus()
	v2 := st["a"]["version"].(string)
	if st["a"]["state"] != "held" || st["a"]["paused"] == nil {
		t.Errorf("status of a paused across a deploy: %v, want held and paused", st["a"])
	}
	assertStillHeld(t, held, "paused, deployed")
	if code, _, body := e.Get("b.test", "/"); code != 200 {
		t.Errorf("b.test while a is paused: %d %q", code, body)
	}

	for _, how := range []string{"SIGTERM", "SIGKILL", "shutdown"} {
		e.restartDaemon(how)
		if _, st := e.fullStatus(); st["a"]["paused"] == nil {
			t.Fatalf("after a restart by %s: a is %v, want still paused", how, st["a"])
		}
		assertStillHeld(t, e.heldGet("a.test"), "paused, restarted by "+how)
	}
	held = e.heldGet("a.test")
	assertStillHeld(t, held, "paused")
	e.MustRun("resume", "a")
	if a := <-held; a.code != 200 || !strings.Contains(a.body, v2) {
		t.Errorf("held, resumed: %d %q, want the new version %s", a.code, a.body, v2)
	}
	if _, st := e.fullStatus(); st["a"]["state"] != "running" || st["a"]["paused"] != nil {
		t.Errorf("status of a resumed: %v, want running, not paused", st["a"])
	}

	for _, max := range []string{"0s", "-1s", "2h", "100000h"} {
		if _, errOut, code := e.Run("pause", "a", "--max", max); code != 2 || !strings.Contains(errOut, "--max") {
			t.Errorf("hostel pause a --max %s: exit %d %q, want 2 naming --max", max, code, errOut)
		}
	}
	if _, st := e.fullStatus(); st["a"]["paused"] != nil {
		t.Errorf("a refused pause paused a: %v", st["a"])
	}
}
