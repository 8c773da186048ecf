// Package deploy is the decide half of hostel: the engine plans a spec
// against the store, builds the next generation, and writes what each
// node must run (node.Desired) and, in one transaction, the generation
// that goes live; it reads back only what the nodes report (node.Info,
// node.Instance). It never starts a process or swaps a route table: every
// node's follower does (internal/node, internal/routes). So the engine
// runs the same against one node in the same process, several in memory
// (its tests), or a cluster.
//
// A deploy: one read to decide; the new versions staged in each node's
// Desired; once every node reports them ready, the generation committed
// with its confirm window and every node's Desired in one transaction;
// once every router follows the commit, the switch is done, and the old
// versions drain on each node (only once no router sends them a request);
// the window watches the new versions' reports and ends, recorded with
// every node's Desired in one transaction, or switches back.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"hostel/internal/agent"
	"hostel/internal/node"
	"hostel/internal/plan"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// Preparer readies what a new version needs before it starts (see
// agent.Preparer); the agents run them, on the nodes.
type Preparer = agent.Preparer

// Cleaner is a Preparer with a cleanup step (see agent.Cleaner).
type Cleaner = agent.Cleaner

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

// Options configure an Engine.
type Options struct {
	// Node is the node the engine runs on: it is asked to run what every
	// node runs even before it has reported itself (a daemon's first
	// start). Empty: only the nodes that reported themselves.
	Node string
	// Logf receives what the engine does on its own, outside an
	// operation: confirm windows it resumes after a restart and what they
	// decide, versions that fail after their window. Nil discards it.
	Logf Progress
	// RoutesWait bounds how long a switch waits for every router to
	// follow it before it says so and goes on; 0: 10 s.
	RoutesWait time.Duration
	// NodeWait is added to what a node needs to start a generation's
	// versions (their health timeouts) before the engine gives up on it;
	// 0: 30 s.
	NodeWait time.Duration
	// JoinWait is how long after its making FailOver takes a node that
	// has not reported itself for one that is still starting (a cluster
	// started together: its nodes report one after the other), not for
	// one that went; 0: 30 s. A node this engine saw go is gone at once.
	JoinWait time.Duration
}

// Engine decides. One deploy, rollback, restart, gc or removal runs at a
// time.
type Engine struct {
	// st is read; w is written to: st fenced on the engine's leadership
	// (SetWriter), so that a deposed engine writes nothing.
	st   store.Store
	wmu  sync.Mutex
	w    store.Store
	opts Options
	logf Progress

	mu sync.Mutex // serializes operations that change what runs
	// windows are the open confirm windows, by environment; guarded by
	// mu. They run without holding mu (see confirm.go).
	windows map[string]*window
	// guards watch confirmed generations' new versions after their
	// windows, by environment. Guarded by mu.
	guards map[string]*guard
	// reports is what the nodes report of their instances, followed.
	reports *reports
	// made is when New made the engine: FailOver's JoinWait counts from
	// it.
	made time.Time
	// gone are the nodes FailOver saw go; guarded by wmu.
	gone map[string]bool
}

// New returns an engine over a store; it writes through st itself until
// SetWriter gives it a fenced view.
func New(st store.Store, opts Options) *Engine {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.RoutesWait <= 0 {
		opts.RoutesWait = 10 * time.Second
	}
	if opts.NodeWait <= 0 {
		opts.NodeWait = 30 * time.Second
	}
	if opts.JoinWait <= 0 {
		opts.JoinWait = 30 * time.Second
	}
	e := &Engine{st: st, w: st, opts: opts, logf: opts.Logf, made: time.Now(),
		windows: map[string]*window{}, guards: map[string]*guard{}, reports: newReports(st, opts.Logf)}
	e.reports.went = e.sawGo
	return e
}

// SetWriter makes the engine write through w: the store fenced on the
// engine's leadership (store.Store.Fenced), so that once it no longer
// leads every write fails and changes nothing.
func (e *Engine) SetWriter(w store.Store) {
	e.wmu.Lock()
	e.w = w
	e.wmu.Unlock()
}

// writer is the store the engine writes through.
func (e *Engine) writer() store.Store {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return e.w
}

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

// Failures returns every ServiceError in err's tree (errors.Join
// included), in order.
func Failures(err error) []*ServiceError { return agent.Failures(err) }

