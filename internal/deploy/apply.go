package deploy

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"hostel/internal/agent"
	"hostel/internal/spec"
)

// stored is what the engine reads of the store to decide what runs:
// every environment's current generation and every generation kept.
type stored struct {
	currents map[string]*spec.Generation
	kept     []*spec.Generation
}

// read reads what a decision needs of the store. e.mu must be held.
func (e *Engine) read(ctx context.Context) (stored, error) {
	cs, err := e.store.Currents(ctx)
	if err != nil {
		return stored{}, err
	}
	kept, err := e.store.List(ctx)
	if err != nil {
		return stored{}, err
	}
	return stored{currents: cs, kept: kept}, nil
}

// desired is what the machine must run while g goes live in its
// environment: every environment's current generation — still serving
// until the switch — g, the generations open confirm windows may switch
// back to, and, asleep, the kept versions that stay callable. With g nil:
// what runs once the switch is done (and the window, if any, settled).
// e.mu must be held.
func (e *Engine) desired(ctx context.Context, g *spec.Generation) (agent.Desired, error) {
	st, err := e.read(ctx)
	if err != nil {
		return agent.Desired{}, err
	}
	return e.desiredOf(st, g), nil
}

// desiredOf is desired given what the store holds, st, which it leaves
// as it is. It keeps the callable versions it decides for Sleepers.
// e.mu must be held.
func (e *Engine) desiredOf(st stored, g *spec.Generation) agent.Desired {
	var d agent.Desired
	for _, env := range envOrder(st.currents) {
		d.Generations = append(d.Generations, st.currents[env])
	}
	if g != nil {
		d.Generations = append(d.Generations, g)
	}
	for _, env := range envOrder(e.windows) {
		d.Generations = append(d.Generations, e.windows[env].prev)
	}
	d.Asleep = Callables(st.kept, st.currents)
	e.setCallable(d.Asleep)
	return d
}

// apply has the agent start g's versions that do not run yet, makes g
// current with commit (given what it started), and switches every route
// to it. If anything fails before the switch, the agent stops what it
// started and undoes its preparation: the previous generation keeps
// running and serving, untouched.
func (e *Engine) apply(ctx context.Context, g *spec.Generation, commit func(started []string) error, progress Progress) ([]string, error) {
	// One read serves both: e.mu keeps every other writer out until the
	// commit.
	st, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	d := e.desiredOf(st, g)
	// What ran before: the same, without g (the callables are decided
	// once).
	before := agent.Desired{Generations: slices.DeleteFunc(slices.Clone(d.Generations), func(x *spec.Generation) bool { return x == g }), Asleep: d.Asleep}
	if err := exclusiveKept(g, d.Asleep); err != nil {
		return nil, invalid(err)
	}
	rep, err := e.agent.Reconcile(ctx, d, agent.Options{}, progress)
	if err != nil {
		// What it started was stopped again: none of it stands.
		return nil, fmt.Errorf("deploy failed before the switch, nothing changed: %w", err)
	}
	if err := commit(rep.Started); err != nil {
		// Back to what ran: stops what was started and undoes its
		// preparation.
		e.agent.Reconcile(context.WithoutCancel(ctx), before, agent.Options{}, progress)
		return rep.Started, fmt.Errorf("nothing switched: %w", err)
	}
	e.agent.Keep(context.WithoutCancel(ctx), rep.Started, progress)
	if err := e.switchTo(context.WithoutCancel(ctx), g); err != nil {
		return rep.Started, err
	}
	progress("switched: generation %d is live", g.Number)
	e.wakeAlwaysOn(context.WithoutCancel(ctx), g, progress)
	return rep.Started, nil
}

// exclusiveKept refuses g when it makes a service exclusive whose other
// version is kept callable (asleep, for an old version of a service with
// old_versions "callable" that needs it): woken by its name, it would run
// beside g's. (exclusive is a routing field, not part of the version: the
// spec that kept it did not say so.)
func exclusiveKept(g *spec.Generation, asleep []agent.Callable) error {
	env := g.EnvOrDefault()
	for _, c := range asleep {
		svc := g.Spec.Services[c.Service]
		k := c.Key()
		if svc == nil || !svc.Exclusive || k.Owner() != env || g.Owner(c.Service) != env || k == g.Instance(c.Service) {
			continue
		}
		where := ""
		if g.Source != "" {
			where = g.Source + ": "
		}
		return fmt.Errorf("%sservice %q: exclusive: its version %s is kept callable by generation %d (old_versions \"callable\") and would run beside the new one when called; drop that generation first (hostel gc) or deploy without exclusive", where, c.Service, k.Version(), c.Generation.Number)
	}
	return nil
}

// wakeAlwaysOn wakes the versions of g, live now, that sleep though they
// must not (no idle applies to them): a kept callable version a rollback
// made current again, or a version whose idle the deploy removed; it
// waits for them, together, and reports a wake that fails (the version
// is then "failed" in status, and its next request tries again). A
// version that runs is left as it is, and so is an instance g shares:
// its owner decides whether it sleeps, and one paused by hand: its first
// request after the resume wakes it.
func (e *Engine) wakeAlwaysOn(ctx context.Context, g *spec.Generation, progress Progress) {
	var wg sync.WaitGroup
	for name := range g.Versions {
		if sl, _ := e.route.Sleeping(g.Instance(name)); sl.Paused {
			continue // its first request after the resume wakes it
		}
		if owns(g, name) && sleepAfter(g, name) <= 0 {
			wg.Go(func() {
				if err := e.route.Wake(ctx, g.Instance(name)); err != nil {
					progress("waking %s, live now: %v", g.Instance(name), err)
				}
			})
		}
	}
	wg.Wait()
}

// switchTo moves every domain to g's versions in one step; the other
// environments' routes stay as they are.
func (e *Engine) switchTo(ctx context.Context, g *spec.Generation) error {
	cs, err := e.store.Currents(ctx)
	if err != nil {
		return fmt.Errorf("switch to generation %d: %w", g.Number, err)
	}
	cs[g.EnvOrDefault()] = g // committed or selected just now
	if err := e.routeTo(ctx, cs); err != nil {
		return fmt.Errorf("switch to generation %d: %w", g.Number, err)
	}
	e.notifySwitch(g)
	if g.EnvOrDefault() == spec.DefaultEnv {
		e.dropPausesOfGone(ctx, g)
	}
	return nil
}

// notifySwitch tells the switch hook, if any, that g is live.
func (e *Engine) notifySwitch(g *spec.Generation) {
	if e.switched != nil {
		e.switched(g)
	}
}

// drain has the agent stop every running version that no environment's
// current generation holds (nor an open confirm window may switch back
// to), once nothing is in flight to it and no running version needs it:
// the topmost first. If the store cannot say what the environments hold,
// it stops nothing. e.mu must be held.
func (e *Engine) drain(ctx context.Context, progress Progress) (stopped []string, aborted int64) {
	d, err := e.desired(ctx, nil)
	if err != nil {
		progress("not draining: %v", err)
		return []string{}, 0
	}
	rep, err := e.agent.Reconcile(ctx, d, agent.Options{}, progress)
	if err != nil {
		// Everything desired runs already; a start here is a version that
		// went away meanwhile, reported by status.
		progress("draining: %v", err)
	}
	return rep.Stopped, rep.Aborted
}
