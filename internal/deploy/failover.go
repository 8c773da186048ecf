package deploy

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"hostel/internal/node"
	"hostel/internal/place"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// Failover and planned maintenance. A re-placement is an engine operation
// like a restart: the same generations, a new placement. What runs on a
// node that is gone (its lease ended: its records went with it) or drained
// (its unschedulable record) is placed on the other nodes, staged there —
// each node's Desired names what it runs now and what it starts — and
// once they all report it ready, every node's Desired is committed without
// it in one transaction: the drained node then drains and stops it as a
// deploy's old versions are (after every router follows the commit), so a
// move loses no request. A node that is gone keeps, in its Desired, only
// the instances pinned to it (placement.node): those are not moved, it
// runs them again when it comes back, and nothing else — it stops, at its
// start, what was moved away meanwhile.

// Move is one instance a re-placement moves.
type Move struct {
	Instance spec.VersionKey `json:"instance"`
	// From are the nodes it leaves; To those it starts on. A stranded
	// instance has no To.
	From []string `json:"from"`
	To   []string `json:"to,omitempty"`
}

// Replacement is what a re-placement did.
type Replacement struct {
	// Moved are the instances it moved, by key.
	Moved []Move `json:"moved"`
	// Stranded are the instances pinned (placement.node) to a node that
	// is gone, which stay placed there: they run again when it comes
	// back.
	Stranded []Move `json:"stranded,omitempty"`
	// Stopped are the versions stopped where they were moved from.
	Stopped []string `json:"stopped"`
}

// String says what r did in one line, for the log.
func (r *Replacement) String() string {
	var parts []string
	for _, m := range r.Moved {
		parts = append(parts, fmt.Sprintf("%s from %s to %s", m.Instance, strings.Join(m.From, ","), strings.Join(m.To, ",")))
	}
	for _, m := range r.Stranded {
		parts = append(parts, fmt.Sprintf("%s stays on %s, where placement.node pins it, until that node comes back", m.Instance, strings.Join(m.From, ",")))
	}
	return strings.Join(parts, "; ")
}

