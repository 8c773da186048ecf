// Package deploy is the deploy engine: it turns a plan into running
// versions and one atomic switch of routes, drains what the switch left
// behind, and undoes a switch whose new versions fail their health checks.
//
// It drives the supervisor (processes) and the router (traffic) through the
// small interfaces below; neither knows about the other.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"hostel/internal/agent"
	"hostel/internal/plan"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// Processes is what the engine needs of the supervisor: what its agent
// needs, and a restart in place.
type Processes interface {
	agent.Processes
	Restart(ctx context.Context, key spec.VersionKey) error
}

// Routes is what the engine needs of the router: what its agent needs, the
// switch of the route table, and the in-flight counts.
type Routes interface {
	agent.Routes
	Swap(t router.Table) error
	InFlight(key spec.VersionKey) int64
	// Wake wakes a sleeping version without a request and waits until
	// it is awake; nil at once for a version that is not asleep.
	Wake(ctx context.Context, key spec.VersionKey) error
	// Sleeping reports a version's scale-to-zero state.
	Sleeping(key spec.VersionKey) (router.SleepStatus, bool)
}

// Preparer readies what a new version needs before its process starts
// (see agent.Preparer); the engine hands its preparers to its agent.
type Preparer = agent.Preparer

// Cleaner is a Preparer with a cleanup step (see agent.Cleaner).
type Cleaner = agent.Cleaner

var (
	_ Processes = (*supervisor.Supervisor)(nil)
	_ Routes    = (*router.Router)(nil)
)

// ErrInvalid marks input errors (exit 2): nothing was changed. Every
// *InvalidError is one (errors.Is).
var ErrInvalid = errors.New("invalid input")

// InvalidError is an input error: nothing was changed. Its message is the
// underlying error's, without a prefix, as users see it.
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }

func (e *InvalidError) Unwrap() error { return e.Err }

// Is makes every InvalidError match ErrInvalid.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

// ErrNoEnv is why an operation on an environment that has no current
// generation is refused (an InvalidError).
var ErrNoEnv = errors.New("no such environment (nothing deployed to it)")

// checkEnv returns the environment env names ("" is production), or an
// InvalidError for a bad name.
func checkEnv(env string) (string, error) {
	if env == "" {
		return spec.DefaultEnv, nil
	}
	if err := spec.CheckEnv(env); err != nil {
		return "", invalid(err)
	}
	return env, nil
}

// invalid marks err as an input error.
func invalid(err error) error { return &InvalidError{Err: err} }

// Progress receives one human-readable line per step of a deploy.
type Progress = agent.Progress

// Engine applies generations. One deploy, rollback or restart runs at a time.
type Engine struct {
	store store.Store
	procs Processes
	route Routes
	// agent makes the machine run what the engine decides.
	agent *agent.Agent

	mu sync.Mutex // serializes operations that change what runs
	// windows are the open confirm windows, by environment; guarded by
	// mu. They run without holding mu (see confirm.go).
	windows map[string]*window
	// guards watch confirmed generations' new versions after their
	// windows, by environment. Guarded by mu.
	guards map[string]*guard
	// logf receives what the engine does on its own, outside any
	// operation: a confirm window resumed after a restart, a version that
	// failed after its window. Set by SetLog.
	logf Progress
	// switched is told every generation the routes switch to, right after
	// the switch (see OnSwitch); nil when no one listens.
	switched func(g *spec.Generation)

	// kept are the kept versions that stay callable (sleep.go), as the
	// last decision found them, guarded by keptMu (not mu: Sleepers and
	// status read them while an operation runs).
	keptMu sync.Mutex
	kept   map[spec.VersionKey]*kept
}

// New returns an engine over a store, the processes and the routes.
func New(st store.Store, procs Processes, routes Routes) *Engine {
	return &Engine{store: st, procs: procs, route: routes, agent: agent.New(procs, routes),
		windows: map[string]*window{}, guards: map[string]*guard{}, logf: func(string, ...any) {}}
}

// SetLog sets where the engine reports what it does on its own, outside an
// operation: confirm windows it resumes after a restart and what they
// decide, and versions that fail after their window. Call it before the
// engine is used.
func (e *Engine) SetLog(logf Progress) { e.logf = logf }

// OnSwitch sets fn to be told every generation the routes are switched
// to — by a deploy, a rollback, a switch back, or a resume after a start —
// right after the switch, while the engine still holds its lock: what must
// follow the live generation (certificates, TLS policy) learns it from here
// rather than by reading the store back. fn must not call the engine. Call
// it before the engine is used.
func (e *Engine) OnSwitch(fn func(g *spec.Generation)) { e.switched = fn }

