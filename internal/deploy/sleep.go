package deploy

import (
	"context"

	"hostel/internal/idle"
	"hostel/internal/spec"
)

// Sleepers returns the versions of every environment's current
// generation that run and whose service has `idle` set, with how they may
// sleep. It reports false — none may sleep now — while an operation or a
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
		for name, svc := range g.Spec.Services {
			if g.Owner(name) != g.EnvOrDefault() {
				// A shared instance sleeps as its owner's spec says: a
				// preview never puts production's processes to sleep.
				continue
			}
			after := svc.Idle.D()
			if g.EnvOrDefault() != spec.DefaultEnv {
				// A preview's own instances sleep after previews.idle,
				// or their service's shorter idle.
				if p := g.Spec.PreviewIdle(); after <= 0 || p < after {
					after = p
				}
			}
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
	return out, true
}

// SetAsleep tells the engine which versions sleep (scale to zero): their
// processes are stopped, yet they are running versions — routed, woken by
// their next request — that a deploy must neither start again nor take
// as its own. Call it before the engine is used.
func (e *Engine) SetAsleep(asleep func(spec.VersionKey) bool) { e.agent.SetAsleep(asleep) }
