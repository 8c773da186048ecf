package deploy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"hostel/internal/node"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// The confirm window.
//
// After the switch, a deploy watches the versions it started for its
// confirm window, through what the nodes report of them (node.Instance):
// a version that crashes (and so restarts), turns unhealthy or fails for
// good fails the confirmation, and the previous generation, whose
// versions the nodes keep running through the window (Desired.Keep), is
// switched back. At its deadline a version whose last health check
// failed keeps the window open until a check passes or it turns
// unhealthy.
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
	// checkEvery is how often a window looks at its versions' reports
	// besides every change to them: its deadline is checked then.
	checkEvery = 500 * time.Millisecond
	// minResumedWindow is the least a window resumed after a restart runs,
	// also when its deadline passed while the daemon was down: long enough
	// for two health checks.
	minResumedWindow = 3 * time.Second
)

// window is an open confirm window.
type window struct {
	// rev is the revision the window opened at: the store's view of the
	// reports has caught up with its switch once it follows rev.
	rev      uint64
	gen      *spec.Generation
	prev     *spec.Generation // what a failure switches back to
	watch    []spec.VersionKey
	deadline time.Time
	// ended is closed by endWindowLocked when something else ends the
	// window; endState and endReason (guarded by Engine.mu) say how.
	ended     chan struct{}
	endState  spec.ConfirmState // "": ended undecided (the daemon stops)
	endReason string

	// restarting counts the restarts by hand of each version under way:
	// what its reports say meanwhile (stopped, starting) decides nothing.
	// rebased are the versions whose restart by hand ended since the
	// window last looked: their next reports are a new base, not a crash.
	mu         sync.Mutex
	restarting map[spec.VersionKey]int
	rebased    map[spec.VersionKey]bool
}

// ErrUndecided is why a deploy whose confirm window the daemon's stop cut
// short failed: its generation is live and pending, and the next start of
// the daemon finishes the window.
var ErrUndecided = errors.New("its confirm window was cut short by the daemon's stop; the daemon's next start finishes it")

func newWindow(rev uint64, gen, prev *spec.Generation, watch []spec.VersionKey, deadline time.Time) *window {
	return &window{rev: rev, gen: gen, prev: prev, watch: watch, deadline: deadline, ended: make(chan struct{}),
		restarting: map[spec.VersionKey]int{}, rebased: map[spec.VersionKey]bool{}}
}

// restart tells the window that key is being restarted by hand, from
// before the nodes are asked to: its reports decide nothing until done is
// called — once the nodes did it and the engine's view of the reports
// caught up — and the next ones are a new base. A restart by hand is not
// a crash, whenever the window looks.
func (w *window) restart(key spec.VersionKey) (done func()) {
	w.mu.Lock()
	w.restarting[key]++
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.restarting[key]--; w.restarting[key] <= 0 {
			delete(w.restarting, key)
		}
		w.rebased[key] = true
	}
}

// handled reports whether key is being restarted by hand, and whether a
// restart by hand of it ended since last asked.
func (w *window) handled(key spec.VersionKey) (restarting, rebased bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	rebased = w.rebased[key]
	delete(w.rebased, key)
	return w.restarting[key] > 0, rebased
}

// verdict is what watching a window found.
type verdict struct {
	failure     *ServiceError // a watched version failed
	interrupted bool          // watching stopped undecided: the daemon stops
	// superseded is the generation another writer made current in the
	// window's environment meanwhile: its switch stands.
	superseded uint64
}

