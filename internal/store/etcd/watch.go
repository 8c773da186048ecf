package etcd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"hostel/internal/failpoint"
	"hostel/internal/store"
)

// Watch implements store.Store: one etcd watch of the prefix, from the
// revision after from, with the previous values (an event says what a
// current generation moved from, and a deletion which environment lost a
// generation).
func (s *Store) Watch(ctx context.Context, from uint64) (<-chan store.Event, error) {
	if err := s.usable(ctx); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV()}
	// seen is the revision before which a watch from now delivers
	// nothing: 0 for a watch from a revision.
	var seen uint64
	if from == 0 {
		// Without a revision etcd starts the watch at the revision its
		// server is at, and the client's Watch returns once the server
		// made it: every change after Watch returns is in it. (Not from
		// a revision read just before: a watch from a revision the store
		// has moved on from is caught up in the background, every
		// 100 ms, and each wait for a change would take up to that.)
		// The notice that it was made says the revision.
		opts = append(opts, clientv3.WithCreatedNotify())
		// But in a cluster that server may be a member that has not
		// applied every change made yet (a follower a step behind): its
		// watch would deliver changes made before Watch was called. A
		// linearizable read says the revision the cluster is at; what
		// is not after it is not delivered.
		got, err := s.cli.Get(ctx, s.kSeq(), clientv3.WithCountOnly())
		if err != nil {
			return nil, fmt.Errorf("watch: %w", wrap(err))
		}
		seen = uint64(got.Header.Revision)
	} else {
		opts = append(opts, clientv3.WithRev(int64(from)+1))
	}
	wctx, cancel := context.WithCancel(ctx)
	wch := s.cli.Watch(wctx, s.p, opts...)
	out := make(chan store.Event)
	go func() {
		defer close(out)
		defer cancel()
		send := func(ev store.Event) bool {
			select {
			case out <- ev:
				return true
			case <-ctx.Done():
			case <-s.h.closed:
			}
			return false
		}
		last := from
		for resp := range wch {
			if resp.Created {
				last = max(uint64(resp.Header.Revision), seen)
				continue
			}
			if resp.CompactRevision != 0 {
				send(store.Event{Err: &store.CompactedError{From: last, Compacted: uint64(resp.CompactRevision)}})
				return
			}
			if err := resp.Err(); err != nil {
				if ctx.Err() == nil {
					send(store.Event{Err: fmt.Errorf("watch from revision %d: %w", last, err)})
				}
				return
			}
			// A response holds whole changes (a revision's events are
			// never split across responses): the last event of each
			// revision delivered is its change's Last.
			evs := make([]store.Event, 0, len(resp.Events))
			for _, e := range resp.Events {
				if uint64(e.Kv.ModRevision) <= seen {
					continue // made before Watch was called
				}
				ev, ok, err := s.event(e)
				if err != nil {
					send(store.Event{Err: fmt.Errorf("watch: %w", err)})
					return
				}
				if ok {
					evs = append(evs, ev)
				}
			}
			for i, ev := range evs {
				ev.Last = i == len(evs)-1 || evs[i+1].Revision != ev.Revision
				if err := failpoint.Inject("store-watch-deliver"); err != nil {
					send(store.Event{Err: fmt.Errorf("watch from revision %d: %w", last, err)})
					return
				}
				if !send(ev) {
					return
				}
				last = ev.Revision
			}
			if n := len(resp.Events); n > 0 {
				last = uint64(resp.Events[n-1].Kv.ModRevision)
			}
		}
		select {
		case <-ctx.Done():
		case <-s.h.closed:
		default:
			send(store.Event{Err: fmt.Errorf("watch from revision %d: the etcd watch ended", last)})
		}
	}()
	return out, nil
}

// event is the store's event for a change of an etcd key, if the key is
// one of the watched state (not a secret, the sequence or a candidacy).
func (s *Store) event(e *clientv3.Event) (store.Event, bool, error) {
	key := strings.TrimPrefix(string(e.Kv.Key), s.p)
	ev := store.Event{Revision: uint64(e.Kv.ModRevision)}
	deleted := e.Type == mvccpb.DELETE
	switch {
	case strings.HasPrefix(key, "gen/"):
		n, err := strconv.ParseUint(strings.TrimPrefix(key, "gen/"), 10, 64)
		if err != nil {
			return ev, false, fmt.Errorf("etcd key %s: not a generation's", e.Kv.Key)
		}
		ev.Generation = n
		data := e.Kv.Value
		switch {
		case deleted:
			ev.Type = store.EventRemoved
			if e.PrevKv == nil {
				return ev, false, fmt.Errorf("generation %d deleted: etcd sent no previous value", n)
			}
			data = e.PrevKv.Value
		case e.IsCreate():
			ev.Type = store.EventAdded
		default:
			ev.Type = store.EventConfirm
		}
		env, err := store.GenerationEnv(data)
		ev.Env = env
		return ev, true, err
	case strings.HasPrefix(key, "current/"):
		ev.Type, ev.Env = store.EventCurrent, strings.TrimPrefix(key, "current/")
		var err error
		if !deleted {
			if ev.Generation, err = number(e.Kv); err != nil {
				return ev, false, err
			}
		}
		ev.From, err = number(e.PrevKv)
		return ev, true, err
	case strings.HasPrefix(key, "record/"):
		ev.Type = store.EventRecord
		if deleted {
			ev.Type = store.EventRecordDeleted
		}
		ev.Kind, ev.Key, _ = strings.Cut(strings.TrimPrefix(key, "record/"), "/")
		return ev, true, nil
	}
	return ev, false, nil
}

// Compact implements store.Store: etcd's compaction, physically done
// before it returns.
func (s *Store) Compact(ctx context.Context, rev uint64) error {
	if err := s.usable(ctx); err != nil {
		return err
	}
	_, err := s.cli.Compact(ctx, int64(rev), clientv3.WithCompactPhysical())
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return nil // compacted at rev or after already
	case errors.Is(err, rpctypes.ErrFutureRev):
		return fmt.Errorf("compact at revision %d: the store is not there yet: %w", rev, err)
	case err != nil:
		return fmt.Errorf("compact at revision %d: %w", rev, err)
	}
	return nil
}
