package node

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"hostel/internal/store"
)

// Await reads the records of kinds and calls done with them until it
// reports true, reading again after every change to a record of those
// kinds: what the engine and the nodes wait for of each other. It
// returns ctx's error if done never does.
//
// It watches from before its first read, with one watch for all its
// reads: a watch opened from the revision of a read the store has moved
// on from since (the nodes report all the time) is one etcd catches up
// in the background, every 100 ms, so each wait would take up to that
// long; a watch from now is served at every change.
func Await(ctx context.Context, st store.Store, done func(*store.Snapshot) bool, kinds ...string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := st.Watch(ctx, 0)
	if err != nil {
		return err
	}
	for {
		snap, err := st.Read(ctx, kinds...)
		if err != nil {
			return err
		}
		if done(snap) {
			return nil
		}
		// A change after the read: those before are in it.
		for changed := false; !changed; {
			var ev store.Event
			var ok bool
			select {
			case ev, ok = <-events:
			case <-ctx.Done():
				return ctx.Err()
			}
			switch {
			case !ok:
				if err := ctx.Err(); err != nil {
					return err
				}
				return errors.New("the watch ended")
			case errors.Is(ev.Err, store.ErrCompacted):
				// It fell behind: watch again from now, and read again.
				if events, err = st.Watch(ctx, 0); err != nil {
					return err
				}
				changed = true
			case ev.Err != nil:
				return ev.Err
			case ev.Revision > snap.Revision && recordOf(ev, kinds):
				changed = true
			}
		}
	}
}

// recordOf reports whether ev changed a record of one of kinds.
func recordOf(ev store.Event, kinds []string) bool {
	if ev.Type != store.EventRecord && ev.Type != store.EventRecordDeleted {
		return false
	}
	return slices.Contains(kinds, ev.Kind)
}

// Nodes returns the nodes of a snapshot read with KindNode, by name; read
// with KindUnschedulable too, each drained node's Info says so.
func Nodes(snap *store.Snapshot) map[string]Info {
	out := map[string]Info{}
	drained := map[string]bool{}
	for _, r := range snap.Records[KindUnschedulable] {
		drained[r.Key] = true
	}
	for _, r := range snap.Records[KindNode] {
		if info, err := DecodeInfo(r.Key, r.Value); err == nil {
			info.Unschedulable = drained[r.Key]
			out[r.Key] = info
		}
	}
	return out
}

// RoutesAt waits until the router of every node there is follows revision
// rev or later (its Routes record), or ctx ends.
func RoutesAt(ctx context.Context, st store.Store, rev uint64) error {
	var behind []string
	err := Await(ctx, st, func(snap *store.Snapshot) bool {
		routes := map[string]uint64{}
		for _, r := range snap.Records[KindRoutes] {
			if rr, err := DecodeRoutes(r.Key, r.Value); err == nil {
				routes[r.Key] = rr.Applied
			}
		}
		behind = behind[:0]
		for name := range Nodes(snap) {
			if routes[name] < rev {
				behind = append(behind, name)
			}
		}
		return len(behind) == 0
	}, KindNode, KindRoutes)
	if err != nil {
		return fmt.Errorf("routers of %v do not follow revision %d yet: %w", behind, rev, err)
	}
	return nil
}
