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

// Sleepers returns the versions of the current generation the engine
// runs whose service has `idle` set, with how they may sleep. It reports
// false — none may sleep now — while an operation or a confirm window
// runs: a window must see its versions run.
func (e *Engine) Sleepers(ctx context.Context) (map[spec.VersionKey]SleepPolicy, bool) {
	if !e.mu.TryLock() {
		return nil, false
	}
	defer e.mu.Unlock()
	if e.window != nil {
		return nil, false
	}
	// The current generation's idle: a change of idle alone reroutes,
	// and the running version keeps the service it was started with.
	cur, err := e.store.Current(ctx)
	if err != nil || cur == nil {
		return nil, false
	}
	e.runMu.Lock()
	defer e.runMu.Unlock()
	out := map[spec.VersionKey]SleepPolicy{}
	for name, svc := range cur.Spec.Services {
		key := spec.Key(name, cur.Versions[name])
		v := e.running[key]
		if v == nil || v.draining || svc.Idle.D() <= 0 {
			continue
		}
		out[key] = SleepPolicy{Idle: svc.Idle.D(), Needs: append([]spec.VersionKey(nil), v.needs...)}
	}
	return out, true
}

// SetAsleep tells the engine which versions sleep (scale to zero): their
// processes are stopped, yet they are running versions — routed, woken by
// their next request — that a deploy must neither start again nor take
// as its own. Call it before the engine is used.
func (e *Engine) SetAsleep(asleep func(spec.VersionKey) bool) { e.asleep = asleep }