// watch watches w's versions until its deadline, a failure, or the end of
// the window by another operation. It does not hold e.mu.
func (e *Engine) watch(ctx context.Context, w *window) verdict {
	// What each node reports as the window opens is the base: every
	// restart from here on is a crash in the window.
	base := map[spec.VersionKey]map[string]int{}
	for _, k := range w.watch {
		ins, _ := e.reports.of(k)
		base[k] = map[string]int{}
		for n, in := range ins {
			base[k][n] = in.Restarts
		}
	}
	deadline := time.NewTimer(time.Until(w.deadline))
	defer deadline.Stop()
	tick := time.NewTicker(checkEvery)
	defer tick.Stop()
	over := false // the deadline passed; confirm once every version is seen
	env := w.gen.EnvOrDefault()
	for {
		changed := e.reports.next()
		if cur, at := e.reports.current(env); at >= w.rev && cur != w.gen.Number {
			select {
			case <-w.ended: // this engine switched: settle knows
				return verdict{}
			default:
				return verdict{superseded: cur}
			}
		}
		all, passing := true, true
		for _, k := range w.watch {
			restarting, rebased := w.handled(k)
			if rebased {
				base[k] = nil
			}
			if restarting {
				all = false // decided once it is back
				continue
			}
			failure, known, ok := e.check(w, k, base)
			if failure != nil {
				return verdict{failure: failure}
			}
			all, passing = all && known, passing && ok
		}
		if over && all && passing {
			return verdict{}
		}
		select {
		case <-w.ended:
			return verdict{}
		case <-ctx.Done():
			return verdict{interrupted: true}
		case <-deadline.C:
			over = true
		case <-changed:
		case <-tick.C:
		}
	}
}

