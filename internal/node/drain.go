package node

import (
	"context"
	"time"

	"hostel/internal/spec"
	"hostel/internal/store"
)

// Drain order across nodes. Old versions drain topmost first: a version
// is stopped only once what needs it has stopped, so a request a
// dependent finishes never finds its need gone. On one node the agent
// orders its stops; a dependent on another node is the store's to tell.
// Where the engine asks other nodes too, a node about to stop a version
// waits until no other node reports an instance built against it (the
// nodes that run those drain them at the same change) or, if one never
// does, up to their stop grace and a margin (a node that died takes its
// reports with its lease).

// dependentsMargin is how much longer than the dependents' longest stop
// grace a node waits for them before it stops what they need anyway.
const dependentsMargin = 5 * time.Second

// Dependents returns the versions of gens built against key: each
// generation's instance of a service that needs the service whose
// instance in that generation is key.
func Dependents(gens []*spec.Generation, key spec.VersionKey) map[spec.VersionKey]time.Duration {
	out := map[spec.VersionKey]time.Duration{} // → its stop grace
	for _, g := range gens {
		for name, svc := range g.Spec.Services {
			for _, n := range svc.Needs {
				if g.Instance(n) == key {
					out[g.Instance(name)] = svc.StopGraceOrDefault()
				}
			}
		}
	}
	return out
}

// awaitDependents waits until no node but this one reports an instance
// of gens that needs key (see above); it says so when it gives up.
func (f *Follower) awaitDependents(ctx context.Context, gens []*spec.Generation, key spec.VersionKey) {
	deps := Dependents(gens, key)
	if len(deps) == 0 {
		return
	}
	bound := time.Duration(0)
	for _, grace := range deps {
		bound = max(bound, grace)
	}
	ctx, cancel := context.WithTimeout(ctx, bound+dependentsMargin)
	defer cancel()
	var running []string // what runs elsewhere, for the log
	err := Await(ctx, f.st, func(snap *store.Snapshot) bool {
		running = running[:0]
		for _, r := range snap.Records[KindInstance] {
			n, k, ok := SplitInstanceKey(r.Key)
			if _, dep := deps[k]; ok && dep && n != f.opts.Name {
				running = append(running, r.Key)
			}
		}
		return len(running) == 0
	}, KindInstance)
	if err != nil {
		f.logf("node %s: stopping %s while %v, built against it, still run: %v", f.opts.Name, key, running, err)
	}
}