// Use adds preparers, run in the order given before every new version starts.
// Call it before the engine is used.
func (e *Engine) Use(p ...Preparer) { e.agent.Use(p...) }

// Request is one deploy.
type Request struct {
	Source string      // the spec file's name, for messages
	Env    string      // the environment deployed to; "" is production
	Spec   *spec.Spec  // decoded and validated
	Inputs spec.Inputs // what else shapes versions
	// Secrets are the age ciphertexts of the secrets the services use, by
	// name; the generation keeps them. Nil means none.
	Secrets map[string][]byte
	// Confirm is the confirm window after the switch; 0 skips it.
	Confirm time.Duration
}

// Result says what a deploy or rollback did. It comes with an error when
// the operation failed after it did something.
type Result struct {
	// Generation is the generation live when the operation ended.
	Generation uint64
	// Plan is what a deploy planned; nil for a rollback.
	Plan *plan.Plan
	// Started and Stopped are the versions started and stopped.
	Started []string
	Stopped []string
	// RolledBack is set when the deploy's generation went live and was
	// switched back; RolledBackFrom is that generation.
	RolledBack     bool
	RolledBackFrom uint64
	// Aborted counts requests still in flight to old versions when their
	// stop grace ran out; they were ended with 504.
	Aborted int64
	// Confirmation is how the deploy's confirm window ended; "" when the
	// deploy did not switch, or for a rollback.
	Confirmation spec.ConfirmState
}

// Steps of a deploy at which a version can fail (ServiceError.Step); the
// same words as the API's.
const (
	StepStart   = agent.StepStart   // before the switch: preparing, starting, getting ready
	StepConfirm = agent.StepConfirm // after the switch: in the confirm window or later
)

// ServiceError is the failure of one version of a service during a deploy.
type ServiceError = agent.ServiceError

