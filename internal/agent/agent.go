// Package agent is the act half of a deploy: it makes this machine run a
// desired set of versions and reports what runs. It starts what is
// missing (dependencies first, prepared by the Preparers, health-checked),
// adopts what a previous daemon left running, drains and stops what is no
// longer desired (the topmost first), and pins what runs (a Preparer
// does: Nix GC roots).
//
// The decide half (internal/deploy: plan, generations, the route table)
// says what must run as plain data (Desired), so that in a cluster it can
// run beside the store and send it to an agent on every node. Today both
// run in one process.
package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// Processes is what the agent needs of the supervisor.
type Processes interface {
	Start(cfg supervisor.Config) (*supervisor.Instance, error)
	Get(key spec.VersionKey) (*supervisor.Instance, bool)
	Stop(ctx context.Context, key spec.VersionKey) error
	Status(key spec.VersionKey) (supervisor.Status, bool)
	// Adopt, AdoptRecorded, Recorded and Orphans take back the processes
	// a previous daemon left running (Options.Adopt).
	Adopt(cfg supervisor.Config) (*supervisor.Instance, bool, error)
	AdoptRecorded(key spec.VersionKey) (*supervisor.Instance, bool, error)
	Recorded(key spec.VersionKey) (supervisor.Config, bool)
	Orphans() []spec.VersionKey
}

// Routes is what the agent needs of the router: a version's backend and
// the endpoints of what it needs, registered as it starts and removed as
// it stops; in-flight requests, waited for before a stop.
type Routes interface {
	AddBackend(key spec.VersionKey, addr string)
	// AddSleepingBackend registers a version asleep (sleep.go).
	AddSleepingBackend(key spec.VersionKey)
	RemoveBackend(key spec.VersionKey)
	OpenEndpoint(key spec.VersionKey, listen string) (string, error)
	CloseEndpoint(key spec.VersionKey)
	// Retire takes no more requests for a version about to stop, before
	// WaitIdle waits for those in flight.
	Retire(key spec.VersionKey)
	WaitIdle(ctx context.Context, key spec.VersionKey) error
	Abort(key spec.VersionKey) int64
	// SetFailed records why a version registered asleep could not start.
	SetFailed(key spec.VersionKey, err error)
}

var (
	_ Processes = (*supervisor.Supervisor)(nil)
	_ Routes    = (*router.Router)(nil)
)

// Preparer readies what a new version needs before its process starts: a
// database, credentials, a release step, GC roots. It may add to cfg.Env
// and the other fields of cfg. An error fails the version's start.
type Preparer interface {
	Prepare(ctx context.Context, g *spec.Generation, service string, cfg *supervisor.Config) error
}

// Cleaner is a Preparer with a cleanup step (caddy's provision → validate
// → cleanup): every Prepare the agent calls, successful or not, is
// followed by exactly one Cleanup for the same version once its fate is
// known. started is false when the version did not go live — a later
// preparer failed, its process did not start or never got ready, or it
// was stopped before Keep — and then Cleanup undoes what that Prepare made
// for this version alone (a database created for it, a GC root it added),
// leaving what existed before or other versions use: a failed start leaves
// nothing behind. started is true once Keep was called for the version:
// Cleanup only forgets its bookkeeping. (Adopting, with Options.Adopt,
// takes over what a committed generation holds: its preparations are
// never undone.)
type Cleaner interface {
	Preparer
	Cleanup(ctx context.Context, g *spec.Generation, service string, started bool) error
}

// Progress receives one human-readable line per step.
type Progress func(format string, args ...any)

// Steps at which a version can fail (ServiceError.Step); the same words
// as the API's.
const (
	StepStart   = "start"   // before the switch: preparing, starting, getting ready
	StepConfirm = "confirm" // after the switch: in the confirm window or later
)

// ServiceError is the failure of one version of a service.
type ServiceError struct {
	Service string
	Version spec.Version
	// Step is StepStart or StepConfirm.
	Step string
	Err  error
}

func (e *ServiceError) Error() string { return fmt.Sprintf("service %q: %v", e.Service, e.Err) }

func (e *ServiceError) Unwrap() error { return e.Err }

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

