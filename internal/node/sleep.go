package node

import (
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

// keptSleep is how a kept callable version sleeps.
type keptSleep struct {
	// idle is how long it goes without a request, once woken, before it
	// sleeps again: as its generation says (SleepAfter), else
	// CallableIdle.
	idle time.Duration
	// slept is set once it was seen asleep since it was kept, or seen
	// running as another process than first (woken since): from then on
	// it sleeps after idle, not FirstSleep.
	slept bool
	// first is the process it ran as when first seen running.
	first *supervisor.Instance
}

// setKept records the kept callable versions of the last reconcile —
// those of asleep the current generations do not hold — for Sleepers and
// Kept, which must not read the store.
func (f *Follower) setKept(asleep []agent.Callable, held []string) {
	current := map[spec.VersionKey]bool{}
	for _, k := range held {
		current[spec.VersionKey(k)] = true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	next := make(map[spec.VersionKey]*keptSleep, len(asleep))
	for _, c := range asleep {
		k := c.Key()
		if current[k] {
			continue
		}
		if old, ok := f.kept[k]; ok {
			next[k] = old
			continue
		}
		after := SleepAfter(c.Generation, c.Service)
		if after <= 0 {
			after = CallableIdle
		}
		next[k] = &keptSleep{idle: after}
	}
	f.kept = next
}

// Kept returns the versions kept callable that no current generation
// holds, sorted: for `status --all`.
func (f *Follower) Kept() []spec.VersionKey {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.kept))
}

// Sleepers returns the versions of every environment's current
// generation that run and whose service has `idle` set, and the kept
// versions that stay callable, with how they may sleep: the Sleeper's
// catalog (idle.Catalog), from what the last reconcile made run, never
// from a store read. It reports false — none may sleep now — while a
// reconcile runs, and while a deploy is staged or a confirm window keeps
// a previous generation: a window must see its versions run.
func (f *Follower) Sleepers() (map[spec.VersionKey]idle.Policy, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reconciling || f.cur.desired.Staged != nil || len(f.cur.desired.Keep) > 0 {
		return nil, false
	}
	out := map[spec.VersionKey]idle.Policy{}
	for _, g := range f.cur.currents {
		for name := range g.Spec.Services {
			after := SleepAfter(g, name)
			if after <= 0 {
				continue
			}
			key := g.Instance(name)
			needs, ok := f.agent.Needs(key)
			if !ok {
				continue
			}
			out[key] = idle.Policy{Idle: after, Needs: needs} // only its owner's generation names an instance
		}
	}
	for key, kv := range f.kept {
		if _, current := out[key]; current {
			continue
		}
		needs, ok := f.agent.Needs(key)
		if !ok {
			continue
		}
		inst, awake := f.opts.Procs.Get(key)
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
	return out, true
}

// SleepAfter is how long current generation g's instance of service name
// goes without a request before it sleeps; 0: it never does.
func SleepAfter(g *spec.Generation, name string) time.Duration {
	if !owns(g, name) {
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

// SleepingOnResume is what of the current generations, cs, a node's
// start registers asleep when no process of it is left: the versions
// that sleep (SleepAfter), needs first — except in an environment whose
// confirm window resumes (windowed, by environment): the window must see
// its versions run (nothing sleeps while it runs), and an exclusive
// service's previous version is left stopped only beside a running one.
func SleepingOnResume(cs, windowed map[string]*spec.Generation) []agent.Callable {
	var out []agent.Callable
	for _, env := range EnvOrder(cs) {
		if windowed[env] != nil {
			continue
		}
		g := cs[env]
		order, err := spec.Order(g.Spec)
		if err != nil {
			continue // a stored spec was validated; its generation starts as it can
		}
		for _, name := range order {
			if SleepAfter(g, name) > 0 {
				out = append(out, agent.Callable{Generation: g, Service: name})
			}
		}
	}
	return out
}