// Failures returns every ServiceError in err's tree (errors.Join included),
// in order.
func Failures(err error) []*ServiceError {
	var out []*ServiceError
	var walk func(error)
	walk = func(err error) {
		if se, ok := err.(*ServiceError); ok {
			out = append(out, se)
			return
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			if e := u.Unwrap(); e != nil {
				walk(e)
			}
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

// Plan plans a spec against environment env's current generation ("" is
// production) without changing anything.
func (e *Engine) Plan(ctx context.Context, env string, s *spec.Spec, in spec.Inputs) (*plan.Plan, error) {
	env, err := checkEnv(env)
	if err != nil {
		return nil, err
	}
	cur, err := e.store.Current(ctx, env)
	if err != nil {
		return nil, err
	}
	p, err := plan.Make(s, in, cur)
	if err != nil || env == spec.DefaultEnv {
		return p, err
	}
	cs, err := e.store.Currents(ctx)
	if err != nil {
		return nil, err
	}
	next := &spec.Generation{Env: env, Spec: s, Versions: p.Versions}
	Share(next, cs)
	MarkPreview(p, next, cur)
	return p, nil
}

// Deploy makes the machine run req.Spec: it starts new versions, switches all
// routes at once, and, after the confirm window, drains and stops what is
// left over. Within the window it switches back if a new version restarts or
// turns unhealthy. The window runs without the engine's lock: a status, a
// restart, a rollback or another deploy need not wait for it, and a deploy
// or rollback that switches during the window ends it (see confirm.go).
func (e *Engine) Deploy(ctx context.Context, req Request, progress Progress) (*Result, error) {
	if err := req.Spec.Validate(); err != nil {
		return nil, invalid(err)
	}
	env, err := checkEnv(req.Env)
	if err != nil {
		return nil, err
	}
	req.Env = env
	e.mu.Lock()
	res, w, err := e.deployLocked(ctx, req, progress)
	e.mu.Unlock()
	if err != nil || w == nil {
		return res, err
	}
	return e.settle(ctx, w, e.watch(ctx, w), res, progress)
}

// deployLocked does a deploy up to its confirm window, which it returns
// open (nil when none is due). e.mu must be held.
func (e *Engine) deployLocked(ctx context.Context, req Request, progress Progress) (*Result, *window, error) {
	// A preview shares what other environments run: one read serves both.
	cs, err := e.store.Currents(ctx)
	if err != nil {
		return nil, nil, err
	}
	cur := cs[req.Env]
	p, err := plan.Make(req.Spec, req.Inputs, cur)
	if err != nil {
		return nil, nil, invalid(err)
	}
	res := &Result{Plan: p, Started: []string{}, Stopped: []string{}}
	if cur != nil {
		res.Generation = cur.Number
	}
	if cur != nil && cur.SpecHash == p.SpecHash {
		progress("nothing to deploy: generation %d already runs this spec", cur.Number)
		return res, nil, nil
	}
	next := &spec.Generation{Env: req.Env, SpecHash: p.SpecHash, Source: req.Source, Spec: req.Spec, Inputs: req.Inputs, Versions: p.Versions, Secrets: req.Secrets}
	if next.EnvOrDefault() != spec.DefaultEnv {
		Share(next, cs)
		MarkPreview(p, next, cur)
	}
	var from uint64 // the generation this deploy was planned against
	if cur != nil {
		from = cur.Number
	}
	var w *window
	started, err := e.apply(ctx, next, func(started []string) error {
		// The window, if one is due, is recorded with the commit: a daemon
		// that dies in it finishes it on its next start.
		next.Confirm = &spec.Confirm{State: spec.ConfirmSkipped}
		if cur != nil {
			next.Confirm.Previous = cur.Number
		}
		if req.Confirm > 0 && len(started) > 0 && cur != nil {
			next.Confirm = &spec.Confirm{State: spec.ConfirmPending, Deadline: time.Now().Add(req.Confirm).UTC(), Previous: cur.Number}
		}
		// Planned against cur: a writer that made another generation
		// current meanwhile fails this deploy (ErrConflict) before its
		// switch. (The engine's lock keeps out every other writer here.)
		if _, err := e.store.Commit(ctx, next, from); err != nil { // numbers next
			return err
		}
		e.endWindowLocked(ctx, req.Env, spec.ConfirmSuperseded, fmt.Sprintf("generation %d was deployed before the window ended", next.Number), progress)
		e.disarmLocked(req.Env)
		if next.Confirm.State == spec.ConfirmPending {
			w = newWindow(next, cur, keysOf(started), next.Confirm.Deadline)
			e.windows[req.Env] = w
		}
		return nil
	}, progress)
	res.Started = started
	if err != nil {
		return res, nil, err
	}
	res.Generation = next.Number
	if w != nil {
		progress("confirming for %s: %s must stay up and healthy", req.Confirm, strings.Join(started, ", "))
		return res, w, nil
	}
	res.Confirmation = next.Confirm.State
	res.Stopped, res.Aborted = e.drain(context.WithoutCancel(ctx), progress)
	progress("generation %d deployed: %d started, %d stopped", next.Number, len(res.Started), len(res.Stopped))
	return res, nil, nil
}

// Rollback switches environment env ("" is production) to its generation
// to (0: the one before the current).
func (e *Engine) Rollback(ctx context.Context, env string, to uint64, progress Progress) (*Result, error) {
	env, err := checkEnv(env)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.store.Current(ctx, env)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		if env != spec.DefaultEnv {
			return nil, invalid(fmt.Errorf("environment %q: %w", env, ErrNoEnv))
		}
		return nil, invalid(errors.New("nothing deployed yet"))
	}
	if to == 0 {
		gens, err := e.store.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, g := range gens {
			if g.Number < cur.Number && g.EnvOrDefault() == env {
				to = g.Number
			}
		}
		if to == 0 {
			return nil, invalid(fmt.Errorf("generation %d is the oldest kept; there is nothing to roll back to", cur.Number))
		}
	}
	if to == cur.Number {
		return nil, invalid(fmt.Errorf("generation %d is already current", to))
	}
	target, err := e.store.Get(ctx, to)
	if errors.Is(err, store.ErrNotFound) {
		return nil, invalid(err)
	} else if err != nil {
		return nil, err
	}
	if target.EnvOrDefault() != env {
		return nil, invalid(fmt.Errorf("generation %d belongs to environment %s, not %s", to, target.EnvOrDefault(), env))
	}
	res := &Result{Generation: cur.Number, Started: []string{}, Stopped: []string{}}
	started, err := e.apply(ctx, target, func([]string) error {
		if err := e.store.SetCurrent(ctx, cur.Number, to); err != nil {
			return err
		}
		e.endWindowLocked(ctx, env, spec.ConfirmSuperseded, fmt.Sprintf("rolled back to generation %d before the window ended", to), progress)
		e.disarmLocked(env)
		return nil
	}, progress)
	if err != nil {
		return res, err // nothing switched: cur is still live
	}
	res.Generation, res.Started = to, started
	res.Stopped, res.Aborted = e.drain(context.WithoutCancel(ctx), progress)
	return res, nil
}

// Resume runs the current generation again after a daemon start: it adopts
// the versions that still run from before (same processes, same ports and
// endpoints), starts the missing ones, and stops running versions that the
// current generation does not hold. A confirm window the previous daemon
// left open is finished: the previous generation's versions are kept beside
// the current ones, and the window runs on in the background, reporting
// through the engine's log (SetLog).
func (e *Engine) Resume(ctx context.Context, progress Progress) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, err := e.read(ctx)
	if err != nil {
		return err
	}
	cs := st.currents
	prevs := map[string]*spec.Generation{}
	d := agent.Desired{}
	for _, env := range envOrder(cs) {
		d.Generations = append(d.Generations, cs[env])
	}
	for _, env := range envOrder(cs) {
		if prev := e.previous(ctx, cs[env], progress); prev != nil {
			// Keep what a switch back needs at hand, as the window did.
			prevs[env] = prev
			d.Generations = append(d.Generations, prev)
		}
	}
	// What slept when the daemon stopped sleeps on: a version that
	// sleeps, or a kept one that stays callable, is registered asleep
	// unless its process is left running (adopted then).
	d.Asleep = sleepingOnResume(cs, prevs)
	callable := Callables(st.kept, cs)
	e.setCallable(callable)
	d.Asleep = append(d.Asleep, callable...)
	// Adopt what still runs, start what is missing, and stop what a
	// previous daemon left running that no environment holds (a deploy
	// that was cut short).
	if _, err := e.agent.Reconcile(ctx, d, agent.Options{Adopt: true}, progress); err != nil {
		// Serve what did start; the failed versions are reported by status.
		progress("resumed with errors: %v", err)
	}
	// Route every domain: one whose version could not start answers 503
	// (the agent left it asleep and failed, for its next request to try
	// again) rather than keep the daemon from serving the others.
	if err := e.routeTo(ctx, cs); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	for _, env := range envOrder(cs) {
		cur := cs[env]
		e.notifySwitch(cur)
		e.settleStale(ctx, cur, progress)
		e.resumeConfirm(ctx, cur, prevs[env], progress)
	}
	return nil
}

// Restart restarts the running version of one service in place; a
// sleeping one is woken (started afresh).
func (e *Engine) Restart(ctx context.Context, service string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.store.Current(ctx, spec.DefaultEnv)
	if err != nil {
		return err
	}
	if cur == nil || cur.Spec.Services[service] == nil {
		return invalid(fmt.Errorf("no service %q in the current generation", service))
	}
	key := spec.Key(service, cur.Versions[service])
	// Asleep (scale to zero) — by the router's word: its process may
	// still be stopping — there is no process to restart, and waking it
	// starts one afresh, which is what a restart is for.
	if sl, ok := e.route.Sleeping(key); ok && sl.Asleep {
		if sl.Paused {
			// A wake would wait for the resume, the engine's lock held.
			return invalid(fmt.Errorf("service %q is asleep and paused: its first request after hostel resume starts it", service))
		}
		if err := e.route.Wake(ctx, key); err != nil {
			return fmt.Errorf("restart %s: %w", key, err)
		}
		if _, running := e.procs.Get(key); running {
			return nil
		}
	}
	if err := e.procs.Restart(ctx, key); err != nil {
		return fmt.Errorf("restart %s: %w", key, err)
	}
	if inst, ok := e.procs.Get(key); ok {
		e.route.AddBackend(key, inst.Addr())
	}
	return nil
}

// Draining reports whether key is an old version being drained.
func (e *Engine) Draining(key spec.VersionKey) bool { return e.agent.Draining(key) }

// Running returns the keys of every version the engine runs, sorted.
func (e *Engine) Running() []spec.VersionKey { return e.agent.Running() }

// Detach ends an open confirm window undecided, pending in the store for
// the next daemon to finish, and stops watching confirmed generations:
// what a daemon that stops but leaves its services running calls before it
// lets go of them.
func (e *Engine) Detach() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.releaseLocked()
}

// Shutdown stops every version, topmost first. An open confirm window ends
// undecided: it stays pending in the store, for the next start to finish.
func (e *Engine) Shutdown(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.releaseLocked()
	e.agent.StopAll(ctx)
}

func keysOf(names []string) []spec.VersionKey {
	out := make([]spec.VersionKey, len(names))
	for i, n := range names {
		out[i] = spec.VersionKey(n)
	}
	return out
}
