package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"hostel/internal/failpoint"
	"hostel/internal/node"
	"hostel/internal/place"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// nodeDesired is one node's Desired as the engine changes it; nodeResult
// what a node reports its reconciles did.
type (
	nodeDesired = node.Desired
	nodeResult  = node.Result
)

// view is what one read of the store tells the engine: the state, the
// nodes that report themselves, and what each is asked to run.
type view struct {
	snap    *store.Snapshot
	nodes   map[string]node.Info
	desired map[string]node.Desired
	// self is the engine's own node, asked to run what every node runs
	// even before it has reported itself.
	self string
}

// read is the one read an operation decides from.
func (e *Engine) read(ctx context.Context) (*view, error) {
	snap, err := e.st.Read(ctx, node.KindDesired, node.KindNode, node.KindUnschedulable, store.KindPause)
	if err != nil {
		return nil, err
	}
	v := &view{snap: snap, nodes: node.Nodes(snap), desired: map[string]node.Desired{}, self: e.opts.Node}
	for _, r := range snap.Records[node.KindDesired] {
		if d, err := node.DecodeDesired(r.Key, r.Value); err == nil {
			v.desired[r.Key] = d
		}
	}
	return v, nil
}

// names returns the nodes the engine asks to run what it decides: those
// that report themselves, and its own.
func (v *view) names() []string {
	var out []string
	for n := range v.nodes {
		out = append(out, n)
	}
	if v.self != "" {
		if _, ok := v.nodes[v.self]; !ok {
			out = append(out, v.self)
		}
	}
	sort.Strings(out)
	return out
}

// without returns v as it is once the generations drop holds go: their
// environments' current generations with them.
func (v *view) without(drop func(*spec.Generation) bool) *view {
	snap := *v.snap
	snap.Generations = slices.DeleteFunc(slices.Clone(snap.Generations), drop)
	snap.Currents = maps.Clone(snap.Currents)
	maps.DeleteFunc(snap.Currents, func(_ string, g *spec.Generation) bool { return drop(g) })
	w := *v
	w.snap = &snap
	return &w
}

// generation returns stored generation n, or nil.
func (v *view) generation(n uint64) *spec.Generation {
	for _, g := range v.snap.Generations {
		if g.Number == n {
			return g
		}
	}
	return nil
}

// callables is what stays callable asleep in v: see Callables.
func (v *view) callables() []Callable {
	return Callables(v.snap.Generations, v.snap.Currents)
}

// keptByWindows returns the generations open confirm windows may switch
// back to: they keep running. e.mu must be held.
func (e *Engine) keptByWindows() []uint64 {
	var keep []uint64
	for _, env := range node.EnvOrder(e.windows) {
		if p := e.windows[env].prev; p != nil {
			keep = append(keep, p.Number)
		}
	}
	return keep
}

// desiredWrites returns the writes that make every node's Desired what
// the engine decides: keep, staged and the versions that stay callable
// once live, if not nil, is current in its environment, with change
// applied to what else each Desired holds (restarts, stops).
//
// Which node runs what is placed anew (sticky: what runs stays where it
// is) with everything that will run; a generation staged or going live
// that cannot be placed fails with a *place.Error. For any other write
// (a withdrawal, a restart, gc), a placement that fails leaves each node
// running what it runs.
func (e *Engine) desiredWrites(v *view, keep []uint64, staged, live *spec.Generation, change func(*nodeDesired)) ([]store.Write, map[string]node.Desired, error) {
	gens, currents := v.snap.Generations, v.snap.Currents
	if live != nil {
		currents = maps.Clone(currents)
		currents[live.EnvOrDefault()] = live
		if live.Number == 0 {
			gens = append(slices.Clone(gens), live)
		}
	}
	callables := Callables(gens, currents)
	var asleep []node.Callable
	for _, c := range callables {
		if c.Generation.Number == 0 {
			continue // not committed: nothing to keep callable
		}
		asleep = append(asleep, node.Callable{Generation: c.Generation.Number, Service: c.Service})
	}
	first := staged
	if first == nil {
		first = live
	}
	p, err := placement(v, first, currents, keep, callables)
	if err != nil && first != nil {
		return nil, nil, err
	}
	var writes []store.Write
	written := map[string]node.Desired{}
	for _, name := range v.names() {
		d := v.desired[name]
		d.Node, d.Keep, d.Staged, d.Asleep = name, slices.Clone(keep), staged, asleep
		if p != nil && err == nil {
			d.Placed, d.Instances = true, instancesOn(p, name)
		}
		if change != nil {
			change(&d)
		}
		data, err := json.Marshal(d)
		if err != nil {
			continue // plain data: cannot fail
		}
		writes = append(writes, store.Write{Kind: node.KindDesired, Key: name, Value: data, Rev: store.AnyRevision})
		written[name] = d
	}
	return writes, written, nil
}

