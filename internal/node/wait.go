package node

import (
	"context"
	"errors"
	"fmt"

	"hostel/internal/store"
)

// Await reads the records of kinds and calls done with them until it
// reports true, reading again after every change to a record of those
// kinds: what the engine and the nodes wait for of each other. It
// returns ctx's error if done never does.
func Await(ctx context.Context, st store.Store, done func(*store.Snapshot) bool, kinds ...string) error {
	for {
		snap, err := st.Read(ctx, kinds...)
		if err != nil {
			return err
		}
		if done(snap) {
			return nil
		}
		if err := awaitChange(ctx, st, snap.Revision, kinds); err != nil && !errors.Is(err, store.ErrCompacted) {
			return err
		}
	}
}

// awaitChange returns once a record of kinds changed after rev.
func awaitChange(ctx context.Context, st store.Store, rev uint64, kinds []string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := st.Watch(ctx, rev)
	if err != nil {
		return err
	}
	for ev := range events {
		if ev.Err != nil {
			return ev.Err
		}
		if ev.Type != store.EventRecord && ev.Type != store.EventRecordDeleted {
			continue
		}
		for _, k := range kinds {
			if ev.Kind == k {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("the watch ended")
}

// Nodes returns the nodes of a snapshot read with KindNode, by name.
func Nodes(snap *store.Snapshot) map[string]Info {
	out := map[string]Info{}
	for _, r := range snap.Records[KindNode] {
		if info, err := DecodeInfo(r.Key, r.Value); err == nil {
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
