package deploy

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

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

// startOptions say how startAll treats what a previous daemon left running.
type startOptions struct {
	// adopt takes over the process a previous daemon left running for a
	// version (same endpoints) instead of starting a new one, and goes on
	// past versions that fail, keeping what runs: set when resuming after
	// a daemon start, where a dependent left running must not be taken for
	// an orphan and stopped.
	adopt bool
}

// startAll starts every version of g that does not run yet, dependencies
// first, and waits until each is ready. On failure it stops what it started
// and returns an error naming the service (ServiceErrors); nothing else is
// touched. With opts.adopt it keeps going and returns what it started with
// the errors joined.
func (e *Engine) startAll(ctx context.Context, g *spec.Generation, opts startOptions, progress Progress) ([]string, error) {
	lv, err := levels(g.Spec)
	if err != nil {
		return nil, invalid(err)
	}
	var started []string
	var resumeErrs []error
	for _, names := range lv {
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for _, name := range names {
			key := spec.Key(name, g.Versions[name])
			if e.isRunning(key) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := e.start(ctx, g, name, opts, progress)
				mu.Lock()
				defer mu.Unlock()
				started = append(started, string(key))
				if err != nil {
					errs = append(errs, err)
				}
			}()
		}
		wg.Wait()
		if len(errs) > 0 && opts.adopt {
			// After a daemon restart, keep what runs and go on: a dependent
			// left running must not be taken for an orphan and stopped.
			resumeErrs = append(resumeErrs, errs...)
			continue
		}
		if len(errs) > 0 {
			e.stopKeys(context.WithoutCancel(ctx), keysOf(started), progress)
			return nil, fmt.Errorf("deploy failed before the switch, nothing changed: %w", errors.Join(errs...))
		}
	}
	sort.Strings(started)
	if len(resumeErrs) > 0 {
		return started, errors.Join(resumeErrs...)
	}
	return started, nil
}

func (e *Engine) isRunning(key spec.VersionKey) bool {
	e.runMu.Lock()
	v := e.running[key]
	e.runMu.Unlock()
	if v == nil {
		return false
	}
	_, ok := e.procs.Get(key)
	return ok || e.asleep != nil && e.asleep(key)
}

// start starts one version and waits until it is ready. Its errors are
// ServiceErrors.
func (e *Engine) start(ctx context.Context, g *spec.Generation, name string, opts startOptions, progress Progress) error {
	svc := g.Spec.Services[name]
	ver := g.Versions[name]
	key := spec.Key(name, ver)
	fail := func(format string, args ...any) error {
		return &ServiceError{Service: name, Version: ver, Step: StepStart, Err: fmt.Errorf(format, args...)}
	}
	env := make(map[string]string, len(svc.Env)+len(svc.Needs))
	for k, v := range svc.Env {
		env[k] = v
	}
	var needs []spec.VersionKey
	for _, n := range svc.Needs {
		nk := spec.Key(n, g.Versions[n])
		url, err := e.openEndpoint(nk, e.endpointAddr(key, n, opts))
		if err != nil {
			return fail("endpoint for %s: %w", nk, err)
		}
		env[spec.EnvName(n)] = url
		needs = append(needs, nk)
	}
	exec := svc.Exec
	cfg := supervisor.Config{
		Service: name, Version: ver, Dir: svc.Package, Exec: exec, Env: env,
		ReadyTimeout: svc.HealthTimeout(), StopGrace: svc.StopGraceOrDefault(),
		CPU: svc.CPU,
	}
	// Validated with the spec; enforced by the supervisor's cgroups.
	var err error
	if cfg.Memory, err = spec.ParseMemory(svc.Memory); err != nil {
		return fmt.Errorf("service %q: memory: %w", name, err)
	}
	if svc.Health != nil {
		cfg.HealthPath = svc.Health.Path
	}
	if svc.Package != "" && !filepath.IsAbs(exec[0]) {
		cfg.Exec = append([]string{filepath.Join(svc.Package, exec[0])}, exec[1:]...)
	}
	for _, p := range e.prepare {
		if err := p.Prepare(ctx, g, name, &cfg); err != nil {
			// A process a previous daemon left running was prepared then;
			// keep it serving rather than stop it for what is missing now.
			if _, alive := e.procs.Recorded(key); opts.adopt && alive {
				progress("%s: %v; adopting the running process anyway", key, err)
				continue
			}
			return fail("%s: %w", key, err)
		}
	}
	progress("starting %s", key)
	t0 := time.Now()
	inst, err := e.launch(ctx, cfg, svc.Needs, opts, progress)
	if err != nil {
		return fail("start %s: %w", key, err)
	}
	e.runMu.Lock()
	e.running[key] = &version{svc: svc, needs: needs}
	e.runMu.Unlock()
	if err := inst.WaitReady(ctx); err != nil {
		return fail("%s not ready: %w", key, err)
	}
	e.route.AddBackend(key, inst.Addr())
	progress("ready %s on %s (%s)", key, inst.Addr(), time.Since(t0).Round(time.Millisecond))
	return nil
}

