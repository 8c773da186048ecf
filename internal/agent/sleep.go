package agent

import (
	"context"
	"errors"
	"fmt"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// SetAsleep tells the agent which versions sleep (scale to zero,
// internal/idle): their processes are stopped, yet they are running
// versions — routed, woken by their next request — that a reconcile must
// neither start again nor take for new. Call it before the agent is used.
func (a *Agent) SetAsleep(asleep func(spec.VersionKey) bool) { a.asleep = asleep }

// Needs returns the exact versions key was built against; false if key is
// not a version the agent runs, or one being drained.
func (a *Agent) Needs(key spec.VersionKey) ([]spec.VersionKey, bool) {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	v := a.running[key]
	if v == nil || v.draining {
		return nil, false
	}
	return append([]spec.VersionKey(nil), v.needs...), true
}

// Sleeper is what the agent needs of scale to zero's process side
// (idle.Sleeper) to register versions asleep.
type Sleeper interface {
	// Adopt takes cfg's version as asleep: its next request starts it
	// with cfg and wakes needs alongside.
	Adopt(cfg supervisor.Config, needs []spec.VersionKey)
	// Forget drops what Adopt (or a sleep) kept of key.
	Forget(key spec.VersionKey)
}

// ErrNoSleeper means a version was to be registered asleep by an agent
// given no Sleeper (SetSleeper).
var ErrNoSleeper = errors.New("no sleeper to register versions asleep with")

// SetSleeper gives the agent the Sleeper that versions registered asleep
// are woken by. Call it before the agent is used.
func (a *Agent) SetSleeper(s Sleeper) { a.sleeper = s }

// RegisterAsleep makes g's version of service name a running version
// without starting its process: its preparers run, the endpoints of what
// it needs open and its backend is registered with the gate closed, so
// that its first request starts it, with that config, through the
// Sleeper. A version the agent runs already is left as it is. Its errors
// are ServiceErrors.
//
// Every preparer runs, now rather than at the wake, as on a resume
// (Options.Adopt): they set the environment the version is started with
// (its database's credentials), and a wake must be no slower than a
// start. The version is held by a committed generation, so it went live
// once: its preparations are kept, never undone, and its release step
// ran then — its release record makes the releaser a no-op, which is
// right: an old version must not migrate a database a newer one uses.
func (a *Agent) RegisterAsleep(ctx context.Context, g *spec.Generation, name string, progress Progress) error {
	key := g.Instance(name)
	if a.sleeper == nil {
		return &ServiceError{Service: name, Version: g.Versions[name], Step: StepStart, Err: fmt.Errorf("%s: %w", key, ErrNoSleeper)}
	}
	a.runMu.Lock()
	_, known := a.running[key]
	a.runMu.Unlock()
	if known {
		return nil
	}
	cfg, needs, err := a.configure(ctx, g, name, Options{Adopt: true}, progress)
	if err != nil {
		return err
	}
	// The backend first: the Sleeper forgets what the router does not route.
	a.route.AddSleepingBackend(key)
	a.sleeper.Adopt(cfg, needs)
	a.runMu.Lock()
	a.running[key] = &version{svc: g.Spec.Services[name], needs: needs}
	a.runMu.Unlock()
	progress("registered %s asleep", key)
	return nil
}

// Unregister stops key if it is awake (draining it first) and removes
// its backend, its endpoint and what the Sleeper keeps of it.
func (a *Agent) Unregister(ctx context.Context, key spec.VersionKey, progress Progress) {
	a.stopOne(ctx, key, progress)
}

// registerAsleep registers asleep, in order, the versions of cs that do
// not run, adding them to rep.Asleep. A version a previous daemon left
// running is adopted rather (and added to rep.Started) — unless
// registerOnly, where such versions are left for later, as are those
// whose needs do not run yet (startAll registers them). It returns the
// errors, one per version that could not be registered.
func (a *Agent) registerAsleep(ctx context.Context, cs []Callable, registerOnly bool, rep *Report, progress Progress) []error {
	var errs []error
	for _, c := range cs {
		key := c.Key()
		if a.isRunning(key) {
			continue
		}
		if registerOnly && !a.needsRun(c) {
			// Its endpoints need their backends: registered once they
			// run (startAll, or the pass after the generations).
			continue
		}
		if _, alive := a.procs.Recorded(key); alive {
			if registerOnly {
				continue
			}
			// Awake when the daemon stopped: adopted as it runs, it
			// sleeps again through the Sleeper.
			if err := a.start(ctx, c.Generation, c.Service, Options{Adopt: true}, progress); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Started = append(rep.Started, string(key))
			continue
		}
		if err := a.RegisterAsleep(ctx, c.Generation, c.Service, progress); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Asleep = append(rep.Asleep, string(key))
	}
	return errs
}

// needsRun reports whether every version c needs runs (started, adopted
// or registered asleep) already.
func (a *Agent) needsRun(c Callable) bool {
	for _, n := range c.Generation.Spec.Services[c.Service].Needs {
		if !a.isRunning(c.Generation.Instance(n)) {
			return false
		}
	}
	return true
}

// parkFailed leaves a version that a resume (opts.Adopt) could not start,
// or that did not get ready, as a version asleep that failed: its process
// is stopped, its backend registered asleep with why (status says it
// failed), and its config handed to the Sleeper, so that its domains
// answer 503 rather than keep the daemon or another service from being
// served, and its next request, a deploy that keeps it, or a restart
// tries to start it again. Outside a resume, or without a Sleeper, it
// does nothing: a deploy's failed start is undone instead.
func (a *Agent) parkFailed(ctx context.Context, g *spec.Generation, name string, cfg supervisor.Config, needs []spec.VersionKey, opts Options, why error, progress Progress) {
	if !opts.Adopt || a.sleeper == nil {
		return
	}
	key := g.Instance(name)
	if err := a.procs.Stop(context.WithoutCancel(ctx), key); err != nil {
		progress("stopping %s: %v", key, err)
	}
	a.route.AddSleepingBackend(key)
	a.route.SetFailed(key, why)
	a.sleeper.Adopt(cfg, needs)
	a.runMu.Lock()
	a.running[key] = &version{svc: g.Spec.Services[name], needs: needs}
	a.runMu.Unlock()
	progress("%s did not start; it is tried again at its next request, deploy or restart", key)
}
