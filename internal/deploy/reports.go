package deploy

import (
	"context"
	"errors"
	"sync"
	"time"

	"hostel/internal/node"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// reports is the engine's view of what the nodes report of their
// instances (node.Instance), kept by following the store: the confirm
// windows and the guards after them read it, never a process.
type reports struct {
	st   store.Store
	logf Progress

	mu       sync.Mutex
	byKey    map[spec.VersionKey]map[string]node.Instance // by instance, then node
	currents map[string]uint64                            // every environment's current generation
	rev      uint64                                       // the revision the view follows
	changed  chan struct{}                                // closed and replaced on every change
	// went, if set, is told every node whose record goes (its lease
	// ended), standby or not: FailOver need not wait for it to join.
	went func(node string)
}

func newReports(st store.Store, logf Progress) *reports {
	return &reports{st: st, logf: logf, byKey: map[spec.VersionKey]map[string]node.Instance{}, currents: map[string]uint64{}, changed: make(chan struct{})}
}

// start reads every report, then follows them in the background until
// ctx ends.
func (r *reports) start(ctx context.Context) error {
	rev, err := r.load(ctx)
	if err != nil {
		return err
	}
	go func() {
		for ctx.Err() == nil {
			err := r.follow(ctx, rev)
			if ctx.Err() != nil {
				return
			}
			r.logf("following the nodes' reports: %v; reading them again", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			if rev, err = r.load(ctx); err != nil {
				r.logf("reading the nodes' reports: %v", err)
			}
		}
	}()
	return nil
}

// load reads every report and returns the revision it read at.
func (r *reports) load(ctx context.Context) (uint64, error) {
	snap, err := r.st.Read(ctx, node.KindInstance)
	if err != nil {
		return 0, err
	}
	all := map[spec.VersionKey]map[string]node.Instance{}
	for _, rec := range snap.Records[node.KindInstance] {
		if in, err := node.DecodeInstance(rec.Key, rec.Value); err == nil {
			if all[in.Key] == nil {
				all[in.Key] = map[string]node.Instance{}
			}
			all[in.Key][in.Node] = in
		}
	}
	currents := map[string]uint64{}
	for env, g := range snap.Currents {
		currents[env] = g.Number
	}
	r.mu.Lock()
	r.byKey, r.currents, r.rev = all, currents, snap.Revision
	r.notifyLocked()
	r.mu.Unlock()
	return snap.Revision, nil
}

// follow applies each change to a report after rev until the watch ends.
func (r *reports) follow(ctx context.Context, rev uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := r.st.Watch(ctx, rev)
	if err != nil {
		return err
	}
	for ev := range events {
		if ev.Err != nil {
			return ev.Err
		}
		r.mu.Lock()
		r.rev = max(r.rev, ev.Revision)
		r.mu.Unlock()
		if ev.Type == store.EventCurrent {
			r.mu.Lock()
			if ev.Generation == 0 {
				delete(r.currents, ev.Env)
			} else {
				r.currents[ev.Env] = ev.Generation
			}
			r.notifyLocked()
			r.mu.Unlock()
			continue
		}
		if ev.Kind == node.KindNode && ev.Type == store.EventRecordDeleted && r.went != nil {
			r.went(ev.Key)
		}
		if ev.Kind != node.KindInstance {
			continue
		}
		n, key, ok := node.SplitInstanceKey(ev.Key)
		if !ok {
			continue
		}
		switch ev.Type {
		case store.EventRecordDeleted:
			r.mu.Lock()
			delete(r.byKey[key], n)
			if len(r.byKey[key]) == 0 {
				delete(r.byKey, key)
			}
			r.notifyLocked()
			r.mu.Unlock()
		case store.EventRecord:
			rec, err := r.st.Record(ctx, node.KindInstance, ev.Key)
			if errors.Is(err, store.ErrNotFound) {
				continue // deleted since: its own event comes
			} else if err != nil {
				return err
			}
			in, err := node.DecodeInstance(rec.Key, rec.Value)
			if err != nil {
				continue
			}
			r.mu.Lock()
			if r.byKey[key] == nil {
				r.byKey[key] = map[string]node.Instance{}
			}
			r.byKey[key][n] = in
			r.notifyLocked()
			r.mu.Unlock()
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("the watch ended")
}

func (r *reports) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// of returns every node's report of key, and a channel closed at the
// next change to any report.
func (r *reports) of(key spec.VersionKey) (map[string]node.Instance, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]node.Instance, len(r.byKey[key]))
	for n, in := range r.byKey[key] {
		out[n] = in
	}
	return out, r.changed
}

// get returns one node's report of key (the first by name), if any.
func (r *reports) get(key spec.VersionKey) (node.Instance, bool) {
	ins, _ := r.of(key)
	var best node.Instance
	found := false
	for n, in := range ins {
		if !found || n < best.Node {
			best, found = in, true
		}
	}
	return best, found
}

// current returns environment env's current generation as the store
// said at the revision the view follows (0: none), and that revision.
func (r *reports) current(env string) (uint64, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.currents[env], r.rev
}

// reach waits until the view follows revision rev — every report
// written before it is in the view — or ctx ends, at most a few seconds.
func (r *reports) reach(ctx context.Context, rev uint64) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		r.mu.Lock()
		at := r.rev
		r.mu.Unlock()
		if at >= rev {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// next returns a channel closed at the next change to any report.
func (r *reports) next() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}