// apply starts g's versions that do not run yet, makes g current with
// commit (given what it started), and switches every route to it. If
// anything fails before the switch, it stops what it started: the previous
// generation keeps running and serving, untouched.
func (e *Engine) apply(ctx context.Context, g *spec.Generation, opts startOptions, commit func(started []string) error, progress Progress) ([]string, error) {
	started, err := e.startAll(ctx, g, opts, progress)
	if err != nil {
		return started, err
	}
	if err := commit(started); err != nil {
		e.stopKeys(context.WithoutCancel(ctx), keysOf(started), progress)
		return started, fmt.Errorf("nothing switched: %w", err)
	}
	if err := e.switchTo(g); err != nil {
		return started, err
	}
	progress("switched: generation %d is live", g.Number)
	return started, nil
}

// Table builds the public routing table of a generation.
func Table(g *spec.Generation) router.Table {
	t := router.Table{Domains: map[string]spec.VersionKey{}, Redirects: map[string]string{}, Zone: g.Spec.ZoneOrDefault()}
	for name, svc := range g.Spec.Services {
		key := spec.Key(name, g.Versions[name])
		for _, d := range svc.Domains {
			t.Domains[d] = key
		}
		for _, r := range svc.Redirects {
			t.Redirects[r] = svc.Domains[0]
		}
	}
	return t
}

// switchTo moves every domain to g's versions in one step.
func (e *Engine) switchTo(g *spec.Generation) error {
	if err := e.route.Swap(Table(g)); err != nil {
		return fmt.Errorf("switch to generation %d: %w", g.Number, err)
	}
	return nil
}

// drain stops every running version that g does not hold, once nothing is
// in flight to it and no running version needs it: the topmost first.
func (e *Engine) drain(ctx context.Context, g *spec.Generation, progress Progress) (stopped []string, aborted int64) {
	keep := map[spec.VersionKey]bool{}
	for name, v := range g.Versions {
		keep[spec.Key(name, v)] = true
	}
	var old []spec.VersionKey
	for _, k := range e.Running() {
		if !keep[k] {
			old = append(old, k)
		}
	}
	aborted = e.stopKeys(ctx, old, progress)
	if aborted > 0 {
		progress("%d requests were still running at their stop grace and were ended with 504", aborted)
	}
	stopped = make([]string, len(old))
	for i, k := range old {
		stopped[i] = string(k)
	}
	return stopped, aborted
}

// stopKeys drains and stops versions in rounds: in each round, those that no
// other version still to stop needs; within a round, all at once. It returns
// how many requests had to be ended with 504.
func (e *Engine) stopKeys(ctx context.Context, keys []spec.VersionKey, progress Progress) int64 {
	var aborted atomic.Int64
	left := map[spec.VersionKey]bool{}
	for _, k := range keys {
		left[k] = true
	}
	for len(left) > 0 {
		needed := map[spec.VersionKey]bool{}
		e.runMu.Lock()
		for k := range left {
			if v := e.running[k]; v != nil {
				v.draining = true
				for _, n := range v.needs {
					needed[n] = true
				}
			}
		}
		e.runMu.Unlock()
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
				aborted.Add(e.stopOne(ctx, k, progress))
			}()
		}
		wg.Wait()
	}
	return aborted.Load()
}

// stopOne waits for a version's in-flight requests (up to its stop grace),
// ends what is left with 504, then stops it and forgets its routes.
func (e *Engine) stopOne(ctx context.Context, key spec.VersionKey, progress Progress) (aborted int64) {
	grace := 10 * time.Second
	e.runMu.Lock()
	if v := e.running[key]; v != nil {
		grace = v.svc.StopGraceOrDefault()
	}
	e.runMu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, grace)
	err := e.route.WaitIdle(wctx, key)
	cancel()
	if err != nil {
		aborted = e.route.Abort(key)
		progress("%s: %d requests still in flight after its stop grace (%s): ended with 504", key, aborted, grace)
	}
	if err := e.procs.Stop(ctx, key); err != nil {
		progress("stopping %s: %v", key, err)
	}
	e.route.RemoveBackend(key)
	e.route.CloseEndpoint(key)
	e.runMu.Lock()
	delete(e.running, key)
	e.runMu.Unlock()
	progress("stopped %s", key)
	return aborted
}
