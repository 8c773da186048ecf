package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hostel/internal/spec"
)

// waitFor polls cond until it holds, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// confirmState returns how generation n's window stands in the store.
func (w *world) confirmState(n uint64) spec.ConfirmState {
	w.t.Helper()
	g, err := w.store.Get(w.t.Context(), n)
	if err != nil {
		w.t.Fatal(err)
	}
	if g.Confirm == nil {
		return ""
	}
	return g.Confirm.State
}

func (w *world) current() uint64 {
	w.t.Helper()
	cur, err := w.store.Current(w.t.Context(), spec.DefaultEnv)
	if err != nil || cur == nil {
		w.t.Fatalf("current generation: %v, %v", cur, err)
	}
	return cur.Number
}

// TestConfirmCrashLoopRollsBack: a version that crashes every second, and
// so keeps answering its health checks between restarts, fails its
// confirmation at its first restart: the previous generation comes back
// and the deploy says which service failed and why.
func TestConfirmCrashLoopRollsBack(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("good", domains("web.test"))}))
	res, err := w.deploy(mkSpec(map[string]*spec.Service{"web": app("loop", domains("web.test"), env("CRASH_AFTER", "1s"))}), 5*time.Second)
	if err == nil {
		t.Fatalf("deploy of a crash-looping version went through:\n%s", strings.Join(w.lines, "\n"))
	}
	fs := Failures(err)
	if len(fs) != 1 || fs[0].Service != "web" || fs[0].Step != StepConfirm || !strings.Contains(fs[0].Err.Error(), "exit status 3") {
		t.Errorf("failures = %v, want web failing its confirmation with exit status 3 (error: %v)", fs, err)
	}
	if !res.RolledBack || res.RolledBackFrom != 2 || res.Generation != 1 || res.Confirmation != spec.ConfirmFailed {
		t.Errorf("result = %+v, want rolled back from 2 to 1, confirmation failed", res)
	}
	if got := w.current(); got != 1 {
		t.Errorf("current generation %d, want 1", got)
	}
	if got := w.confirmState(2); got != spec.ConfirmFailed {
		t.Errorf("generation 2 confirmation %q, want failed", got)
	}
	if _, id, _ := w.get("web.test", "/"); id != "good" {
		t.Errorf("web.test served by %q after the switch back", id)
	}
}

// TestFailedAfterWindowSwitchesBack: a version that passed its window and
// fails for good later is reported and its generation switched back, the
// previous generation's version started again.
func TestFailedAfterWindowSwitchesBack(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("good", domains("web.test"))}))
	trigger := filepath.Join(t.TempDir(), "crash")
	res, err := w.deploy(mkSpec(map[string]*spec.Service{"web": app("later", domains("web.test"), env("CRASH_FILE", trigger))}), time.Second)
	if err != nil || res.Confirmation != spec.ConfirmConfirmed {
		t.Fatalf("deploy: %v, confirmation %q", err, res.Confirmation)
	}
	if len(res.Stopped) != 1 {
		t.Fatalf("the confirmed deploy stopped %v, want the old version", res.Stopped)
	}
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "switch back to generation 1", func() bool { return w.current() == 1 })
	waitFor(t, 10*time.Second, "web.test served by good", func() bool {
		_, id, _ := w.get("web.test", "/")
		return id == "good"
	})
	if got := w.confirmState(2); got != spec.ConfirmFailed {
		t.Errorf("generation 2 confirmation %q, want failed", got)
	}
	if i := w.index(`service "web": web-`); i < 0 {
		t.Errorf("the failure was not reported:\n%s", strings.Join(w.lines, "\n"))
	}
}

// TestWindowLeavesEngineFree: during a confirm window, a restart and a
// rollback do not wait for it; the rollback ends the window, and the
// deploy then reports its generation superseded.
func TestWindowLeavesEngineFree(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("one", domains("web.test"))}))
	deployed := w.deployInWindow(mkSpec(map[string]*spec.Service{"web": app("two", domains("web.test"))}), 30*time.Second)

	// Each must return while the window is still open; the rollback ends
	// it, and the deploy may then return as soon as the rollback does.
	ops := []struct {
		name string
		run  func(ctx context.Context) error
		ends bool
	}{
		{"restart", func(ctx context.Context) error { return w.engine.Restart(ctx, "web") }, false},
		{"rollback", func(ctx context.Context) error {
			_, err := w.engine.Rollback(ctx, "", 1, w.progress)
			return err
		}, true},
	}
	var ended *deployOutcome
	for _, op := range ops {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		done := make(chan error, 1)
		go func() { done <- op.run(ctx) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s during the window: %v", op.name, err)
			}
		case o := <-deployed:
			if !op.ends || o.err != nil || o.res.Confirmation != spec.ConfirmSuperseded {
				t.Fatalf("the window ended (%v) before %s returned: it waited for the window", o.err, op.name)
			}
			ended = &o
			if err := <-done; err != nil {
				t.Fatalf("%s during the window: %v", op.name, err)
			}
		}
		cancel()
	}
	if ended == nil {
		o := <-deployed
		ended = &o
	}
	o := *ended
	if o.err != nil || o.res.Confirmation != spec.ConfirmSuperseded {
		t.Errorf("deploy after a rollback in its window: %v, confirmation %q; want no error, superseded", o.err, o.res.Confirmation)
	}
	if got := w.current(); got != 1 {
		t.Errorf("current generation %d, want 1", got)
	}
	if got := w.confirmState(2); got != spec.ConfirmSuperseded {
		t.Errorf("generation 2 confirmation %q, want superseded", got)
	}
	if _, id, _ := w.get("web.test", "/"); id != "one" {
		t.Errorf("web.test served by %q", id)
	}
	if n := len(w.sup.List()); n != 1 {
		t.Errorf("%d versions run after the rollback, want 1", n)
	}
}