// Desired is what this machine must run: plain data (it encodes as JSON),
// so that the decide half can send it to an agent on another node.
type Desired struct {
	// Generations whose versions must run: each version runs as planned
	// in its generation (its spec, secrets and the versions of what it
	// needs). A version several hold runs once; the agent starts the
	// generations in this order.
	Generations []*spec.Generation `json:"generations"`
	// Asleep are versions that must stay callable without running: each
	// is routed, and its first request starts it (scale to zero). In
	// order: needs before dependents. A version that runs already is
	// left running (and sleeps through the Sleeper); one that does not
	// is registered asleep (RegisterAsleep) — on a resume (Options.Adopt)
	// also when a generation holds it, unless a previous daemon left its
	// process running, which is adopted. One that cannot be registered is
	// reported (and, on a resume, returned) but fails nothing. Nil: none.
	Asleep []Callable `json:"asleep,omitempty"`
	// Only, if not nil, are the instances this machine runs of the
	// generations and the versions asleep: the placement's share of it
	// (cluster mode); the rest run on other nodes. Nil: every one.
	Only map[spec.VersionKey]bool `json:"only,omitempty"`
}

// runsHere reports whether d has key run on this machine.
func (d Desired) runsHere(key spec.VersionKey) bool { return d.Only == nil || d.Only[key] }

// Callable is one version to keep callable without running it: the
// instance Generation.Instance(Service), started as planned in Generation.
type Callable struct {
	Generation *spec.Generation `json:"generation"`
	Service    string           `json:"service"`
}

// Key is the instance c names.
func (c Callable) Key() spec.VersionKey { return c.Generation.Instance(c.Service) }

// Keys returns the versions d holds: a version runs while any of its
// generations holds it.
func (d Desired) Keys() map[spec.VersionKey]bool {
	keep := map[spec.VersionKey]bool{}
	for _, g := range d.Generations {
		if g == nil {
			continue
		}
		for name := range g.Versions {
			if k := g.Instance(name); d.runsHere(k) {
				keep[k] = true
			}
		}
	}
	for _, c := range d.Asleep {
		if d.runsHere(c.Key()) {
			keep[c.Key()] = true
		}
	}
	return keep
}

// Options say how Reconcile treats what a previous daemon left running.
type Options struct {
	// Adopt takes over the process a previous daemon left running for a
	// version (same endpoints) instead of starting a new one, goes on past
	// versions that fail, keeping what runs, and stops what a previous
	// daemon left running that is not desired: set when resuming after a
	// daemon start, where a dependent left running must not be taken for
	// an orphan and stopped.
	Adopt bool

	// BeforeStop, if set, is called once before Reconcile stops the
	// versions no longer desired (none are stopped if it is not needed):
	// the caller waits there until no router sends them new requests.
	BeforeStop func(ctx context.Context)

	// BeforeStopOne, if set, is called before each version no longer
	// desired is drained, once every version stopped with it that needs
	// it is stopped: the caller waits there for what needs it elsewhere
	// (on other nodes) to stop first.
	BeforeStopOne func(ctx context.Context, key spec.VersionKey)

	// asleep are the versions of Desired.Asleep, set by Reconcile on a
	// resume: startAll registers one asleep at its turn, after its needs,
	// rather than start it, unless a previous daemon left it running.
	asleep map[spec.VersionKey]bool
	// only is Desired.Only, set by Reconcile: startAll starts nothing
	// else.
	only map[spec.VersionKey]bool
}

// Report says what a Reconcile did.
type Report struct {
	// Started and Stopped are the versions started (or adopted) and
	// stopped, sorted.
	Started, Stopped []string
	// Asleep are the versions registered asleep (Desired.Asleep), sorted.
	Asleep []string
	// Aborted counts requests still in flight to stopped versions when
	// their stop grace ran out; they were ended with 504.
	Aborted int64
}

// Agent makes this machine run a desired set of versions.
type Agent struct {
	procs   Processes
	route   Routes
	prepare []Preparer

	// running holds what the agent started and has not stopped, by key.
	runMu   sync.Mutex
	running map[spec.VersionKey]*version
	// prepared holds, for each version prepared but not yet kept, the
	// generation it was prepared for and the preparers that ran: what
	// stopping it must clean up. Guarded by runMu.
	prepared map[spec.VersionKey]preparation
	// preparing counts, by key, the preparations of a version under way
	// (its preparers running). Guarded by runMu.
	preparing map[spec.VersionKey]int

	// asleep reports whether a version sleeps (sleep.go); nil: none does.
	asleep func(spec.VersionKey) bool
	// sleeper starts versions registered asleep (sleep.go); nil: none may be.
	sleeper Sleeper
}

