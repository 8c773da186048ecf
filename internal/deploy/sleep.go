package deploy

import (
	"context"
	"time"

	"hostel/internal/spec"
)

// SleepPolicy is how a running version may be put to sleep (scale to
// zero, internal/idle).
type SleepPolicy struct {
	// Idle is its service's idle in the current generation.
	Idle time.Duration
	// Needs are the exact versions it was built against.
	Needs []spec.VersionKey
}

// Sleepers returns the versions of every environment's current
// generation that run and whose service has `idle` set, with how they may
// sleep. It reports false — none may sleep now — while an operation or a
// confirm window runs: a window must see its versions run.
func (e *Engine) Sleepers(ctx context.Context) (map[spec.VersionKey]SleepPolicy, bool) {
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
	out := map[spec.VersionKey]SleepPolicy{}
	for _, g := range currents {
		for name, svc := range g.Spec.Services {
			if g.Owner(name) != g.EnvOrDefault() {
				// A shared instance sleeps as its owner's spec says: a
				// preview never puts production's processes to sleep.
				continue
			}
			idle := svc.Idle.D()
			if g.EnvOrDefault() != spec.DefaultEnv {
				// A preview's own instances sleep after previews.idle,
				// or their service's shorter idle.
				if p := g.Spec.PreviewIdle(); idle <= 0 || p < idle {
					idle = p
				}
			}
			if idle <= 0 {
				continue
			}
			key := g.Instance(name)
			needs, ok := e.agent.Needs(key)
			if !ok {
				continue
			}
			out[key] = SleepPolicy{Idle: idle, Needs: needs} // only its owner's generation names an instance
		}
	}
	return out, true
}

// SetAsleep tells the engine which versions sleep (scale to zero): their
// processes are stopped, yet they are running versions — routed, woken by
// their next request — that a deploy must neither start again nor take
// as its own. Call it before the engine is used.
func (e *Engine) SetAsleep(asleep func(spec.VersionKey) bool) { e.agent.SetAsleep(asleep) }