// Replace places anew what runs on nodes that are gone or drained, and
// gives a node that reported itself since the last placement its own
// Desired. It does nothing when every node's Desired already says where
// each instance runs, or while a node the engine asks has not reported
// itself yet (nothing is placed then).
func (e *Engine) Replace(ctx context.Context, progress Progress) (*Replacement, error) {
	if err := e.lead(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.replaceLocked(ctx, progress)
}

// Drain makes node name unschedulable — recorded in the store, so that it
// lasts across restarts until Undrain — and moves its instances to the
// other nodes, each started and ready there before it stops on name. An
// unknown node, or instances the other nodes cannot take, are input
// errors: nothing changed.
func (e *Engine) Drain(ctx context.Context, name string, progress Progress) (*Replacement, error) {
	if err := e.lead(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	if err := known(v, name); err != nil {
		return nil, err
	}
	if !drained(v, name) {
		data, _ := json.Marshal(node.Drained{Since: time.Now().UTC()}) // plain data: cannot fail
		if _, err := e.writer().Txn(ctx, store.Write{Kind: node.KindUnschedulable, Key: name, Value: data, Rev: 0}); err != nil && !errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("drain %s: %w", name, err)
		}
	}
	r, err := e.replaceLocked(ctx, progress)
	var unplaced *place.Error
	if errors.As(err, &unplaced) {
		// What it runs fits nowhere else: it stays schedulable.
		if _, derr := e.writer().Txn(context.WithoutCancel(ctx), store.Write{Kind: node.KindUnschedulable, Key: name, Rev: store.AnyRevision, Delete: true}); derr != nil {
			err = errors.Join(err, fmt.Errorf("taking the drain back: %w", derr))
		}
		return nil, invalid(fmt.Errorf("node %s cannot be drained, nothing changed: %w", name, err))
	}
	if err != nil {
		return r, fmt.Errorf("drain %s: %w", name, err)
	}
	return r, nil
}

// Undrain makes node name schedulable again: later placements may put
// instances on it; nothing moves now. It reports whether the node was
// drained.
func (e *Engine) Undrain(ctx context.Context, name string) (bool, error) {
	if err := e.lead(); err != nil {
		return false, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return false, err
	}
	if err := known(v, name); err != nil {
		return false, err
	}
	if !drained(v, name) {
		return false, nil
	}
	if _, err := e.writer().Txn(ctx, store.Write{Kind: node.KindUnschedulable, Key: name, Rev: store.AnyRevision, Delete: true}); err != nil && !errors.Is(err, store.ErrNotFound) {
		return false, fmt.Errorf("undrain %s: %w", name, err)
	}
	return true, nil
}

// known returns an input error unless name is a node of v: one that
// reports itself, or one the engine asked to run something (gone since).
func known(v *view, name string) error {
	if _, ok := v.nodes[name]; ok {
		return nil
	}
	if _, ok := v.desired[name]; ok {
		return nil
	}
	return invalid(fmt.Errorf("no node %q in the deployment (hostel nodes lists them)", name))
}

// drained reports whether v records node name as unschedulable.
func drained(v *view, name string) bool {
	return slices.ContainsFunc(v.snap.Records[node.KindUnschedulable], func(r store.Record) bool { return r.Key == name })
}

// replaceLocked is Replace; e.mu must be held.
func (e *Engine) replaceLocked(ctx context.Context, progress Progress) (*Replacement, error) {
	res := &Replacement{Moved: []Move{}, Stopped: []string{}}
	v, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	nodes, ok := nodesOf(v)
	if !ok {
		return res, nil
	}
	keep := e.keptByWindows()
	want, err := wanted(v, nil, v.snap.Currents, keep, v.callables())
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, n := range v.names() {
		live[n] = true
	}
	schedulable := 0
	for _, n := range nodes {
		if !n.Unschedulable {
			schedulable++
		}
	}
	// An instance pinned to a node that is gone stays placed there; one
	// with more replicas than there are nodes left runs on all of them
	// until more come (a deploy would be refused, not a failover).
	var movable []place.Instance
	strandedOn := map[string][]spec.VersionKey{}
	for _, in := range want {
		if in.Node != "" && !live[in.Node] {
			strandedOn[in.Node] = append(strandedOn[in.Node], in.Key)
			res.Stranded = append(res.Stranded, Move{Instance: in.Key, From: []string{in.Node}})
			continue
		}
		in.Replicas = max(1, min(in.Replicas, schedulable))
		movable = append(movable, in)
	}
	cur := placed(v)
	p, err := place.Make(movable, nodes, cur)
	if err != nil {
		return nil, err
	}
	// What each node is to run: the placement on those that report
	// themselves, what is pinned to it on one that is gone.
	target := map[string][]spec.VersionKey{}
	for _, n := range v.names() {
		target[n] = instancesOn(p, n)
	}
	var gone []string
	for _, n := range slices.Sorted(maps.Keys(v.desired)) {
		if !live[n] {
			gone = append(gone, n)
			target[n] = slices.Sorted(slices.Values(strandedOn[n]))
		}
	}
	changed := false
	for n, t := range target {
		if d, ok := v.desired[n]; !ok || !d.Placed || !slices.Equal(d.Instances, t) {
			changed = true
		}
	}
	if !changed {
		if len(res.Stranded) > 0 {
			progress("placed anew: %s", res)
		}
		return res, nil
	}
	stranded := map[spec.VersionKey]bool{}
	for _, m := range res.Stranded {
		stranded[m.Instance] = true
	}
	for _, k := range slices.Sorted(maps.Keys(p)) {
		from, to := without(cur[k], p[k]), without(p[k], cur[k])
		if len(from) > 0 && len(to) > 0 && !stranded[k] {
			res.Moved = append(res.Moved, Move{Instance: k, From: from, To: to})
		}
	}

	before := maps.Clone(v.desired)
	var starts bool
	for n, t := range target {
		if live[n] && len(without(t, before[n].Instances)) > 0 {
			starts = true
		}
	}
	if starts {
		// Stage: each node runs what it runs and starts what comes to it.
		rev, err := e.writeDesired(ctx, v, keep, nil, func(d *nodeDesired) {
			b := before[d.Node]
			d.Placed, d.Instances = true, slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(b.Instances), target[d.Node]...))))
		})
		if err != nil {
			return nil, fmt.Errorf("placing anew: %w", err)
		}
		infos, err := e.applied(ctx, v, rev, moveBound(v)+e.opts.NodeWait)
		for _, name := range slices.Sorted(maps.Keys(infos)) {
			for _, f := range infos[name].Failures {
				if moved(res.Moved, spec.Key(f.Service, f.Version), name) {
					err = errors.Join(err, fmt.Errorf("start %s-%s on %s: %s", f.Service, f.Version, name, f.Reason))
				}
			}
		}
		if err != nil && len(gone) == 0 {
			// A planned move: nothing moves unless all of it can.
			if _, werr := e.writeDesired(context.WithoutCancel(ctx), v, keep, nil, func(d *nodeDesired) {
				d.Placed, d.Instances = before[d.Node].Placed, before[d.Node].Instances
			}); werr != nil {
				err = errors.Join(err, fmt.Errorf("taking the move back: %w", werr))
			}
			return nil, fmt.Errorf("nothing moved: %w", err)
		} else if err != nil {
			// What ran on a node that is gone is better started where it
			// can be than kept where it cannot run.
			progress("placing anew what ran on %s: %v", strings.Join(gone, ", "), err)
		}
	}
	// Commit: every node's Desired as placed, what was moved dropped
	// where it was.
	writes, written, err := e.desiredWrites(v, keep, nil, nil, func(d *nodeDesired) {
		d.Placed, d.Instances = true, target[d.Node]
	})
	if err != nil {
		return nil, err
	}
	var tmpl node.Desired
	for _, d := range written {
		tmpl = d
	}
	for _, n := range gone {
		d := v.desired[n]
		d.Node, d.Keep, d.Staged, d.Asleep, d.Restarts = n, tmpl.Keep, nil, tmpl.Asleep, nil
		d.Placed, d.Instances = true, target[n]
		data, _ := json.Marshal(d) // plain data: cannot fail
		writes = append(writes, store.Write{Kind: node.KindDesired, Key: n, Value: data, Rev: store.AnyRevision})
		written[n] = d
	}
	rev, err := e.writer().Txn(ctx, writes...)
	if err != nil {
		return nil, fmt.Errorf("placing anew: %w", err)
	}
	maps.Copy(v.desired, written)
	if s := res.String(); s != "" {
		progress("placed anew: %s", s)
	}
	e.routesAt(ctx, rev, progress)
	res.Stopped, _ = e.drained(context.WithoutCancel(ctx), v, rev, progress)
	return res, nil
}