// writeDesired writes every node's Desired (see desiredWrites) in one
// transaction and returns its revision.
func (e *Engine) writeDesired(ctx context.Context, v *view, keep []uint64, staged *spec.Generation, change func(*nodeDesired)) (uint64, error) {
	if err := failpoint.Inject("engine-before-desired"); err != nil {
		return 0, err
	}
	writes, written, err := e.desiredWrites(v, keep, staged, nil, change)
	if err != nil {
		return 0, err
	}
	rev, err := e.writer().Txn(ctx, writes...)
	if err != nil {
		return 0, err
	}
	maps.Copy(v.desired, written) // what others read next is what was written
	return rev, nil
}

// stage asks every node to start g's versions that do not run (g staged
// in their Desired) and waits until each node did: it returns what they
// started. If a node could not start one, or does not answer in time, g
// is withdrawn — what was started for it stops and its preparation is
// undone — and the error names the versions (ServiceErrors) or the node:
// nothing else changed. starting, if any, names the versions a deploy
// starts: said once the nodes took g, before the wait for them.
func (e *Engine) stage(ctx context.Context, v *view, g *spec.Generation, starting []string, progress Progress) ([]string, error) {
	if len(v.names()) == 0 {
		return nil, errors.New("deploy failed before the switch, nothing changed: no node to run it")
	}
	rev, err := e.writeDesired(ctx, v, e.keptByWindows(), g, nil)
	var unplaced *place.Error
	if errors.As(err, &unplaced) || errors.Is(err, errUnreported) {
		return nil, fmt.Errorf("deploy refused before anything started, nothing changed: %w", err)
	} else if err != nil {
		// The write may have been made all the same (an answer lost):
		// take it back.
		e.withdraw(context.WithoutCancel(ctx), progress)
		return nil, fmt.Errorf("deploy failed before the switch, nothing changed: %w", err)
	}
	// Starting may take a while (up to a health timeout a level of
	// needs): say what waits, before waiting.
	if len(starting) > 0 {
		progress("to start: %s", strings.Join(starting, ", "))
	}
	infos, err := e.applied(ctx, v, rev, stageBound(g)+e.opts.NodeWait)
	var started []string
	var failed []error
	for _, name := range slices.Sorted(maps.Keys(infos)) {
		info := infos[name]
		started = append(started, info.Started...)
		for _, f := range info.Failures {
			if _, ok := g.Versions[f.Service]; !ok {
				continue // not this deploy's
			}
			failed = append(failed, &ServiceError{Service: f.Service, Version: f.Version, Step: StepStart, Err: errors.New(f.Reason)})
		}
	}
	sort.Strings(started)
	started = slices.Compact(started)
	if err == nil && len(failed) > 0 {
		err = errors.Join(failed...)
	}
	if err != nil {
		// What it started was stopped again: none of it stands.
		e.withdraw(context.WithoutCancel(ctx), progress)
		return nil, fmt.Errorf("deploy failed before the switch, nothing changed: %w", err)
	}
	if len(started) > 0 {
		progress("started %s on %s", strings.Join(started, ", "), strings.Join(slices.Sorted(maps.Keys(infos)), ", "))
	}
	return started, nil
}

// stageBound is how long the nodes may take to start g's versions: one
// health timeout per level of needs, and the stop grace of an exclusive
// service's old version.
func stageBound(g *spec.Generation) time.Duration {
	lv, err := spec.Order(g.Spec)
	if err != nil {
		return time.Minute
	}
	var bound time.Duration
	for _, name := range lv {
		svc := g.Spec.Services[name]
		bound += svc.HealthTimeout()
		if svc.Exclusive {
			bound += svc.StopGraceOrDefault()
		}
	}
	return bound
}

// withdraw takes a staged generation back from every node's Desired:
// what was started for it alone stops, its preparation undone.
func (e *Engine) withdraw(ctx context.Context, progress Progress) {
	v, err := e.read(ctx)
	if err == nil {
		var rev uint64
		if rev, err = e.writeDesired(ctx, v, e.keptByWindows(), nil, nil); err == nil {
			_, err = e.applied(ctx, v, rev, e.opts.NodeWait)
		}
	}
	if err != nil {
		progress("withdrawing what was started: %v", err)
	}
}

