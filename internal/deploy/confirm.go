package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// The confirm window.
//
// After the switch, a deploy watches the versions it started for its
// confirm window, as their supervisor sees them: the supervisor's own
// checker runs their health checks (every health.interval), and the window
// only reads what it found. A version that crashes or turns unhealthy (and
// so restarts), or fails for good, fails the confirmation: the previous
// generation, whose versions keep running through the window, is switched
// back and the new versions are stopped. At its deadline, the window waits
// for a version whose last check failed until a check passes (confirmed)
// or enough fail in a row to make it unhealthy (failed): a version failing
// its checks as the window ends is not confirmed for the checks it passed
// before.
//
// The window is recorded with the commit of the generation (pending, its
// deadline and the previous generation), so a daemon killed in the window
// finishes it on its next start (Resume). It runs without the engine's
// lock: the lock is taken again only to settle it. An operation that
// switches during the window ends it: a deploy (its generation then plans
// from, and switches back to, the unconfirmed one) or a rollback; the
// window's generation is then recorded as superseded. A restart of a
// watched service by hand is not a crash: the window watches the new
// process from then on.
//
// After the window, the new versions of a confirmed generation stay
// watched (guard): one that ends failed, its crash restarts spent, is
// reported and its generation switched back if the previous generation is
// still at hand — still stored (gc has not dropped it), and the failed
// generation still the one its deploy made current (no deploy or rollback
// since; after a daemon restart, that is: the current generation is the
// newest). The previous generation's versions are started again where they
// were stopped; if one cannot start, nothing switches and the failure is
// reported.

const (
	// checkEvery is how often the window looks at the watched versions'
	// state; a look is a lock and a copy per version.
	checkEvery = 500 * time.Millisecond
	// guardEvery is how often a confirmed generation's new versions are
	// looked at after the window; a look is a lock and a copy per version.
	guardEvery = time.Second
	// minResumedWindow is the least a window resumed after a restart runs,
	// also when its deadline passed while the daemon was down: long enough
	// to see a version that crashes as it is adopted.
	minResumedWindow = 3 * time.Second
)

// window is an open confirm window.
type window struct {
	gen      *spec.Generation
	prev     *spec.Generation // what a failure switches back to
	watch    []spec.VersionKey
	deadline time.Time
	// ended is closed by endWindowLocked when something else ends the
	// window; endState and endReason (guarded by Engine.mu) say how.
	ended     chan struct{}
	endState  spec.ConfirmState // "": ended undecided (the daemon stops)
	endReason string
}

// ErrUndecided is why a deploy whose confirm window the daemon's stop cut
// short failed: its generation is live and pending, and the next start of
// the daemon finishes the window.
var ErrUndecided = errors.New("its confirm window was cut short by the daemon's stop; the daemon's next start finishes it")

func newWindow(gen, prev *spec.Generation, watch []spec.VersionKey, deadline time.Time) *window {
	return &window{gen: gen, prev: prev, watch: watch, deadline: deadline, ended: make(chan struct{})}
}

// verdict is what watching a window found.
type verdict struct {
	failure     *ServiceError // a watched version failed
	interrupted bool          // watching stopped undecided: the daemon stops
}

// watched is a version under watch: the instance seen first and its
// restarts then.
type watched struct {
	inst     *supervisor.Instance
	restarts int
}

// watch watches w's versions until its deadline, a failure, or the end of
// the window by another operation. It does not hold e.mu.
func (e *Engine) watch(ctx context.Context, w *window) verdict {
	// What runs as the window opens is the base: every restart from here
	// on is a crash in the window.
	seen := map[spec.VersionKey]*watched{}
	for _, k := range w.watch {
		if inst, ok := e.procs.Get(k); ok {
			seen[k] = &watched{inst: inst, restarts: inst.Status().Restarts}
		}
	}
	deadline := time.NewTimer(time.Until(w.deadline))
	defer deadline.Stop()
	tick := time.NewTicker(checkEvery)
	defer tick.Stop()
	over := false // the deadline passed; confirm once every version is seen
	for {
		select {
		case <-w.ended:
			return verdict{}
		case <-ctx.Done():
			return verdict{interrupted: true}
		case <-deadline.C:
			over = true
		case <-tick.C:
		}
		all, passing := true, true
		for _, k := range w.watch {
			failure, known, ok := e.check(k, seen)
			if failure != nil {
				return verdict{failure: failure}
			}
			all, passing = all && known, passing && ok
		}
		if over && all && passing {
			return verdict{}
		}
	}
}