// check looks at what the nodes report of one watched version: a crash,
// a turn to unhealthy (each a restart, or one about to come) or a failure
// is a failure. known is false while no node reports it running: one
// being restarted by hand decides nothing. passing is false while its
// last health check failed.
func (e *Engine) check(w *window, k spec.VersionKey, base map[spec.VersionKey]map[string]int) (failure *ServiceError, known, passing bool) {
	ins, _ := e.reports.of(k)
	if base[k] == nil {
		base[k] = map[string]int{}
	}
	fail := func(format string, args ...any) *ServiceError {
		return &ServiceError{Service: k.Service(), Version: w.gen.Versions[k.Service()], Step: StepConfirm, Err: fmt.Errorf("%s "+format, append([]any{k}, args...)...)}
	}
	known, passing = len(ins) > 0, true
	for _, n := range slices.Sorted(maps.Keys(ins)) {
		in := ins[n]
		b, seen := base[k][n]
		if !seen {
			b = in.Restarts
			base[k][n] = b
		}
		restarted := in.Restarts > b
		switch {
		case in.State == supervisor.StateFailed:
			return fail("failed: %s", in.Error), true, false
		case in.State == supervisor.StateUnhealthy || restarted && in.LastExit == "unhealthy":
			return fail("failed its health checks after the switch (%s)", in.Error), true, false
		case restarted || in.State == supervisor.StateStarting:
			// Every watched version was ready when the window opened:
			// starting again means it crashed and awaits its restart.
			return fail("crashed after the switch (%s)", in.Error), true, false
		case in.State == supervisor.StateStopped || in.State == node.StateIdle:
			known = false // being stopped by a restart by hand
		}
		if in.Health != nil && !in.Health.OK {
			passing = false
		}
	}
	return nil, known, passing
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
	if v.superseded != 0 {
		delete(e.windows, env)
		why := fmt.Sprintf("generation %d was made current by another writer before the window ended", v.superseded)
		e.record(ctx, w.gen.Number, &spec.Confirm{State: spec.ConfirmSuperseded, Previous: w.gen.Confirm.Previous, Reason: why}, progress)
		res.Confirmation, res.Generation = spec.ConfirmSuperseded, v.superseded
		return res, fmt.Errorf("generation %d went live, but %s: %w", w.gen.Number, why, store.ErrConflict)
	}
	if v.interrupted {
		delete(e.windows, env)
		res.Confirmation = spec.ConfirmPending
		return res, fmt.Errorf("generation %d is live, but %w", w.gen.Number, ErrUndecided)
	}
	if v.failure != nil {
		delete(e.windows, env)
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
	delete(e.windows, env)
	// The window's end and every node's Desired without the previous
	// generation, in one transaction: the nodes drain it. A store that
	// fails it is asked again for a while: until it is recorded, the
	// previous generation runs on (and the next start ends the window).
	c := &spec.Confirm{State: spec.ConfirmConfirmed, Previous: w.gen.Confirm.Previous}
	var rv *view
	rev, err := retry(ctx, func() (uint64, error) {
		var err error
		if rv, err = e.read(ctx); err != nil {
			return 0, err
		}
		return e.commit(ctx, rv, e.keptByWindows(), nil, func(also []store.Write) error {
			return e.writer().SetConfirm(ctx, w.gen.Number, c, 0, 0, also...)
		})
	}, func(err error) {
		progress("recording the confirmation of generation %d: %v; trying again", w.gen.Number, err)
	})
	if err != nil {
		progress("recording the confirmation of generation %d: %v; the daemon's next start records it", w.gen.Number, err)
	} else {
		res.Stopped, res.Aborted = e.drained(context.WithoutCancel(ctx), rv, rev, progress)
	}
	e.armLocked(w.gen, w.prev, w.watch)
	progress("generation %d deployed: %d started, %d stopped", w.gen.Number, len(res.Started), len(res.Stopped))
	return res, nil
}

// record stores how generation n's window ended, asking a store that
// fails again for a while; a failure to is reported, not fatal: what runs
// is right, only its history lags.
func (e *Engine) record(ctx context.Context, n uint64, c *spec.Confirm, progress Progress) {
	_, err := retry(ctx, func() (uint64, error) { return 0, e.writer().SetConfirm(ctx, n, c, 0, 0) }, nil)
	if err != nil {
		progress("recording the confirmation of generation %d: %v", n, err)
	}
}

// retryFor bounds how long a write that must be made — the end of a
// confirm window — is asked of a store that fails it.
const retryFor = time.Minute

// retry calls fn until it succeeds, a conflict or a lost leadership (which
// no retry mends), or retryFor passed, waiting longer each time; failed is
// told each failure that is tried again.
func retry(ctx context.Context, fn func() (uint64, error), failed func(error)) (uint64, error) {
	deadline := time.Now().Add(retryFor)
	wait := 50 * time.Millisecond
	for {
		rev, err := fn()
		if err == nil || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotLeader) || errors.Is(err, store.ErrNotFound) || time.Now().After(deadline) {
			return rev, err
		}
		if failed != nil {
			failed(err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
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
// its confirmation (why): the nodes start what of prev does not run, then
// failed is recorded failed and prev current in one transaction with
// every node's Desired, the routes switch, and the rest drains. If it
// cannot, failed stays current, recorded as failed. e.mu must be held.
func (e *Engine) switchBackLocked(ctx context.Context, failed, prev *spec.Generation, why error, progress Progress) ([]string, int64, error) {
	rec := &spec.Confirm{State: spec.ConfirmFailed, Previous: prev.Number, Reason: why.Error()}
	fail := func(err error) ([]string, int64, error) {
		rec.Reason = fmt.Sprintf("%s; switching back to generation %d failed: %v", rec.Reason, prev.Number, err)
		e.record(ctx, failed.Number, rec, progress)
		return nil, 0, err
	}
	v, err := e.read(ctx)
	if err != nil {
		return fail(err)
	}
	if _, err := e.stage(ctx, v, prev, nil, progress); err != nil {
		return fail(err)
	}
	// Compare-and-swap from failed: the engine's lock keeps its own
	// operations out, so a conflict is another writer, whose switch stands.
	rev, err := e.commit(ctx, v, e.keptByWindows(), prev, func(also []store.Write) error {
		return e.writer().SetConfirm(ctx, failed.Number, rec, failed.Number, prev.Number, also...)
	})
	if err != nil {
		e.withdraw(context.WithoutCancel(ctx), progress)
		return fail(err)
	}
	e.switched(ctx, rev, prev, progress)
	stopped, aborted := e.drained(context.WithoutCancel(ctx), v, rev, progress)
	return stopped, aborted, nil
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

// runGuard looks at gd's versions' reports, at each change, until one has
// failed for good, then reports it and switches back.
func (e *Engine) runGuard(gd *guard) {
	for {
		changed := e.reports.next()
		for _, k := range gd.watch {
			// Only a failure a node reports counts: a version no node
			// reports was stopped or let go.
			ins, _ := e.reports.of(k)
			for _, in := range ins {
				if in.State == supervisor.StateFailed {
					e.failedLater(gd, &ServiceError{Service: k.Service(), Version: gd.gen.Versions[k.Service()], Step: StepConfirm,
						Err: fmt.Errorf("%s failed after its confirm window: %s", k, in.Error)})
					return
				}
			}
		}
		select {
		case <-gd.stop:
			return
		case <-changed:
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