// TestRestartsInWindowAreNoCrash: restarts by hand of a version in its
// confirm window — its process stopped and started again, reported on the
// way — are not crashes: the window confirms it.
func TestRestartsInWindowAreNoCrash(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("one", domains("web.test"))}))
	deployed := w.deployInWindow(mkSpec(map[string]*spec.Service{"web": app("two", domains("web.test"))}), 4*time.Second)
	for i := range 5 {
		if err := w.engine.Restart(t.Context(), "web"); err != nil {
			t.Fatalf("restart %d in the window: %v", i+1, err)
		}
	}
	o := <-deployed
	if o.err != nil || o.res.Confirmation != spec.ConfirmConfirmed {
		t.Fatalf("deploy whose version was restarted by hand in its window: %v, confirmation %q; want it confirmed\n%s", o.err, o.res.Confirmation, strings.Join(w.lines, "\n"))
	}
	if got := w.current(); got != 2 {
		t.Errorf("current generation %d, want 2", got)
	}
}

// TestFailuresOfJoinedErrors: every failing service of a deploy is named.
func TestFailuresOfJoinedErrors(t *testing.T) {
	a := &ServiceError{Service: "a", Step: StepStart, Err: errors.New("boom")}
	b := &ServiceError{Service: "b", Step: StepStart, Err: errors.New("bang")}
	err := errors.Join(a, errors.New("other"), b)
	got := Failures(errors.Join(errors.New("x"), err))
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Errorf("Failures = %v, want [a b]", got)
	}
}

// TestDetachedWindowResumes: a daemon that stops in a confirm window leaves
// it pending (the deploy says so); the next one keeps the previous
// generation's version at hand, finishes the window, confirms, and only
// then stops the old version.
func TestDetachedWindowResumes(t *testing.T) {
	root := t.TempDir()
	w := newWorldAt(t, root)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("one", domains("web.test"))}))
	deployed := w.deployInWindow(mkSpec(map[string]*spec.Service{"web": app("two", domains("web.test"))}), 4*time.Second)
	w.engine.Detach()
	o := <-deployed
	if !errors.Is(o.err, ErrUndecided) || o.res.Confirmation != spec.ConfirmPending {
		t.Fatalf("deploy cut by Detach: %v, confirmation %q; want ErrUndecided, pending", o.err, o.res.Confirmation)
	}
	if got := w.confirmState(2); got != spec.ConfirmPending {
		t.Fatalf("generation 2 confirmation %q after Detach, want pending", got)
	}
	w.letGo()

	next := newWorldAt(t, root)
	if n := len(next.sup.List()); n != 2 {
		t.Errorf("%d versions run after resuming in the window, want 2 (the previous one at hand)", n)
	}
	waitFor(t, 30*time.Second, "generation 2 confirmed", func() bool { return next.confirmState(2) == spec.ConfirmConfirmed })
	waitFor(t, 30*time.Second, "the old version stopped", func() bool { return len(next.sup.List()) == 1 })
	if got := next.current(); got != 2 {
		t.Errorf("current generation %d, want 2", got)
	}
	if _, id, _ := next.get("web.test", "/"); id != "two" {
		t.Errorf("web.test served by %q", id)
	}
}

// TestInvalidError: an input error is ErrInvalid and reads as what went
// wrong, with no prefix.
func TestInvalidError(t *testing.T) {
	base := errors.New("generation 3 is already current")
	err := fmt.Errorf("rollback: %w", invalid(base))
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, base) {
		t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
	}
	var ie *InvalidError
	if !errors.As(err, &ie) || ie.Error() != base.Error() {
		t.Errorf("InvalidError reads %q, want %q", ie, base)
	}
	if errors.Is(errors.New("other"), ErrInvalid) {
		t.Error("any error is ErrInvalid")
	}
}