// check looks at one watched version: a crash, a turn to unhealthy (each
// a restart, or one about to come) or a failure is a failure. known is
// false for a version the supervisor does not know at this moment: one
// being restarted by hand, which decides nothing. passing is false while
// its last health check failed. (A daemon that stops or shuts down ends
// the window itself: see Detach and Shutdown.)
func (e *Engine) check(k spec.VersionKey, seen map[spec.VersionKey]*watched) (failure *ServiceError, known, passing bool) {
	inst, ok := e.procs.Get(k)
	if !ok {
		return nil, false, false
	}
	st := inst.Status()
	w := seen[k]
	if w == nil || w.inst != inst {
		// First look, or a restart by hand replaced the process.
		w = &watched{inst: inst, restarts: st.Restarts}
		seen[k] = w
	}
	fail := func(format string, args ...any) *ServiceError {
		return &ServiceError{Service: st.Service, Version: st.Version, Step: StepConfirm, Err: fmt.Errorf("%s "+format, append([]any{k}, args...)...)}
	}
	restarted := st.Restarts > w.restarts
	switch {
	case st.State == supervisor.StateFailed:
		return fail("failed: %s", st.LastError), true, false
	case st.State == supervisor.StateUnhealthy || restarted && st.LastExit == "unhealthy":
		return fail("failed its health checks after the switch (%s)", st.LastError), true, false
	case restarted || st.State == supervisor.StateStarting:
		// Every watched version was ready when the window opened: starting
		// again means it crashed and awaits its restart.
		return fail("crashed after the switch (%s)", st.LastError), true, false
	case st.State == supervisor.StateStopped:
		return nil, false, false // being stopped by a restart by hand
	}
	return nil, true, st.Health == nil || st.Health.OK
}

// settle ends w with what watching found: it records the confirmation and
// drains the old versions, or switches back. It takes e.mu.
func (e *Engine) settle(ctx context.Context, w *window, v verdict, res *Result, progress Progress) (*Result, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	env := w.gen.EnvOrDefault()
	if e.windows[env] != w {
		// Another operation ended the window first; it switched (or the
		// daemon is stopping) and the old versions are its to drain.
		if w.endState == "" {
			res.Confirmation = spec.ConfirmPending
			return res, fmt.Errorf("generation %d is live, but %w", w.gen.Number, ErrUndecided)
		}
		res.Confirmation = w.endState
		if v.failure != nil {
			// It failed, but what switched meanwhile stands: say so.
			return res, fmt.Errorf("%w; not switched back: %s", v.failure, w.endReason)
		}
		progress("generation %d went live; its confirm window ended early: %s", w.gen.Number, w.endReason)
		return res, nil
	}
	delete(e.windows, env)
	if v.interrupted {
		res.Confirmation = spec.ConfirmPending
		return res, fmt.Errorf("generation %d is live, but %w", w.gen.Number, ErrUndecided)
	}
	if v.failure != nil {
		res.Confirmation = spec.ConfirmFailed
		progress("%v; switching back to generation %d", v.failure, w.prev.Number)
		stopped, aborted, err := e.switchBackLocked(ctx, w.gen, w.prev, v.failure, progress)
		res.Stopped, res.Aborted = stopped, aborted
		if err != nil {
			return res, fmt.Errorf("%w; switching back to generation %d failed too: %w", v.failure, w.prev.Number, err)
		}
		res.RolledBack, res.RolledBackFrom, res.Generation = true, w.gen.Number, w.prev.Number
		return res, fmt.Errorf("deploy rolled back to generation %d: %w", w.prev.Number, v.failure)
	}
	res.Confirmation = spec.ConfirmConfirmed
	progress("confirmed: generation %d stayed up and healthy", w.gen.Number)
	e.record(ctx, w.gen.Number, &spec.Confirm{State: spec.ConfirmConfirmed, Previous: w.gen.Confirm.Previous}, progress)
	res.Stopped, res.Aborted = e.drain(context.WithoutCancel(ctx), progress)
	e.armLocked(w.gen, w.prev, w.watch)
	progress("generation %d deployed: %d started, %d stopped", w.gen.Number, len(res.Started), len(res.Stopped))
	return res, nil
}

// record stores how generation n's window ended; a failure to is reported,
// not fatal: the state of the machine is right, only its history lags.
func (e *Engine) record(ctx context.Context, n uint64, c *spec.Confirm, progress Progress) {
	if err := e.store.SetConfirm(ctx, n, c, 0, 0); err != nil {
		progress("recording the confirmation of generation %d: %v", n, err)
	}
}

