package deploy

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// Start reads what the nodes report of their instances and follows it
// until ctx ends: the confirm windows and the guards read it. Call it
// before the engine is used.
func (e *Engine) Start(ctx context.Context) error { return e.reports.start(ctx) }

// Recover takes up where a previous engine left, before the nodes start:
// a generation a deploy left staged (it died before its commit) is
// withdrawn — the nodes stop what was started for it — and a previous
// generation a pending confirm window may switch back to is kept running.
func (e *Engine) Recover(ctx context.Context, progress Progress) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return err
	}
	var keep []uint64
	for _, env := range slices.Sorted(maps.Keys(v.snap.Currents)) {
		if prev := pendingPrevious(v, v.snap.Currents[env]); prev != nil {
			keep = append(keep, prev.Number)
		}
	}
	if _, err := e.writeDesired(ctx, v, keep, nil, nil); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	return nil
}

// pendingPrevious returns the generation cur's pending confirmation would
// switch back to, if it is still stored; else nil.
func pendingPrevious(v *view, cur *spec.Generation) *spec.Generation {
	c := cur.Confirm
	if c == nil || c.Previous == 0 || c.State != spec.ConfirmPending {
		return nil
	}
	return v.generation(c.Previous)
}

// Resume finishes, once the nodes run again after a daemon start, what
// the confirm windows left undone: a pending window runs on in the
// background (at least minResumedWindow), reporting through the engine's
// log, and fails at once if a version it watches could not start again;
// a confirmed generation is guarded; a window left pending by a
// generation made current since is recorded superseded.
func (e *Engine) Resume(ctx context.Context, progress Progress) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return err
	}
	for _, env := range slices.Sorted(maps.Keys(v.snap.Currents)) {
		cur := v.snap.Currents[env]
		e.settleStale(ctx, v, cur, progress)
		e.resumeConfirm(ctx, v, cur, progress)
	}
	return nil
}

// settleStale records as superseded every pending window of cur's
// environment but cur's: a daemon died in it after a later generation was
// made current.
func (e *Engine) settleStale(ctx context.Context, v *view, cur *spec.Generation, progress Progress) {
	for _, g := range v.snap.Generations {
		if g.Number != cur.Number && g.EnvOrDefault() == cur.EnvOrDefault() && g.Confirm != nil && g.Confirm.State == spec.ConfirmPending {
			e.record(ctx, g.Number, &spec.Confirm{State: spec.ConfirmSuperseded, Previous: g.Confirm.Previous,
				Reason: fmt.Sprintf("generation %d was made current before the window ended", cur.Number)}, progress)
		}
	}
}

// resumeConfirm finishes, after a daemon start, what cur's confirmation
// left undone. (A switch back is recorded in one step, so no crash leaves
// one half done.) e.mu must be held.
func (e *Engine) resumeConfirm(ctx context.Context, v *view, cur *spec.Generation, progress Progress) {
	c := cur.Confirm
	if c == nil {
		return
	}
	switch c.State {
	case spec.ConfirmPending:
		prev := pendingPrevious(v, cur)
		if prev == nil {
			progress("generation %d awaited confirmation, but generation %d to switch back to is gone: it stays live, unconfirmed", cur.Number, c.Previous)
			e.record(ctx, cur.Number, &spec.Confirm{State: spec.ConfirmSkipped, Previous: c.Previous, Reason: "the previous generation was gone when the window resumed"}, progress)
			return
		}
		deadline := c.Deadline
		if d := time.Now().Add(minResumedWindow); deadline.Before(d) {
			deadline = d
		}
		w := newWindow(v.snap.Revision, cur, prev, newIn(cur, prev), deadline)
		e.windows[cur.EnvOrDefault()] = w
		progress("resuming the confirm window of generation %d until %s", cur.Number, deadline.Format(time.RFC3339))
		// A watched version that could not start again (it crashed, or
		// turned unhealthy while the daemon was down) fails the window
		// now: the previous generation comes back.
		failure := e.failedOnResume(w)
		go func() {
			ctx := context.WithoutCancel(ctx)
			res := &Result{Generation: cur.Number}
			vd := verdict{failure: failure}
			if failure == nil {
				vd = e.watch(ctx, w)
			}
			if _, err := e.settle(ctx, w, vd, res, e.logf); err != nil {
				e.logf("generation %d: %v", cur.Number, err)
			}
		}()
	case spec.ConfirmConfirmed:
		if c.Previous == 0 {
			return
		}
		for _, g := range v.snap.Generations {
			if g.EnvOrDefault() == cur.EnvOrDefault() && g.Number > cur.Number {
				return // a rollback made an older generation current
			}
		}
		if p := v.generation(c.Previous); p != nil {
			e.armLocked(cur, p, newIn(cur, p))
		}
	}
}

// failedOnResume returns the failure of the first version w watches that
// a node reports failed (its start after the daemon's could not start
// it); nil if none.
func (e *Engine) failedOnResume(w *window) *ServiceError {
	for _, k := range w.watch {
		ins, _ := e.reports.of(k)
		for _, in := range ins {
			if in.State == supervisor.StateFailed {
				return &ServiceError{Service: k.Service(), Version: w.gen.Versions[k.Service()], Step: StepConfirm,
					Err: fmt.Errorf("%s did not start again after the daemon's restart: %s", k, in.Error)}
			}
		}
	}
	return nil
}

// Detach ends an open confirm window undecided, pending in the store for
// the next daemon to finish, and stops watching confirmed generations:
// what a daemon that stops calls before it lets go of its services.
func (e *Engine) Detach() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.releaseLocked()
}