// TestShutdownInWindowStartsIdle: after a shutdown in a confirm window
// (every process stopped, the window left pending), the next daemon
// starts the versions the window watches, though their service has idle,
// rather than registering them asleep: the window must see them run to
// settle, and nothing sleeps until it does. Of an exclusive service, the
// current version runs and the previous one does not.
func TestShutdownInWindowStartsIdle(t *testing.T) {
	for _, exclusive := range []bool{false, true} {
		t.Run(fmt.Sprintf("exclusive=%v", exclusive), func(t *testing.T) {
			root := t.TempDir()
			w, _ := newSleepyWorldAt(t, root)
			web := func(id string) *spec.Spec {
				return mkSpec(map[string]*spec.Service{"web": app(id, domains("web.test"), func(s *spec.Service) {
					s.Idle = spec.Duration(time.Hour)
					s.Exclusive = exclusive
				})})
			}
			w.mustDeploy(web("one"))
			deployed := w.deployInWindow(web("two"), 3*time.Second)
			w.shutdown()
			if o := <-deployed; !errors.Is(o.err, ErrUndecided) {
				t.Fatalf("deploy cut by a shutdown: %v; want ErrUndecided", o.err)
			}

			next, _ := newSleepyWorldAt(t, root)
			gens, err := next.store.List(context.Background())
			if err != nil || len(gens) != 2 {
				t.Fatalf("stored generations: %d, %v", len(gens), err)
			}
			one, two := gens[0].Instance("web"), gens[1].Instance("web")
			if _, ok := next.sup.Get(two); !ok {
				t.Fatalf("%s, watched by the window, has no process after the resume", two)
			}
			if _, ok := next.sup.Get(one); ok == exclusive {
				t.Errorf("%s (previous, exclusive=%v) has a process: %v", one, exclusive, ok)
			}
			waitFor(t, 30*time.Second, "generation 2 confirmed", func() bool { return next.confirmState(2) == spec.ConfirmConfirmed })
			if _, id, _ := next.get("web.test", "/"); id != "two" {
				t.Errorf("web.test served by %q", id)
			}
		})
	}
}

// TestWindowWaitsOutFailingChecks: a version whose health checks fail as
// its window's deadline passes is not confirmed for the checks it passed
// before: the window waits until a check passes (confirmed) or enough fail
// in a row to make it unhealthy (switched back), though that comes after
// the deadline.
func TestWindowWaitsOutFailingChecks(t *testing.T) {
	for _, heals := range []bool{false, true} {
		t.Run(fmt.Sprintf("heals=%v", heals), func(t *testing.T) {
			w := newWorld(t)
			w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("good", domains("web.test"))}))
			sick := filepath.Join(t.TempDir(), "sick")
			// 15 (or 50) failures 200ms apart: unhealthy 3s (or 10s) after
			// the file appears, long after the 1s window.
			failures := 15
			if heals {
				failures = 50
			}
			next := mkSpec(map[string]*spec.Service{"web": app("sickly", domains("web.test"), env("SICK_FILE", sick),
				healthEvery(200*time.Millisecond, failures))})
			const window = time.Second
			deployed := w.deployInWindow(next, window)
			opened := time.Now()
			if err := os.WriteFile(sick, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if heals {
				key := spec.InstanceKey("web", w.versionOf(t, 2, "web"), "")
				waitFor(t, 10*time.Second, "a failed check past the deadline", func() bool {
					st, ok := w.sup.Status(key)
					return ok && st.Health != nil && !st.Health.OK && time.Since(opened) > window+checkEvery
				})
				select {
				case o := <-deployed:
					t.Fatalf("the window ended (%v, %q) while the version's last check failed", o.err, o.res.Confirmation)
				default:
				}
				os.Remove(sick)
			}
			o := <-deployed
			if heals {
				if o.err != nil || o.res.Confirmation != spec.ConfirmConfirmed {
					t.Errorf("healed: %v, confirmation %q; want confirmed", o.err, o.res.Confirmation)
				}
				return
			}
			fs := Failures(o.err)
			if len(fs) != 1 || fs[0].Step != StepConfirm || !strings.Contains(fs[0].Err.Error(), "failed its health checks") {
				t.Errorf("failures = %v (error %v), want web failing its health checks", fs, o.err)
			}
			if !o.res.RolledBack || o.res.Confirmation != spec.ConfirmFailed {
				t.Errorf("result = %+v, want rolled back, confirmation failed", o.res)
			}
			if _, id, _ := w.get("web.test", "/"); id != "good" {
				t.Errorf("web.test served by %q after the switch back", id)
			}
		})
	}
}

// versionOf returns the version of service name in generation n.
func (w *world) versionOf(t *testing.T, n uint64, name string) spec.Version {
	t.Helper()
	g, err := w.store.Get(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	return g.Versions[name]
}