// endWindowLocked ends env's open window, if any, for an operation that
// switches in env (state ConfirmSuperseded, with why), or undecided (state
// ""), leaving it pending in the store. e.mu must be held.
func (e *Engine) endWindowLocked(ctx context.Context, env string, state spec.ConfirmState, why string, progress Progress) {
	w := e.windows[env]
	if w == nil {
		return
	}
	delete(e.windows, env)
	w.endState, w.endReason = state, why
	close(w.ended)
	if state != "" {
		e.record(ctx, w.gen.Number, &spec.Confirm{State: state, Previous: w.gen.Confirm.Previous, Reason: why}, progress)
	}
}

// switchBackLocked makes prev current again after generation failed failed
// its confirmation (why): it starts what of prev does not run, records
// failed as failed and prev as current in one step, switches, and drains
// the rest. If it cannot, failed stays current, recorded as failed. e.mu
// must be held.
func (e *Engine) switchBackLocked(ctx context.Context, failed, prev *spec.Generation, why error, progress Progress) ([]string, int64, error) {
	rec := &spec.Confirm{State: spec.ConfirmFailed, Previous: prev.Number, Reason: why.Error()}
	// Compare-and-swap from failed: the engine's lock keeps its own
	// operations out, so a conflict is another writer, whose switch stands.
	_, err := e.apply(ctx, prev, func([]string) error {
		return e.store.SetConfirm(ctx, failed.Number, rec, failed.Number, prev.Number)
	}, progress)
	if err != nil {
		rec.Reason = fmt.Sprintf("%s; switching back to generation %d failed: %v", rec.Reason, prev.Number, err)
		e.record(ctx, failed.Number, rec, progress)
		return nil, 0, err
	}
	stopped, aborted := e.drain(context.WithoutCancel(ctx), progress)
	return stopped, aborted, nil
}

// previous returns the generation cur's pending confirmation would switch
// back to, if it is still stored; else nil.
func (e *Engine) previous(ctx context.Context, cur *spec.Generation, progress Progress) *spec.Generation {
	c := cur.Confirm
	if c == nil || c.Previous == 0 || c.State != spec.ConfirmPending {
		return nil
	}
	prev, err := e.store.Get(ctx, c.Previous)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			progress("generation %d, to switch back to: %v", c.Previous, err)
		}
		return nil
	}
	return prev
}

