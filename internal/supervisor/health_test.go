package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checked is appConfig with health checks every interval, failures in a
// row making it unhealthy.
func checked(service string, interval time.Duration, failures int, args ...string) Config {
	cfg := appConfig(service, args...)
	cfg.HealthInterval, cfg.HealthFailures = interval, failures
	cfg.StopGrace = time.Second
	return cfg
}

// touch creates the file at path; the returned function removes it.
func touch(t testing.TB, path string) func() {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// accepts reports whether addr accepts a TCP connection now.
func accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// TestReadyOnlyOnceTheHealthCheckPasses: an app that says READY=1 before
// its port accepts (an HTTP server started in a goroutine) is ready, when
// it has a health path, only once the check answers: READY=1 only starts
// the checking. One that never listens is not ready at all.
func TestReadyOnlyOnceTheHealthCheckPasses(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	i := startReady(t, s, checked("early", time.Hour, 1, "-notify", "-slow-start", "300ms"))
	if !accepts(i.Addr()) {
		t.Error("ready while its port refuses connections: READY=1 was taken for ready")
	}
	if h := i.Status().Health; h == nil || !h.OK || h.At.IsZero() || h.Error != "" {
		t.Errorf("health after ready = %+v, want the passing check", h)
	}

	cfg := checked("never", time.Hour, 1, "-notify", "-slow-start", "30s")
	cfg.ReadyTimeout = 500 * time.Millisecond
	never := start(t, s, cfg)
	if err := never.WaitReady(context.Background()); !errors.Is(err, ErrNotReady) {
		t.Errorf("WaitReady of an app that says READY=1 and never listens = %v, want ErrNotReady", err)
	}
	if h := never.Status().Health; h == nil || h.OK || !strings.Contains(h.Error, "connection refused") {
		t.Errorf("health of a port that refuses = %+v, want the refused check", h)
	}
}

// TestUnhealthyRestarts: a ready process whose health check fails
// HealthFailures times in a row is unhealthy: stopped and started again,
// with last exit "unhealthy", a restart counted and the failing check
// shown, and unhealthy until a new process is ready. Other instances are
// untouched.
func TestUnhealthyRestarts(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	sick := filepath.Join(t.TempDir(), "sick")
	i := startReady(t, s, checked("sick", 50*time.Millisecond, 3, "-sick-file", sick))
	other := startReady(t, s, checked("other", 50*time.Millisecond, 3))
	before, otherBefore := i.Status(), other.Status()

	heal := touch(t, sick)
	waitFor(t, "unhealthy", func() bool { return i.Status().State == StateUnhealthy })
	waitFor(t, "a new process", func() bool {
		st := i.Status()
		return st.PID != 0 && st.PID != before.PID
	})
	st := i.Status()
	if st.State != StateUnhealthy || st.Ready || st.LastExit != "unhealthy" || st.Restarts != 1 {
		t.Errorf("restarted while sick: state %s, ready %v, last exit %q, restarts %d; want unhealthy, not ready, unhealthy, 1",
			st.State, st.Ready, st.LastExit, st.Restarts)
	}
	if !strings.Contains(st.LastError, "failed 3 health checks in a row") || !strings.Contains(st.LastError, "500") {
		t.Errorf("last error %q does not say why", st.LastError)
	}
	// The new process's checks fail too: refused until it listens, then 500.
	waitFor(t, "the new process's check answering 500", func() bool {
		h := i.Status().Health
		return h != nil && !h.OK && strings.Contains(h.Error, "500 Internal Server Error") && h.At.After(before.Health.At)
	})
	if alive(before.PID) && !goneWithin(before.PID, 5*time.Second) {
		t.Errorf("the unhealthy process %d still runs", before.PID)
	}

	heal()
	waitFor(t, "ready again", func() bool { return i.Status().Ready })
	st = i.Status()
	if st.State != StateRunning || st.LastExit != "unhealthy" || st.Restarts < 1 || st.Health == nil || !st.Health.OK {
		t.Errorf("healed: %+v; want running, last exit unhealthy, a passing check", st)
	}
	if ost := other.Status(); ost.PID != otherBefore.PID || ost.Restarts != 0 || ost.State != StateRunning {
		t.Errorf("the other instance: %+v; want it untouched", ost)
	}
}

// TestUnhealthyForGoodFails: a version that stays unhealthy — its restarts
// never ready within ReadyTimeout — ends failed, as a crash loop does,
// with its processes gone.
func TestUnhealthyForGoodFails(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	sick := filepath.Join(t.TempDir(), "sick")
	cfg := checked("doomed", 50*time.Millisecond, 2, "-sick-file", sick)
	cfg.ReadyTimeout = 300 * time.Millisecond
	i := startReady(t, s, cfg)
	first := i.Status().PID
	touch(t, sick)
	waitFor(t, "failed", func() bool { return i.Status().State == StateFailed })
	st := i.Status()
	if st.LastExit != "unhealthy" || st.PID != 0 || st.Restarts != maxCrashes-1 {
		t.Errorf("failed: last exit %q, pid %d, restarts %d; want unhealthy, 0, %d", st.LastExit, st.PID, st.Restarts, maxCrashes-1)
	}
	if !strings.Contains(st.LastError, "not ready within 300ms of its restart") {
		t.Errorf("last error %q does not say the restart never got ready", st.LastError)
	}
	if !goneWithin(first, 5*time.Second) {
		t.Errorf("the first process %d still runs", first)
	}
}

// TestHealthCheckTimesOut: a check that gets no answer fails after its own
// timeout, and the checker goes on to the next: a hung app is found
// unhealthy and restarted.
func TestHealthCheckTimesOut(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	hang := filepath.Join(t.TempDir(), "hang")
	i := startReady(t, s, checked("hung", 50*time.Millisecond, 2, "-hang-file", hang))
	pid := i.Status().PID
	heal := touch(t, hang)
	waitFor(t, "a restart", func() bool { return i.Status().Restarts == 1 })
	st := i.Status()
	if st.LastExit != "unhealthy" || !strings.Contains(st.LastError, "deadline exceeded") {
		t.Errorf("last exit %q, last error %q; want unhealthy after checks that timed out", st.LastExit, st.LastError)
	}
	heal()
	waitFor(t, "ready again", func() bool { st := i.Status(); return st.Ready && st.PID != pid })
}

// TestNoHealthPathNoChecks: without a health path, READY=1 is ready, and
// nothing is checked once ready: a process that stops listening is not
// restarted for it.
func TestNoHealthPathNoChecks(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	cfg := checked("plain", 20*time.Millisecond, 1, "-notify", "-slow-start", "30s")
	cfg.HealthPath = ""
	i := startReady(t, s, cfg)
	time.Sleep(200 * time.Millisecond) // ten intervals
	st := i.Status()
	if st.State != StateRunning || !st.Ready || st.Restarts != 0 || st.Health != nil {
		t.Errorf("status = %+v; want running, ready, no restart, no health", st)
	}
}
