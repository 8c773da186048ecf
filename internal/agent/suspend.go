package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// holder is the router's hold, which an exclusive handover and a suspend
// hold a version's requests with (apart from a pause by hand).
type holder interface {
	Hold(key spec.VersionKey, bound time.Duration) error
	Unhold(key spec.VersionKey) error
}

var _ holder = (*router.Router)(nil)

// ErrNotRunning means a version the agent does not run was to be
// suspended or restarted.
var ErrNotRunning = errors.New("not running here")

// Suspend stops key's process for a while — a database restore runs
// meanwhile — keeping it a running version: its backend and the
// endpoints that reach it stay, its new requests are held (up to bound;
// then 503), the requests in flight finish first (up to its stop grace;
// the rest end with 504). Unsuspend starts it again with the same
// configuration. A version asleep has no process: it is only held.
func (a *Agent) Suspend(ctx context.Context, key spec.VersionKey, bound time.Duration) error {
	a.runMu.Lock()
	v := a.running[key]
	a.runMu.Unlock()
	if v == nil || v.draining {
		return fmt.Errorf("suspend %s: %w", key, ErrNotRunning)
	}
	if v.suspended != nil {
		return nil
	}
	if h, ok := a.route.(holder); ok {
		if err := h.Hold(key, bound); err != nil {
			return fmt.Errorf("suspend %s: %w", key, err)
		}
	}
	inst, running := a.procs.Get(key)
	if !running {
		cfg := supervisor.Config{}
		a.runMu.Lock()
		v.suspended = &cfg // asleep: nothing to start again
		a.runMu.Unlock()
		return nil
	}
	cfg := inst.Config()
	wctx, cancel := context.WithTimeout(ctx, cfg.StopGrace)
	if err := a.route.WaitIdle(wctx, key); err != nil {
		a.route.Abort(key)
	}
	cancel()
	if err := a.procs.Stop(context.WithoutCancel(ctx), key); err != nil {
		return fmt.Errorf("suspend %s: %w", key, err)
	}
	a.runMu.Lock()
	v.suspended = &cfg
	a.runMu.Unlock()
	return nil
}

// Unsuspend starts a version Suspend stopped again, with the config it
// ran with, waits until it is ready and releases its held requests to
// it. A version that was asleep is only released.
func (a *Agent) Unsuspend(ctx context.Context, key spec.VersionKey) error {
	a.runMu.Lock()
	v := a.running[key]
	var cfg *supervisor.Config
	if v != nil {
		cfg = v.suspended
	}
	a.runMu.Unlock()
	if cfg == nil {
		return nil
	}
	h, _ := a.route.(holder)
	release := func() {
		if h != nil {
			h.Unhold(key)
		}
	}
	if cfg.Service == "" { // it slept
		a.clearSuspended(v)
		release()
		return nil
	}
	inst, err := a.procs.Start(*cfg)
	if err == nil {
		err = inst.WaitReady(ctx)
	}
	a.clearSuspended(v)
	if err != nil {
		release()
		return fmt.Errorf("starting %s again: %w", key, err)
	}
	a.route.AddBackend(key, inst.Addr())
	release()
	return nil
}

func (a *Agent) clearSuspended(v *version) {
	a.runMu.Lock()
	v.suspended = nil
	a.runMu.Unlock()
}

// Suspended returns the versions Suspend stopped, sorted.
func (a *Agent) Suspended() []spec.VersionKey {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	var out []spec.VersionKey
	for k, v := range a.running {
		if v.suspended != nil {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// waker is the router's scale to zero, which a restart of a sleeping
// version wakes it through.
type waker interface {
	Wake(ctx context.Context, key spec.VersionKey) error
	Sleeping(key spec.VersionKey) (router.SleepStatus, bool)
}

// restarter is the supervisor's restart in place.
type restarter interface {
	Restart(ctx context.Context, key spec.VersionKey) error
}

// Restart restarts the running version key in place (same version, same
// configuration); a sleeping one is woken instead: there is no process to
// restart, and the wake starts one afresh. One asleep and paused by hand
// is refused: its first request after the resume starts it.
func (a *Agent) Restart(ctx context.Context, key spec.VersionKey) error {
	if !a.isRunning(key) {
		return fmt.Errorf("restart %s: %w", key, ErrNotRunning)
	}
	if w, ok := a.route.(waker); ok {
		// Asleep by the router's word: its process may still be stopping.
		if sl, ok := w.Sleeping(key); ok && sl.Asleep {
			if sl.Paused {
				return fmt.Errorf("restart %s: %w", key, ErrAsleepAndPaused)
			}
			if err := w.Wake(ctx, key); err != nil {
				return fmt.Errorf("restart %s: %w", key, err)
			}
			if _, running := a.procs.Get(key); running {
				return nil
			}
		}
	}
	r, ok := a.procs.(restarter)
	if !ok {
		return fmt.Errorf("restart %s: the supervisor cannot restart in place", key)
	}
	if err := r.Restart(ctx, key); err != nil {
		return fmt.Errorf("restart %s: %w", key, err)
	}
	if inst, ok := a.procs.Get(key); ok {
		a.route.AddBackend(key, inst.Addr())
	}
	return nil
}

// ErrAsleepAndPaused refuses a restart of a version asleep and paused by
// hand: a wake would wait for the resume.
var ErrAsleepAndPaused = errors.New("asleep and paused: its first request after hostel resume starts it")
