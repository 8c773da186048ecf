package agent

import "hostel/internal/spec"

// SetAsleep tells the agent which versions sleep (scale to zero,
// internal/idle): their processes are stopped, yet they are running
// versions — routed, woken by their next request — that a reconcile must
// neither start again nor take for new. Call it before the agent is used.
func (a *Agent) SetAsleep(asleep func(spec.VersionKey) bool) { a.asleep = asleep }

// Needs returns the exact versions key was built against; false if key is
// not a version the agent runs, or one being drained.
func (a *Agent) Needs(key spec.VersionKey) ([]spec.VersionKey, bool) {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	v := a.running[key]
	if v == nil || v.draining {
		return nil, false
	}
	return append([]spec.VersionKey(nil), v.needs...), true
}
