package store

import (
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"hostel/internal/failpoint"
)

// logEvent is an Event as the log keeps it, under its revision.
type logEvent struct {
	Type       EventType `json:"t"`
	Generation uint64    `json:"g,omitempty"`
	From       uint64    `json:"f,omitempty"`
	Env        string    `json:"e,omitempty"`
	Kind       string    `json:"k,omitempty"`
	Key        string    `json:"key,omitempty"`
}

// appendLog logs the events of t under its revision and trims the log
// to its last keep revisions.
func appendLog(t *btx, keep uint64) error {
	if len(t.events) == 0 {
		return nil
	}
	logged := make([]logEvent, len(t.events))
	for i, ev := range t.events {
		logged[i] = logEvent{Type: ev.Type, Generation: ev.Generation, From: ev.From, Env: ev.Env, Kind: ev.Kind, Key: ev.Key}
	}
	data, err := json.Marshal(logged)
	if err != nil {
		return err
	}
	if err := t.Bucket(bucketLog).Put(itob(t.rev), data); err != nil {
		return err
	}
	if keep == 0 || t.rev < keep {
		return nil
	}
	return compactLog(t.Tx, t.rev-keep+1)
}

// compactLog drops the log before revision rev.
func compactLog(tx *bolt.Tx, rev uint64) error {
	meta := tx.Bucket(bucketMeta)
	if rev <= btoi(meta.Get(keyCompacted)) {
		return nil
	}
	c := tx.Bucket(bucketLog).Cursor()
	for k, _ := c.First(); k != nil && btoi(k) < rev; k, _ = c.Next() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return meta.Put(keyCompacted, itob(rev))
}

// Compact implements Store: it drops the log before rev.
func (s *Bolt) Compact(ctx context.Context, rev uint64) error {
	if err := s.usable(ctx); err != nil {
		return err
	}
	_, err := s.b.update(func(t *btx) error {
		if cur := t.rev - 1; rev > cur {
			return fmt.Errorf("compact at revision %d: the store is at revision %d", rev, cur)
		}
		return compactLog(t.Tx, rev)
	})
	return err
}

// Watch implements Store. Each watch reads the log from its own
// position, so one that does not keep up holds nothing in memory; it
// ends with a *CompactedError once its position has been trimmed away.
func (s *Bolt) Watch(ctx context.Context, from uint64) (<-chan Event, error) {
	if err := s.usable(ctx); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	if from == 0 {
		if err := s.b.db.View(func(tx *bolt.Tx) error {
			from = btoi(tx.Bucket(bucketMeta).Get(keyRevision))
			return nil
		}); err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
	}
	out := make(chan Event)
	go s.watch(ctx, from, out)
	return out, nil
}

// watchBatch is how many revisions a watch reads from the log at once.
const watchBatch = 256

func (s *Bolt) watch(ctx context.Context, last uint64, out chan<- Event) {
	defer close(out)
	send := func(ev Event) bool {
		select {
		case out <- ev:
			return true
		case <-ctx.Done():
		case <-s.h.closed:
		}
		return false
	}
	for {
		changed := s.b.changes()
		var (
			batch     [][]Event
			compacted uint64
		)
		err := s.b.db.View(func(tx *bolt.Tx) error {
			if c := btoi(tx.Bucket(bucketMeta).Get(keyCompacted)); last+1 < c {
				compacted = c
				return nil
			}
			cur := tx.Bucket(bucketLog).Cursor()
			for k, v := cur.Seek(itob(last + 1)); k != nil && len(batch) < watchBatch; k, v = cur.Next() {
				var logged []logEvent
				if err := json.Unmarshal(v, &logged); err != nil {
					return fmt.Errorf("watch: decode the events of revision %d: %w", btoi(k), err)
				}
				events := make([]Event, len(logged))
				for i, l := range logged {
					events[i] = Event{Type: l.Type, Generation: l.Generation, From: l.From, Env: l.Env, Kind: l.Kind, Key: l.Key, Revision: btoi(k), Last: i == len(logged)-1}
				}
				batch = append(batch, events)
			}
			return nil
		})
		select {
		case <-s.h.closed:
			return
		default:
		}
		if err != nil {
			send(Event{Err: err})
			return
		}
		if compacted != 0 {
			send(Event{Err: &CompactedError{From: last, Compacted: compacted}})
			return
		}
		for _, events := range batch {
			for _, ev := range events {
				if err := failpoint.Inject("store-watch-deliver"); err != nil {
					send(Event{Err: fmt.Errorf("watch from revision %d: %w", last, err)})
					return
				}
				if !send(ev) {
					return
				}
			}
			last = events[0].Revision
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		case <-s.h.closed:
			return
		}
	}
}
