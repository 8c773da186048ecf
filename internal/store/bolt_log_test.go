package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestBoltLogBounded: the log keeps its last logKeep revisions, and a
// watch that falls further behind than that ends with ErrCompacted
// after the events it could still deliver.
func TestBoltLogBounded(t *testing.T) {
	s, err := OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.b.logKeep = 10
	events, err := s.Watch(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	const writes = 100
	for i := range writes {
		if _, err := s.Txn(t.Context(), Write{Kind: "k", Key: "x", Value: []byte{byte(i)}, Rev: AnyRevision}); err != nil {
			t.Fatal(err)
		}
	}
	var logged int
	s.b.db.View(func(tx *bolt.Tx) error {
		logged = tx.Bucket(bucketLog).Stats().KeyN
		return nil
	})
	if logged > 10 {
		t.Errorf("the log holds %d revisions, want at most 10", logged)
	}
	var got int
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("the watch ended after %d events without an error", got)
			}
			if ev.Err == nil {
				got++
				continue
			}
			if !errors.Is(ev.Err, ErrCompacted) || got >= writes {
				t.Fatalf("after %d events: %v, want ErrCompacted before all %d", got, ev.Err, writes)
			}
			return
		case <-timeout:
			t.Fatalf("after %d events: no more, and no ErrCompacted", got)
		}
	}
}
