package deploy

import (
	"context"
	"maps"
	"slices"
	"time"

	"hostel/internal/agent"
	"hostel/internal/idle"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// Kept versions that stay callable (old_versions "callable") sleep:
const (
	// FirstSleep is how long a version replaced by a deploy, still
	// running, goes without a request before it is first put to sleep:
	// as soon as what it was handed is done. (No idle is shorter:
	// spec.MinIdle.)
	FirstSleep = time.Second
	// CallableIdle is how long a kept version that a request woke goes
	// without one before it sleeps again, when no idle applies to it (its
	// service's, or previews.idle for a preview's own instance).
	CallableIdle = 15 * time.Minute
)

// kept is a version kept callable, as the engine last decided.
type kept struct {
	// idle is how long it goes without a request, once woken, before it
	// sleeps again: as its generation says (sleepAfter), else
	// CallableIdle.
	idle time.Duration
	// slept is set once it was seen asleep since it was kept, or seen
	// running as another process than first (woken since): from then on
	// it sleeps after idle, not FirstSleep.
	slept bool
	// first is the process it ran as when first seen running.
	first *supervisor.Instance
}

// setCallable records the kept versions that stay callable (Callables)
// for Sleepers and Kept: Sleepers runs every half second and must not
// read the store.
func (e *Engine) setCallable(cs []agent.Callable) {
	e.keptMu.Lock()
	defer e.keptMu.Unlock()
	next := make(map[spec.VersionKey]*kept, len(cs))
	for _, c := range cs {
		k := c.Key()
		if old, ok := e.kept[k]; ok {
			next[k] = old
			continue
		}
		idle := sleepAfter(c.Generation, c.Service)
		if idle <= 0 {
			idle = CallableIdle
		}
		next[k] = &kept{idle: idle}
	}
	e.kept = next
}

// Kept returns the versions kept callable without a current generation
// holding them (old_versions "callable"), sorted, as the engine last
// decided: for `status --all`.
func (e *Engine) Kept() []spec.VersionKey {
	e.keptMu.Lock()
	defer e.keptMu.Unlock()
	return slices.Sorted(maps.Keys(e.kept))
}

// keptSleepers adds to out the kept callable versions that run, with how
// they sleep: FirstSleep until they were seen asleep once, then as their
// generation says, or after CallableIdle.
func (e *Engine) keptSleepers(out map[spec.VersionKey]idle.Policy) {
	e.keptMu.Lock()
	defer e.keptMu.Unlock()
	for key, kv := range e.kept {
		if _, current := out[key]; current {
			continue
		}
		needs, ok := e.agent.Needs(key)
		if !ok {
			continue
		}
		inst, awake := e.procs.Get(key)
		switch {
		case !awake:
			kv.slept = true
			continue
		case kv.first == nil:
			kv.first = inst
		case inst != kv.first:
			// Woken before a look found it asleep.
			kv.slept = true
		}
		after := FirstSleep
		if kv.slept {
			after = kv.idle
		}
		out[key] = idle.Policy{Idle: after, Needs: needs}
	}
}

// Sleepers returns the versions of every environment's current
// generation that run and whose service has `idle` set, and the kept
// versions that stay callable (old_versions), with how they may sleep.
// It reports false — none may sleep now — while an operation or a
// confirm window runs: a window must see its versions run.
func (e *Engine) Sleepers(ctx context.Context) (map[spec.VersionKey]idle.Policy, bool) {
	if !e.mu.TryLock() {
		return nil, false
	}
	defer e.mu.Unlock()
	if len(e.windows) > 0 {
		return nil, false
	}
	// The current generation's idle: a change of idle alone reroutes,
	// and the running version keeps the service it was started with.
	currents, err := e.store.Currents(ctx)
	if err != nil {
		return nil, false
	}
	out := map[spec.VersionKey]idle.Policy{}
	for _, g := range currents {
		for name := range g.Spec.Services {
			after := sleepAfter(g, name)
			if after <= 0 {
				continue
			}
			key := g.Instance(name)
			needs, ok := e.agent.Needs(key)
			if !ok {
				continue
			}
			out[key] = idle.Policy{Idle: after, Needs: needs} // only its owner's generation names an instance
		}
	}
	e.keptSleepers(out)
	return out, true
}

// sleepAfter is how long current generation g's instance of service name
// goes without a request before it sleeps; 0: it never does.
func sleepAfter(g *spec.Generation, name string) time.Duration {
	if g.Owner(name) != g.EnvOrDefault() {
		// A shared instance sleeps as its owner's spec says: a preview
		// never puts production's processes to sleep.
		return 0
	}
	after := g.Spec.Services[name].Idle.D()
	if g.EnvOrDefault() != spec.DefaultEnv {
		// A preview's own instances sleep after previews.idle, or their
		// service's shorter idle.
		if p := g.Spec.PreviewIdle(); after <= 0 || p < after {
			after = p
		}
	}
	return after
}

// sleepingOnResume is what of the current generations, cs, a resume
// registers asleep when no process of it is left: the versions that
// sleep (sleepAfter), needs first — except in an environment whose
// confirm window resumes (windowed, by environment): the window must see
// its versions run (nothing sleeps while it runs), and an exclusive
// service's previous version is left stopped only beside a running one.
func sleepingOnResume(cs, windowed map[string]*spec.Generation) []agent.Callable {
	var out []agent.Callable
	for _, env := range envOrder(cs) {
		if windowed[env] != nil {
			continue
		}
		g := cs[env]
		order, err := spec.Order(g.Spec)
		if err != nil {
			continue // a stored spec was validated; its generation starts as it can
		}
		for _, name := range order {
			if sleepAfter(g, name) > 0 {
				out = append(out, agent.Callable{Generation: g, Service: name})
			}
		}
	}
	return out
}

// SetAsleep tells the engine which versions sleep (scale to zero): their
// processes are stopped, yet they are running versions — routed, woken by
// their next request — that a deploy must neither start again nor take
// as its own. Call it before the engine is used.
func (e *Engine) SetAsleep(asleep func(spec.VersionKey) bool) { e.agent.SetAsleep(asleep) }

// SetSleeper gives the engine the Sleeper that versions registered
// asleep — kept callable ones, and after a restart those that slept — are
// woken by. Call it before the engine is used.
func (e *Engine) SetSleeper(s agent.Sleeper) { e.agent.SetSleeper(s) }