// commit makes the change move (a commit, a switch that makes live go
// live; nil for a change that moves no current generation) with every
// node's Desired — keep kept, nothing staged — and the end of the pauses
// of services live does not have, in one transaction, and returns its
// revision.
func (e *Engine) commit(ctx context.Context, v *view, keep []uint64, live *spec.Generation, move func(also []store.Write) error) (uint64, error) {
	if err := failpoint.Inject("engine-before-commit"); err != nil {
		return 0, err
	}
	also, written, err := e.desiredWrites(v, keep, nil, live, nil)
	if err != nil {
		return 0, err
	}
	if err := move(append(also, pausesOfGone(v, live)...)); err != nil {
		return 0, err
	}
	maps.Copy(v.desired, written)
	failpoint.Hit("engine-after-commit")
	// The revision the change was made at, which the nodes follow from:
	// that of the Desired records written with it.
	r, err := e.st.Record(ctx, node.KindDesired, v.names()[0])
	if err != nil {
		return 0, err
	}
	return r.Revision, nil
}

// switched waits until every router follows the change at rev, which
// made g live, and says so.
func (e *Engine) switched(ctx context.Context, rev uint64, g *spec.Generation, progress Progress) {
	if e.routesAt(ctx, rev, progress) {
		progress("switched: generation %d is live", g.Number)
	}
}

// routesAt waits, up to Options.RoutesWait, until every router follows
// the change at rev; false (said through progress) if one does not.
func (e *Engine) routesAt(ctx context.Context, rev uint64, progress Progress) bool {
	wctx, cancel := context.WithTimeout(ctx, e.opts.RoutesWait)
	defer cancel()
	if err := node.RoutesAt(wctx, e.st, rev); err != nil {
		progress("the change is made, but %v", err)
		return false
	}
	return true
}

// drained waits until every node has applied the change at rev — drained
// and stopped what it no longer holds — and returns what they stopped.
func (e *Engine) drained(ctx context.Context, v *view, rev uint64, progress Progress) (stopped []string, aborted int64) {
	infos, err := e.applied(ctx, v, rev, maxStopGrace(v)+e.opts.NodeWait)
	if err != nil {
		progress("draining: %v", err)
	}
	for _, info := range infos {
		stopped = append(stopped, info.Stopped...)
		aborted += info.Aborted
	}
	sort.Strings(stopped)
	stopped = slices.Compact(stopped)
	if stopped == nil {
		stopped = []string{}
	}
	if aborted > 0 {
		progress("%d requests were still running at their stop grace and were ended with 504", aborted)
	}
	return stopped, aborted
}

// maxStopGrace is the longest stop grace of v's generations.
func maxStopGrace(v *view) time.Duration {
	grace := 10 * time.Second
	for _, g := range v.snap.Generations {
		for _, s := range g.Spec.Services {
			grace = max(grace, s.StopGraceOrDefault())
		}
	}
	return grace
}

// applied waits, up to bound, until every node asked has applied the
// state at rev or later, and returns what each reported its reconciles
// since rev did. A node whose record goes meanwhile (its lease ended: it
// died) is no longer waited for; one that does not answer in time fails
// the wait.
func (e *Engine) applied(ctx context.Context, v *view, rev uint64, bound time.Duration) (map[string]node.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	asked := v.names()
	out := map[string]node.Result{}
	var behind []string
	err := node.Await(ctx, e.st, func(snap *store.Snapshot) bool {
		nodes := node.Nodes(snap)
		behind = behind[:0]
		for _, name := range asked {
			info, ok := nodes[name]
			switch {
			case !ok && v.nodes[name].Name != "":
				continue // it reported itself before: gone since
			case ok && info.Applied >= rev:
				out[name] = info.Since(rev)
			default:
				behind = append(behind, name)
			}
		}
		return len(behind) == 0
	}, node.KindNode)
	if err != nil {
		return out, fmt.Errorf("node %s did not answer within %s: %w", strings.Join(behind, ", "), bound, err)
	}
	return out, nil
}

// exclusiveKept refuses g when it makes a service exclusive whose other
// version is kept callable (asleep, for an old version of a service with
// old_versions "callable" that needs it): woken by its name, it would run
// beside g's. (exclusive is a routing field, not part of the version: the
// spec that kept it did not say so.)
func exclusiveKept(g *spec.Generation, asleep []Callable) error {
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