// moveBound is how long the nodes may take to start what moves to them:
// as long as a stage of any current generation.
func moveBound(v *view) time.Duration {
	var bound time.Duration
	for _, g := range v.snap.Currents {
		bound = max(bound, stageBound(g))
	}
	return bound
}

// moved reports whether version k is one of moves' instances that start
// on node name.
func moved(moves []Move, k spec.VersionKey, name string) bool {
	return slices.ContainsFunc(moves, func(m Move) bool { return m.Instance.Version() == k && slices.Contains(m.To, name) })
}

// without returns what of a is not in b, sorted.
func without[T cmp.Ordered](a, b []T) []T {
	var out []T
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// failoverRetry is how long FailOver waits before it tries again a
// re-placement that failed.
const failoverRetry = 2 * time.Second

// FailOver re-places, until ctx ends, what runs on a node that goes: at
// every change of the nodes that report themselves (a lease ended, a node
// came or came back) or of the drained ones, and again every
// failoverRetry after a re-placement that failed. It re-places once at
// its start too: a node may have gone while no engine led. A node the
// engine asks to run something that has not reported itself since the
// engine was made is waited for until Options.JoinWait after that (it
// may be starting, as a whole cluster does); one the engine saw report
// itself and go is gone at once. The daemon runs it while its engine
// leads.
func (e *Engine) FailOver(ctx context.Context) {
	for ctx.Err() == nil {
		e.failOver(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(failoverRetry):
		}
	}
}

// failOver is one watch of FailOver's, until ctx ends or the watch does.
func (e *Engine) failOver(ctx context.Context) {
	rs, err := e.st.Records(ctx, node.KindNode)
	if err != nil {
		return
	}
	present := map[string]bool{}
	var from uint64
	for _, r := range rs {
		present[r.Key] = true
		from = max(from, r.Revision)
	}
	// From the newest report read: a node that went before it is not in
	// the records, and the re-placement below reads after it anyway.
	events, err := e.st.Watch(ctx, from)
	if err != nil {
		return
	}
	retry := time.NewTimer(0) // the first re-placement
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			if wait := e.joining(ctx, present); wait > 0 {
				retry.Reset(wait)
				continue
			}
			if _, err := e.Replace(ctx, e.logf); err != nil && ctx.Err() == nil {
				if !errors.Is(err, ErrStandby) {
					e.logf("placing anew what ran on the nodes that went: %v (trying again in %s)", err, failoverRetry)
				}
				retry.Reset(failoverRetry)
			}
		case ev, ok := <-events:
			if !ok || ev.Err != nil {
				return
			}
			changed := false
			switch {
			case ev.Kind == node.KindNode && ev.Type == store.EventRecordDeleted:
				changed = present[ev.Key]
				delete(present, ev.Key)
				e.sawGo(ev.Key)
			case ev.Kind == node.KindNode && ev.Type == store.EventRecord:
				changed = !present[ev.Key]
				present[ev.Key] = true
			case ev.Kind == node.KindUnschedulable:
				changed = true
			}
			if changed {
				retry.Reset(0)
			}
		}
	}
}

// sawGo notes that node name went while the engine watched: FailOver
// need not wait for it to join.
func (e *Engine) sawGo(name string) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.gone == nil {
		e.gone = map[string]bool{}
	}
	e.gone[name] = true
}

// joining returns how long FailOver is to wait before it re-places: until
// JoinWait after the engine was made while a node it asks to run
// something (a Desired record) has not reported itself (not in present)
// and was not seen to go; 0 if it need not wait.
func (e *Engine) joining(ctx context.Context, present map[string]bool) time.Duration {
	left := time.Until(e.made.Add(e.opts.JoinWait))
	if left <= 0 {
		return 0
	}
	rs, err := e.st.Records(ctx, node.KindDesired)
	if err != nil {
		return failoverRetry
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	for _, r := range rs {
		if !present[r.Key] && !e.gone[r.Key] {
			return left
		}
	}
	return 0
}