// newIn returns the version keys of g that prev does not hold.
func newIn(g, prev *spec.Generation) []spec.VersionKey {
	var out []spec.VersionKey
	for name := range g.Versions {
		k := g.Instance(name)
		if prev == nil || prev.Instance(name) != k {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// settleStale records as superseded every pending window but cur's: a
// daemon died in it after a later generation was made current.
func (e *Engine) settleStale(ctx context.Context, cur *spec.Generation, progress Progress) {
	gens, err := e.store.List(ctx)
	if err != nil {
		progress("listing generations: %v", err)
		return
	}
	for _, g := range gens {
		if g.Number != cur.Number && g.EnvOrDefault() == cur.EnvOrDefault() && g.Confirm != nil && g.Confirm.State == spec.ConfirmPending {
			e.record(ctx, g.Number, &spec.Confirm{State: spec.ConfirmSuperseded, Previous: g.Confirm.Previous,
				Reason: fmt.Sprintf("generation %d was made current before the window ended", cur.Number)}, progress)
		}
	}
}

// resumeConfirm finishes, after a daemon start, what cur's confirmation
// left undone: a pending window runs on in the background (at least
// minResumedWindow); a confirmed generation is guarded. (A switch back is
// recorded in one step, so no crash leaves one half done.) e.mu must be
// held.
func (e *Engine) resumeConfirm(ctx context.Context, cur, prev *spec.Generation, progress Progress) {
	c := cur.Confirm
	if c == nil {
		return
	}
	switch c.State {
	case spec.ConfirmPending:
		if prev == nil {
			progress("generation %d awaited confirmation, but generation %d to switch back to is gone: it stays live, unconfirmed", cur.Number, c.Previous)
			e.record(ctx, cur.Number, &spec.Confirm{State: spec.ConfirmSkipped, Previous: c.Previous, Reason: "the previous generation was gone when the window resumed"}, progress)
			return
		}
		deadline := c.Deadline
		if d := time.Now().Add(minResumedWindow); deadline.Before(d) {
			deadline = d
		}
		w := newWindow(cur, prev, newIn(cur, prev), deadline)
		e.windows[cur.EnvOrDefault()] = w
		progress("resuming the confirm window of generation %d until %s", cur.Number, deadline.Format(time.RFC3339))
		// A watched version that could not start again (it crashed, or
		// turned unhealthy while the daemon was down) fails the window
		// now: the previous generation comes back.
		failure := e.failedOnResume(w)
		go func() {
			ctx := context.WithoutCancel(ctx)
			res := &Result{Generation: cur.Number}
			v := verdict{failure: failure}
			if failure == nil {
				v = e.watch(ctx, w)
			}
			if _, err := e.settle(ctx, w, v, res, e.logf); err != nil {
				e.logf("generation %d: %v", cur.Number, err)
			}
		}()
	case spec.ConfirmConfirmed:
		if c.Previous == 0 {
			return
		}
		gens, err := e.store.List(ctx)
		if err != nil {
			return
		}
		for _, g := range gens {
			if g.EnvOrDefault() == cur.EnvOrDefault() && g.Number > cur.Number {
				return // a rollback made an older generation current
			}
		}
		if p, err := e.store.Get(ctx, c.Previous); err == nil {
			e.armLocked(cur, p, newIn(cur, p))
		}
	}
}

// failedOnResume returns the failure of the first version w watches that
// a resume could not start (left asleep with why: Agent.parkFailed); nil
// if none.
func (e *Engine) failedOnResume(w *window) *ServiceError {
	for _, k := range w.watch {
		if sl, ok := e.route.Sleeping(k); ok && sl.Asleep && sl.WakeError != nil {
			return &ServiceError{Service: k.Service(), Version: w.gen.Versions[k.Service()], Step: StepConfirm,
				Err: fmt.Errorf("%s did not start again after the daemon's restart: %w", k, sl.WakeError)}
		}
	}
	return nil
}

// guard watches a confirmed generation's new versions after its window.
type guard struct {
	gen, prev *spec.Generation
	watch     []spec.VersionKey
	stop      chan struct{}
}

// armLocked starts guarding g's new versions, after its window, for a
// version that fails for good. e.mu must be held.
func (e *Engine) armLocked(g, prev *spec.Generation, watch []spec.VersionKey) {
	env := g.EnvOrDefault()
	e.disarmLocked(env)
	if prev == nil || len(watch) == 0 {
		return
	}
	gd := &guard{gen: g, prev: prev, watch: watch, stop: make(chan struct{})}
	e.guards[env] = gd
	go e.runGuard(gd)
}

// disarmLocked stops guarding env's generation. e.mu must be held.
func (e *Engine) disarmLocked(env string) {
	if gd := e.guards[env]; gd != nil {
		close(gd.stop)
		delete(e.guards, env)
	}
}

// releaseLocked ends every open window undecided, pending in the store,
// and stops every guard: the daemon lets go. e.mu must be held.
func (e *Engine) releaseLocked() {
	for env := range e.windows {
		e.endWindowLocked(context.Background(), env, "", "", func(string, ...any) {})
	}
	for env := range e.guards {
		e.disarmLocked(env)
	}
}

// runGuard looks at gd's versions every guardEvery until one has failed for
// good, then reports it and switches back.
func (e *Engine) runGuard(gd *guard) {
	tick := time.NewTicker(guardEvery)
	defer tick.Stop()
	for {
		select {
		case <-gd.stop:
			return
		case <-tick.C:
		}
		for _, k := range gd.watch {
			// A version the supervisor does not know was stopped or let go:
			// only a failure it reports counts.
			st, ok := e.procs.Status(k)
			if ok && st.State == supervisor.StateFailed {
				e.failedLater(gd, &ServiceError{Service: st.Service, Version: st.Version, Step: StepConfirm,
					Err: fmt.Errorf("%s failed after its confirm window: %s", k, st.LastError)})
				return
			}
		}
	}
}

// failedLater switches back from a guarded generation whose version failed.
func (e *Engine) failedLater(gd *guard, why *ServiceError) {
	e.mu.Lock()
	defer e.mu.Unlock()
	env := gd.gen.EnvOrDefault()
	if e.guards[env] != gd {
		return // disarmed meanwhile: another operation switched
	}
	delete(e.guards, env)
	e.logf("%v; switching back to generation %d", why, gd.prev.Number)
	if _, _, err := e.switchBackLocked(context.Background(), gd.gen, gd.prev, why, e.logf); err != nil {
		e.logf("switching back to generation %d: %v", gd.prev.Number, err)
		return
	}
	e.logf("switched back to generation %d: generation %d failed after its confirm window", gd.prev.Number, gd.gen.Number)
}