// Plan plans a spec against environment env's current generation ("" is
// production) without changing anything.
func (e *Engine) Plan(ctx context.Context, env string, s *spec.Spec, in spec.Inputs) (*plan.Plan, error) {
	env, err := checkEnv(env)
	if err != nil {
		return nil, err
	}
	cs, err := e.st.Currents(ctx)
	if err != nil {
		return nil, err
	}
	cur := cs[env]
	p, err := plan.Make(s, in, cur)
	if err != nil || env == spec.DefaultEnv {
		return p, err
	}
	next := &spec.Generation{Env: env, Spec: s, Versions: p.Versions}
	Share(next, cs)
	MarkPreview(p, next, cur)
	return p, nil
}

// Deploy makes the nodes run req.Spec: they start its new versions, every
// route switches at once, and, after the confirm window, what is left
// over drains and stops. Within the window the previous generation comes
// back if a new version restarts or turns unhealthy. The window runs
// without the engine's lock: a status, a restart, a rollback or another
// deploy need not wait for it, and a deploy or rollback that switches
// during the window ends it (see confirm.go).
func (e *Engine) Deploy(ctx context.Context, req Request, progress Progress) (*Result, error) {
	if err := req.Spec.Validate(); err != nil {
		return nil, invalid(err)
	}
	env, err := checkEnv(req.Env)
	if err != nil {
		return nil, err
	}
	if err := e.lead(); err != nil {
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
	v, err := e.read(ctx) // the one read a deploy decides from
	if err != nil {
		return nil, nil, err
	}
	cur := v.snap.Currents[req.Env]
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
	if req.Env != spec.DefaultEnv {
		Share(next, v.snap.Currents)
		MarkPreview(p, next, cur)
	}
	if err := exclusiveKept(next, v.callables()); err != nil {
		return nil, nil, invalid(err)
	}
	var from uint64 // the generation this deploy was planned against
	if cur != nil {
		from = cur.Number
	}
	// The generation keeps what made it: what the deploy did to each
	// service and why (the dashboard shows it with the generation).
	next.Plan = p.Services
	started, err := e.stage(ctx, v, next, startingVersions(p), progress)
	res.Started = started
	if err != nil {
		return res, nil, err
	}
	// The window, if one is due, is recorded with the commit: a daemon
	// that dies in it finishes it on its next start.
	next.Confirm = &spec.Confirm{State: spec.ConfirmSkipped, Previous: from}
	windowed := req.Confirm > 0 && len(started) > 0 && cur != nil
	if windowed {
		next.Confirm = &spec.Confirm{State: spec.ConfirmPending, Deadline: time.Now().Add(req.Confirm).UTC(), Previous: from}
	}
	// A window open in this environment ends with this switch: its
	// previous generation need not run on.
	e.endWindowLocked(ctx, req.Env, spec.ConfirmSuperseded, "a later generation was deployed before the window ended", progress)
	e.disarmLocked(req.Env)
	keep := e.keptByWindows()
	if windowed {
		keep = append(keep, cur.Number)
	}
	// One transaction: the generation, its current move (compare-and-swap
	// on the generation planned against: a writer that moved it meanwhile
	// fails this deploy before its switch) and every node's Desired.
	rev, err := e.commit(ctx, v, keep, next, func(also []store.Write) error {
		_, err := e.writer().Commit(ctx, next, from, also...)
		return err
	})
	if err != nil {
		e.withdraw(context.WithoutCancel(ctx), progress)
		return res, nil, fmt.Errorf("nothing switched: %w", err)
	}
	res.Generation = next.Number
	e.switched(ctx, rev, next, progress)
	if windowed {
		w := newWindow(rev, next, cur, keysOf(started), next.Confirm.Deadline)
		e.windows[req.Env] = w
		progress("confirming for %s: %s must stay up and healthy", req.Confirm, strings.Join(started, ", "))
		return res, w, nil
	}
	res.Confirmation = next.Confirm.State
	res.Stopped, res.Aborted = e.drained(context.WithoutCancel(ctx), v, rev, progress)
	progress("generation %d deployed: %d started, %d stopped", next.Number, len(res.Started), len(res.Stopped))
	return res, nil, nil
}

// startingVersions lists the versions ("service-version") p starts: those
// it adds, updates to, or starts for a preview of its own.
func startingVersions(p *plan.Plan) []string {
	var out []string
	for _, c := range p.Services {
		switch c.Action {
		case plan.Add, plan.Update, plan.Start:
			out = append(out, string(spec.Key(c.Name, c.To)))
		}
	}
	return out
}

// Rollback switches environment env ("" is production) to its generation
// to (0: the one before the current).
func (e *Engine) Rollback(ctx context.Context, env string, to uint64, progress Progress) (*Result, error) {
	env, err := checkEnv(env)
	if err != nil {
		return nil, err
	}
	if err := e.lead(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	cur := v.snap.Currents[env]
	if cur == nil {
		if env != spec.DefaultEnv {
			return nil, invalid(fmt.Errorf("environment %q: %w", env, ErrNoEnv))
		}
		return nil, invalid(errors.New("nothing deployed yet"))
	}
	if to == 0 {
		for _, g := range v.snap.Generations {
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
	target := v.generation(to)
	if target == nil {
		return nil, invalid(fmt.Errorf("generation %d: %w", to, store.ErrNotFound))
	}
	if target.EnvOrDefault() != env {
		return nil, invalid(fmt.Errorf("generation %d belongs to environment %s, not %s", to, target.EnvOrDefault(), env))
	}
	res := &Result{Generation: cur.Number, Started: []string{}, Stopped: []string{}}
	started, err := e.stage(ctx, v, target, nil, progress)
	res.Started = started
	if err != nil {
		return res, err // nothing switched: cur is still live
	}
	e.endWindowLocked(ctx, env, spec.ConfirmSuperseded, fmt.Sprintf("rolled back to generation %d before the window ended", to), progress)
	e.disarmLocked(env)
	rev, err := e.commit(ctx, v, e.keptByWindows(), target, func(also []store.Write) error {
		return e.writer().SetCurrent(ctx, cur.Number, to, also...)
	})
	if err != nil {
		e.withdraw(context.WithoutCancel(ctx), progress)
		return res, fmt.Errorf("nothing switched: %w", err)
	}
	res.Generation = to
	e.switched(ctx, rev, target, progress)
	res.Stopped, res.Aborted = e.drained(context.WithoutCancel(ctx), v, rev, progress)
	return res, nil
}

// Restart restarts the running version of production's service in place,
// on every node that runs it; a sleeping one is woken (started afresh).
func (e *Engine) Restart(ctx context.Context, service string) error {
	if err := e.lead(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return err
	}
	cur := v.snap.Currents[spec.DefaultEnv]
	if cur == nil || cur.Spec.Services[service] == nil {
		return invalid(fmt.Errorf("no service %q in the current generation", service))
	}
	key := spec.Key(service, cur.Versions[service])
	if r, ok := e.reports.get(key); ok && r.State == node.StateIdle {
		if paused, err := e.paused(ctx, service); err != nil {
			return err
		} else if paused {
			// A wake would wait for the resume.
			return invalid(fmt.Errorf("service %q is asleep and paused: its first request after hostel resume starts it", service))
		}
	}
	// A restart by hand is not a crash in a window: the windows look away
	// from key until it is done and they see what the nodes reported of
	// it (the last write's revision).
	var last uint64 // the revision of the restart's last write
	var dones []func()
	for _, w := range e.windows {
		dones = append(dones, w.restart(key))
	}
	defer func() {
		if len(dones) > 0 && last > 0 {
			e.reports.reach(ctx, last)
		}
		for _, done := range dones {
			done()
		}
	}()
	rev, err := e.writeDesired(ctx, v, e.keptByWindows(), nil, func(d *nodeDesired) {
		if d.Placed && !slices.Contains(d.Instances, key) {
			return // a node that does not run it has nothing to restart
		}
		if d.Restarts == nil {
			d.Restarts = map[spec.VersionKey]int{}
		}
		d.Restarts[key]++
	})
	if err != nil {
		return fmt.Errorf("restart %s: %w", key, err)
	}
	infos, err := e.applied(ctx, v, rev, e.opts.NodeWait+cur.Spec.Services[service].HealthTimeout())
	if err != nil {
		return fmt.Errorf("restart %s: %w", key, err)
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(infos)) {
		for _, f := range infos[name].Failures {
			switch {
			case f.Service != service:
			case f.Refused:
				errs = append(errs, invalid(fmt.Errorf("service %q: %s", service, f.Reason)))
			default:
				errs = append(errs, fmt.Errorf("restart %s on %s: %s", key, name, f.Reason))
			}
		}
	}
	// Done: the request is taken back (a node that starts finds none).
	if last, err = e.writeDesired(ctx, v, e.keptByWindows(), nil, func(d *nodeDesired) { delete(d.Restarts, key) }); err != nil {
		errs = append(errs, fmt.Errorf("restart %s: %w", key, err))
	}
	return errors.Join(errs...)
}

// keysOf turns names into version keys.
func keysOf(names []string) []spec.VersionKey {
	out := make([]spec.VersionKey, len(names))
	for i, n := range names {
		out[i] = spec.VersionKey(n)
	}
	return out
}