// version is one started version of a service and what it was started with.
type version struct {
	svc      *spec.Service
	needs    []spec.VersionKey // the exact versions it was built against
	draining bool
	// suspended is the config it ran with while Suspend has it stopped;
	// nil while it is not suspended.
	suspended *supervisor.Config
}

// preparation is what ran to prepare one version.
type preparation struct {
	g       *spec.Generation
	service string
	ran     []Preparer
}

// New returns an agent over the processes and the routes.
func New(procs Processes, routes Routes) *Agent {
	return &Agent{procs: procs, route: routes, running: map[spec.VersionKey]*version{}, prepared: map[spec.VersionKey]preparation{},
		preparing: map[spec.VersionKey]int{}}
}

// Use adds preparers, run in the order given before every new version
// starts. Call it before the agent is used.
func (a *Agent) Use(p ...Preparer) { a.prepare = append(a.prepare, p...) }

// Reconcile makes the machine run d: it starts (or, with opts.Adopt,
// adopts) every version d holds that does not run, dependencies first,
// and waits until each is ready; then it drains and stops every version
// it runs that d does not hold, the topmost first. If a version fails to
// start (without opts.Adopt), it stops and cleans up what it started and
// stops nothing else: the machine runs what it ran, and the error names
// the services (ServiceErrors). Reconciling to what runs changes nothing.
// One Reconcile at a time.
func (a *Agent) Reconcile(ctx context.Context, d Desired, opts Options, progress Progress) (*Report, error) {
	rep := &Report{Started: []string{}, Stopped: []string{}, Asleep: []string{}}
	var errs []error
	// What other nodes run is theirs: neither started, registered asleep
	// nor adopted here.
	opts.only = d.Only
	d.Asleep = slices.DeleteFunc(slices.Clone(d.Asleep), func(c Callable) bool { return !d.runsHere(c.Key()) })
	if opts.Adopt {
		// Asleep wins on a resume where no process is left: registered
		// before the generations start, so that they find it running —
		// or, for one whose needs run only once started, by startAll at
		// its turn.
		errs = append(errs, a.registerAsleep(ctx, d.Asleep, true, rep, progress)...)
		opts.asleep = make(map[spec.VersionKey]bool, len(d.Asleep))
		for _, c := range d.Asleep {
			opts.asleep[c.Key()] = true
		}
	}
	for _, g := range d.Generations {
		if g == nil {
			continue
		}
		started, asleep, err := a.startAll(ctx, g, opts, progress)
		rep.Started = append(rep.Started, started...)
		rep.Asleep = append(rep.Asleep, asleep...)
		if err != nil && !opts.Adopt {
			a.abandon(context.WithoutCancel(ctx), keysOf(rep.Started), progress)
			sort.Strings(rep.Started)
			return rep, err
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	// What no generation started: adopted if a previous daemon left it
	// running, else registered asleep. A version that cannot be is
	// reported and left out, but fails nothing: a deploy must not fail
	// for an old version it replaced long ago.
	for _, err := range a.registerAsleep(ctx, d.Asleep, false, rep, progress) {
		progress("not callable until the next deploy or restart: %v", err)
		if opts.Adopt {
			errs = append(errs, err)
		}
	}
	sort.Strings(rep.Started)
	sort.Strings(rep.Asleep)
	want := d.Keys()
	var old []spec.VersionKey
	for _, k := range a.Running() {
		if !want[k] {
			old = append(old, k)
		}
	}
	if len(old) > 0 && opts.BeforeStop != nil {
		opts.BeforeStop(ctx)
	}
	rep.Aborted = a.stopKeys(context.WithoutCancel(ctx), old, opts.BeforeStopOne, progress)
	if rep.Aborted > 0 {
		progress("%d requests were still running at their stop grace and were ended with 504", rep.Aborted)
	}
	for _, k := range old {
		rep.Stopped = append(rep.Stopped, string(k))
	}
	if opts.Adopt {
		a.stopOrphans(context.WithoutCancel(ctx), progress)
	}
	return rep, errors.Join(errs...)
}

// Keep ends the preparations of versions that went live (a committed
// generation holds them): stopping them later undoes nothing.
func (a *Agent) Keep(ctx context.Context, keys []string, progress Progress) {
	for _, k := range keysOf(keys) {
		a.runMu.Lock()
		p, ok := a.prepared[k]
		delete(a.prepared, k)
		a.runMu.Unlock()
		if ok {
			a.cleanup(ctx, k, p, true, progress)
		}
	}
}

// VersionState is what the agent reports of one version it runs.
type VersionState struct {
	Key      spec.VersionKey
	Draining bool
	// Status is the supervisor's; ok is false when the supervisor does
	// not know the version at this moment (a restart by hand).
	Status supervisor.Status
	Known  bool
}

// Report returns the state of every version the agent runs, by key.
func (a *Agent) Report() []VersionState {
	var out []VersionState
	for _, k := range a.Running() {
		st, ok := a.procs.Status(k)
		out = append(out, VersionState{Key: k, Draining: a.Draining(k), Status: st, Known: ok})
	}
	return out
}

// Running returns the keys of every version the agent runs, sorted.
func (a *Agent) Running() []spec.VersionKey {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	keys := make([]spec.VersionKey, 0, len(a.running))
	for k := range a.running {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Preparing returns the keys of the versions being prepared, sorted: their
// preparers running, or done and the version not yet kept (a commit) or
// abandoned. What their preparers made — a database, a state directory, GC
// roots — is theirs, though no generation in the store holds them yet and
// their process may not run yet.
func (a *Agent) Preparing() []spec.VersionKey {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	keys := slices.Collect(maps.Keys(a.preparing))
	for k := range a.prepared {
		if a.preparing[k] == 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// IsRunning reports whether the agent runs key and its process is known.
func (a *Agent) IsRunning(key spec.VersionKey) bool { return a.isRunning(key) }

// Draining reports whether key is a version being drained.
func (a *Agent) Draining(key spec.VersionKey) bool {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	v := a.running[key]
	return v != nil && v.draining
}

// StopAll stops every version, topmost first.
func (a *Agent) StopAll(ctx context.Context) {
	a.stopKeys(ctx, a.Running(), nil, func(string, ...any) {})
}

func keysOf(names []string) []spec.VersionKey {
	out := make([]spec.VersionKey, len(names))
	for i, n := range names {
		out[i] = spec.VersionKey(n)
	}
	return out
}

// levels groups a spec's services so that every service comes in a later
// level than all it needs; a level's services can start together.
func levels(s *spec.Spec) ([][]string, error) {
	order, err := spec.Order(s)
	if err != nil {
		return nil, err
	}
	level := map[string]int{}
	var out [][]string
	for _, name := range order {
		l := 0
		for _, n := range s.Services[name].Needs {
			l = max(l, level[n]+1)
		}
		level[name] = l
		for len(out) <= l {
			out = append(out, nil)
		}
		out[l] = append(out[l], name)
	}
	return out, nil
}

// startAll starts every version of g that does not run yet, dependencies
// first, and waits until each is ready. On failure it stops what it started
// and returns an error naming the service (ServiceErrors); nothing else is
// touched. With opts.Adopt it keeps going and returns what it started with
// the errors joined.
func (a *Agent) startAll(ctx context.Context, g *spec.Generation, opts Options, progress Progress) (started, asleep []string, err error) {
	lv, err := levels(g.Spec)
	if err != nil {
		return nil, nil, err
	}
	var resumeErrs []error
	for _, names := range lv {
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for _, name := range names {
			key := g.Instance(name)
			if a.isRunning(key) || opts.only != nil && !opts.only[key] {
				continue
			}
			if opts.Adopt && a.besideExclusive(ctx, g, name, progress) {
				continue
			}
			if _, alive := a.procs.Recorded(key); opts.asleep[key] && !alive {
				// Slept when the daemon stopped; its needs run now.
				wg.Go(func() {
					err := a.RegisterAsleep(ctx, g, name, progress)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
						return
					}
					asleep = append(asleep, string(key))
				})
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := a.start(ctx, g, name, opts, progress)
				mu.Lock()
				defer mu.Unlock()
				started = append(started, string(key))
				if err != nil {
					errs = append(errs, err)
				}
			}()
		}
		wg.Wait()
		if len(errs) > 0 && opts.Adopt {
			// After a daemon restart, keep what runs and go on: a dependent
			// left running must not be taken for an orphan and stopped.
			resumeErrs = append(resumeErrs, errs...)
			continue
		}
		if len(errs) > 0 {
			sort.Strings(started)
			return started, asleep, errors.Join(errs...)
		}
	}
	sort.Strings(started)
	if len(resumeErrs) > 0 {
		return started, asleep, errors.Join(resumeErrs...)
	}
	return started, asleep, nil
}

func (a *Agent) isRunning(key spec.VersionKey) bool {
	a.runMu.Lock()
	v := a.running[key]
	a.runMu.Unlock()
	if v == nil {
		return false
	}
	if v.suspended != nil {
		return true // stopped for a while (Suspend): started again by Unsuspend
	}
	_, ok := a.procs.Get(key)
	return ok || a.asleep != nil && a.asleep(key)
}

// start starts one version and waits until it is ready. Its errors are
// ServiceErrors.
func (a *Agent) start(ctx context.Context, g *spec.Generation, name string, opts Options, progress Progress) error {
	svc := g.Spec.Services[name]
	ver := g.Versions[name]
	key := g.Instance(name)
	fail := func(format string, args ...any) error {
		return &ServiceError{Service: name, Version: ver, Step: StepStart, Err: fmt.Errorf(format, args...)}
	}
	var ho *handover // an exclusive service's old version, stopped for this one (exclusive.go)
	if !opts.Adopt {
		// Before the preparers: a release step (a migration of the
		// single writer's data) must not run beside the old version.
		bound := svc.StopGraceOrDefault() + svc.HealthTimeout() + exclusiveMargin
		var err error
		if ho, err = a.holdExclusive(ctx, name, svc, key, bound, progress); err != nil {
			return fail("%w", err)
		}
	}
	cfg, needs, err := a.configure(ctx, g, name, opts, progress)
	if err != nil {
		a.releaseExclusive(ctx, ho, "", progress)
		return err
	}
	progress("starting %s", key)
	t0 := time.Now()
	inst, err := a.launch(ctx, cfg, svc.Needs, opts, progress)
	if err != nil {
		a.releaseExclusive(ctx, ho, "", progress)
		err = fail("start %s: %w", key, err)
		a.parkFailed(ctx, g, name, cfg, needs, opts, err, progress)
		return err
	}
	a.runMu.Lock()
	a.running[key] = &version{svc: svc, needs: needs}
	a.runMu.Unlock()
	if err := inst.WaitReady(ctx); err != nil {
		if ho != nil {
			// Never two at once: this one goes before the old one starts again.
			a.procs.Stop(context.WithoutCancel(ctx), key)
		}
		a.releaseExclusive(ctx, ho, "", progress)
		err = fail("%s not ready: %w", key, err)
		a.parkFailed(ctx, g, name, cfg, needs, opts, err, progress)
		return err
	}
	a.route.AddBackend(key, inst.Addr())
	a.releaseExclusive(ctx, ho, inst.Addr(), progress)
	progress("ready %s on %s (%s)", key, inst.Addr(), time.Since(t0).Round(time.Millisecond))
	return nil
}

// configure builds the config a version of g's service name runs with:
// the endpoints of what it needs opened, its <NEED>_URLs set, its
// preparers run. Its errors are ServiceErrors.
func (a *Agent) configure(ctx context.Context, g *spec.Generation, name string, opts Options, progress Progress) (supervisor.Config, []spec.VersionKey, error) {
	svc := g.Spec.Services[name]
	ver := g.Versions[name]
	key := g.Instance(name)
	fail := func(format string, args ...any) error {
		return &ServiceError{Service: name, Version: ver, Step: StepStart, Err: fmt.Errorf(format, args...)}
	}
	env := make(map[string]string, len(svc.Env)+len(svc.Needs))
	for k, v := range svc.Env {
		env[k] = v
	}
	var needs []spec.VersionKey
	for _, n := range svc.Needs {
		nk := g.Instance(n) // a need's instance: the one g uses, shared or own
		url, err := a.openEndpoint(nk, a.endpointAddr(key, n, opts))
		if err != nil {
			return supervisor.Config{}, nil, fail("endpoint for %s: %w", nk, err)
		}
		env[spec.EnvName(n)] = url
		needs = append(needs, nk)
	}
	exec := svc.Exec
	cfg := supervisor.Config{
		Service: name, Version: ver, Owner: g.Owner(name), Dir: svc.Package, Exec: exec, Env: env,
		ReadyTimeout: svc.HealthTimeout(), StopGrace: svc.StopGraceOrDefault(),
		CPU: svc.CPU, Fenced: svc.Exclusive,
	}
	// Validated with the spec; enforced by the supervisor's cgroups.
	var err error
	if cfg.Memory, err = spec.ParseMemory(svc.Memory); err != nil {
		return supervisor.Config{}, nil, fmt.Errorf("service %q: memory: %w", name, err)
	}
	if svc.Health != nil {
		cfg.HealthPath = svc.Health.Path
		cfg.HealthInterval, cfg.HealthFailures = svc.HealthInterval(), svc.HealthFailures()
	}
	if svc.Package != "" && !filepath.IsAbs(exec[0]) {
		cfg.Exec = append([]string{filepath.Join(svc.Package, exec[0])}, exec[1:]...)
	}
	a.runMu.Lock()
	a.preparing[key]++
	a.runMu.Unlock()
	defer func() {
		a.runMu.Lock()
		if a.preparing[key]--; a.preparing[key] == 0 {
			delete(a.preparing, key)
		}
		a.runMu.Unlock()
	}()
	var ran []Preparer
	for _, p := range a.prepare {
		ran = append(ran, p)
		if err := p.Prepare(ctx, g, name, &cfg); err != nil {
			// A process a previous daemon left running was prepared then;
			// keep it serving rather than stop it for what is missing now.
			if _, alive := a.procs.Recorded(key); opts.Adopt && alive {
				progress("%s: %v; adopting the running process anyway", key, err)
				continue
			}
			a.cleanup(context.WithoutCancel(ctx), key, preparation{g: g, service: name, ran: ran}, false, progress)
			return supervisor.Config{}, nil, fail("%s: %w", key, err)
		}
	}
	if opts.Adopt {
		// A resume adopts what a committed generation holds: nothing of
		// it is undone.
		a.cleanup(ctx, key, preparation{g: g, service: name, ran: ran}, true, progress)
	} else {
		// Until a commit makes the version the store's, a failure cleans
		// up what was prepared for it (abandon).
		a.runMu.Lock()
		a.prepared[key] = preparation{g: g, service: name, ran: ran}
		a.runMu.Unlock()
	}
	return cfg, needs, nil
}

// abandon stops versions started for what does not go live; their
// preparations are undone as they stop (stopOne).
func (a *Agent) abandon(ctx context.Context, keys []spec.VersionKey, progress Progress) {
	a.stopKeys(ctx, keys, nil, progress)
}

// cleanup runs the cleanup step of the preparers that ran for key, last
// first. A failure is reported, not returned: the deploy has failed
// already (or, started, the version runs), and what is left is named.
func (a *Agent) cleanup(ctx context.Context, key spec.VersionKey, p preparation, started bool, progress Progress) {
	for i := len(p.ran) - 1; i >= 0; i-- {
		c, ok := p.ran[i].(Cleaner)
		if !ok {
			continue
		}
		if err := c.Cleanup(ctx, p.g, p.service, started); err != nil && !started {
			progress("%s: cleaning up after a failed start: %v", key, err)
		} else if err != nil {
			progress("%s: cleaning up after its preparation: %v", key, err)
		}
	}
}

// stopKeys drains and stops versions in rounds: in each round, those that no
// other version still to stop needs; within a round, all at once. It returns
// how many requests had to be ended with 504.
func (a *Agent) stopKeys(ctx context.Context, keys []spec.VersionKey, before func(context.Context, spec.VersionKey), progress Progress) int64 {
	var aborted atomic.Int64
	left := map[spec.VersionKey]bool{}
	for _, k := range keys {
		left[k] = true
	}
	for len(left) > 0 {
		needed := map[spec.VersionKey]bool{}
		a.runMu.Lock()
		for k := range left {
			if v := a.running[k]; v != nil {
				v.draining = true
				for _, n := range v.needs {
					needed[n] = true
				}
			}
		}
		a.runMu.Unlock()
		var round []spec.VersionKey
		for k := range left {
			if !needed[k] {
				round = append(round, k)
			}
		}
		if len(round) == 0 { // cannot happen: needs are acyclic
			for k := range left {
				round = append(round, k)
			}
		}
		var wg sync.WaitGroup
		for _, k := range round {
			delete(left, k)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if before != nil {
					before(ctx, k)
				}
				aborted.Add(a.stopOne(ctx, k, progress))
			}()
		}
		wg.Wait()
	}
	return aborted.Load()
}

// stopOne takes no more requests for a version, waits for those in
// flight (up to its stop grace), ends what is left with 504, then stops
// it and forgets its routes.
func (a *Agent) stopOne(ctx context.Context, key spec.VersionKey, progress Progress) (aborted int64) {
	if a.sleeper != nil {
		// Before the backend goes: a wake that starts meanwhile finds it
		// removed and stops what it started.
		a.sleeper.Forget(key)
	}
	grace := 10 * time.Second
	a.runMu.Lock()
	if v := a.running[key]; v != nil {
		grace = v.svc.StopGraceOrDefault()
	}
	a.runMu.Unlock()
	// No request comes in once the wait for those in flight began: one
	// that comes goes to what replaced the version (routed by its host).
	a.route.Retire(key)
	wctx, cancel := context.WithTimeout(ctx, grace)
	err := a.route.WaitIdle(wctx, key)
	cancel()
	if err != nil {
		aborted = a.route.Abort(key)
		progress("%s: %d requests still in flight after its stop grace (%s): ended with 504", key, aborted, grace)
	}
	if err := a.procs.Stop(ctx, key); err != nil {
		progress("stopping %s: %v", key, err)
	}
	a.route.RemoveBackend(key)
	a.route.CloseEndpoint(key)
	a.runMu.Lock()
	delete(a.running, key)
	p, pending := a.prepared[key]
	delete(a.prepared, key)
	a.runMu.Unlock()
	if pending {
		// Stopped before it went live: undo its preparation.
		a.cleanup(ctx, key, p, false, progress)
	}
	progress("stopped %s", key)
	return aborted
}

// endpointAddr is where the endpoint of need (service name n) for the
// version key is opened: a free port, unless a running process of key, to
// be adopted, was given one in its <NEED>_URL.
func (a *Agent) endpointAddr(key spec.VersionKey, n string, opts Options) string {
	const free = "127.0.0.1:0"
	if !opts.Adopt {
		return free
	}
	rec, ok := a.procs.Recorded(key)
	if !ok {
		return free
	}
	u, err := url.Parse(rec.Env[spec.EnvName(n)])
	if err != nil || u.Host == "" {
		return free
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return free
	}
	return u.Host
}

// openEndpoint opens nk's endpoint at addr, or at a free port when that
// cannot be had.
func (a *Agent) openEndpoint(nk spec.VersionKey, addr string) (string, error) {
	u, err := a.route.OpenEndpoint(nk, addr)
	if err != nil && addr != "127.0.0.1:0" {
		return a.route.OpenEndpoint(nk, "127.0.0.1:0")
	}
	return u, err
}

// launch starts cfg, or, with opts.Adopt, adopts its running process when
// that process was given the same <NEED>_URLs.
func (a *Agent) launch(ctx context.Context, cfg supervisor.Config, needs []string, opts Options, progress Progress) (*supervisor.Instance, error) {
	if opts.Adopt {
		key := cfg.Key()
		if rec, ok := a.procs.Recorded(key); ok {
			same := true
			for _, n := range needs {
				name := spec.EnvName(n)
				same = same && rec.Env[name] == cfg.Env[name]
			}
			if same {
				inst, ok, err := a.procs.Adopt(cfg)
				if err == nil && ok {
					progress("adopted %s (pid %d) on %s", key, inst.Status().PID, inst.Addr())
					return inst, nil
				}
				if err != nil {
					progress("adopting %s: %v; starting it again", key, err)
				}
			} else {
				progress("%s runs with other endpoints than can be had now; starting it again", key)
				a.stopRecorded(context.WithoutCancel(ctx), key, progress)
			}
		}
	}
	return a.procs.Start(cfg)
}

// stopRecorded stops a process a previous daemon left running.
func (a *Agent) stopRecorded(ctx context.Context, key spec.VersionKey, progress Progress) {
	if _, ok, err := a.procs.AdoptRecorded(key); err != nil || !ok {
		return
	}
	if err := a.procs.Stop(ctx, key); err != nil {
		progress("stopping %s: %v", key, err)
		return
	}
	progress("stopped %s: no generation runs it", key)
}

// stopOrphans stops what a previous daemon left running outside the
// current generation.
func (a *Agent) stopOrphans(ctx context.Context, progress Progress) {
	var wg sync.WaitGroup
	for _, k := range a.procs.Orphans() {
		wg.Go(func() { a.stopRecorded(ctx, k, progress) })
	}
	wg.Wait()
}
