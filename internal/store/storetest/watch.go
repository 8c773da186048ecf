package storetest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"hostel/internal/spec"
	"hostel/internal/store"
)

func testWatch(t *testing.T, s store.Store) {
	ctx := t.Context()
	commit(t, s, Gen("before"), 0) // not seen: before the watch
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	commit(t, s, Gen("v2"), 1)
	if err := s.SetCurrent(ctx, 2, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, 2); err != nil {
		t.Fatal(err)
	}
	rev, err := s.PutRecord(ctx, "release", "a/v", []byte("x"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRecord(ctx, "release", "a/v", rev); err != nil {
		t.Fatal(err)
	}
	if err := s.SetConfirm(ctx, 1, &spec.Confirm{State: spec.ConfirmConfirmed}, 0, 0); err != nil {
		t.Fatal(err)
	}
	// Refused changes are not events.
	s.SetCurrent(ctx, 2, 1)
	s.SetConfirm(ctx, 1, &spec.Confirm{State: spec.ConfirmFailed}, 2, 1)
	s.PutRecord(ctx, "release", "b/v", nil, 5)
	commit(t, s, Gen("v3"), 1)

	want := []store.Event{
		{Type: store.EventAdded, Generation: 2, Env: spec.DefaultEnv},
		{Type: store.EventCurrent, Generation: 2, From: 1, Env: spec.DefaultEnv},
		{Type: store.EventCurrent, Generation: 1, From: 2, Env: spec.DefaultEnv},
		{Type: store.EventRemoved, Generation: 2, Env: spec.DefaultEnv},
		{Type: store.EventRecord, Kind: "release", Key: "a/v"},
		{Type: store.EventRecordDeleted, Kind: "release", Key: "a/v"},
		{Type: store.EventConfirm, Generation: 1, Env: spec.DefaultEnv},
		{Type: store.EventAdded, Generation: 3, Env: spec.DefaultEnv},
		{Type: store.EventCurrent, Generation: 3, From: 1, Env: spec.DefaultEnv},
	}
	revs := expectEvents(t, events, want...)
	for i := 1; i < len(revs); i++ {
		if revs[i] < revs[i-1] || revs[i-1] == 0 {
			t.Errorf("event %d at revision %d after %d: revisions must grow", i, revs[i], revs[i-1])
		}
	}
	if revs[4] != rev {
		t.Errorf("the record's event at revision %d, PutRecord returned %d", revs[4], rev)
	}
}

func testWatchEnds(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A watcher that does not read delays no writer.
	for i := range uint64(100) {
		commit(t, s, Gen(fmt.Sprint(i)), i)
	}
	cancel()
	for range events { // drains, then ends: the channel is closed
	}
	after, err := s.Watch(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for range after {
	}
}

// put sets record kind/key to value whatever it was, and returns its
// revision.
func put(t *testing.T, s store.Store, kind, key, value string) uint64 {
	t.Helper()
	rev, err := s.Txn(t.Context(), store.Write{Kind: kind, Key: key, Value: []byte(value), Rev: store.AnyRevision})
	if err != nil {
		t.Fatalf("put %s %s: %v", kind, key, err)
	}
	return rev
}

func recordEvent(kind, key string) store.Event {
	return store.Event{Type: store.EventRecord, Kind: kind, Key: key}
}

// testWatchFromRevision: a watch from a revision replays every change
// after it, in order, with the revisions the writes returned, then goes
// on with the changes to come.
func testWatchFromRevision(t *testing.T, s store.Store) {
	ctx := t.Context()
	r1 := put(t, s, "k", "1", "a")
	commit(t, s, Gen("v1"), 0)
	r3 := put(t, s, "k", "2", "b")
	r4 := put(t, s, "k", "1", "c")
	if !(r1 < r3 && r3 < r4) {
		t.Fatalf("revisions %d, %d, %d: must grow", r1, r3, r4)
	}
	events, err := s.Watch(ctx, r1)
	if err != nil {
		t.Fatal(err)
	}
	revs := expectEvents(t, events,
		store.Event{Type: store.EventAdded, Generation: 1, Env: spec.DefaultEnv},
		store.Event{Type: store.EventCurrent, Generation: 1, Env: spec.DefaultEnv},
		recordEvent("k", "2"), recordEvent("k", "1"))
	if revs[0] != revs[1] || revs[0] <= r1 || revs[0] >= r3 || revs[2] != r3 || revs[3] != r4 {
		t.Errorf("replayed at revisions %v; want the commit's twice between %d and %d, then %d, %d", revs, r1, r3, r3, r4)
	}
	r5 := put(t, s, "k", "3", "d")
	if got := expectEvents(t, events, recordEvent("k", "3")); got[0] != r5 {
		t.Errorf("live event at revision %d, the write returned %d", got[0], r5)
	}
	// From the latest revision: the next change, nothing before.
	latest, err := s.Watch(ctx, r5)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", "4", "e")
	expectEvents(t, latest, recordEvent("k", "4"))
}

// testWatchCompacted: once history is compacted, a watch from before it
// ends with ErrCompacted, saying where; a watch from just before the
// compaction revision still replays; reading again and watching from the
// snapshot goes on.
func testWatchCompacted(t *testing.T, s store.Store) {
	ctx := t.Context()
	r1 := put(t, s, "k", "1", "a")
	put(t, s, "k", "2", "b")
	r3 := put(t, s, "k", "3", "c")
	r4 := put(t, s, "k", "4", "d")
	if err := s.Compact(ctx, r3); err != nil {
		t.Fatalf("Compact(%d): %v", r3, err)
	}
	// Compacting again, or at an older revision, changes nothing.
	if err := s.Compact(ctx, r1); err != nil {
		t.Errorf("Compact(%d) after Compact(%d): %v", r1, r3, err)
	}
	if err := s.Compact(ctx, r4+1000); err == nil {
		t.Errorf("Compact(%d), a revision to come: no error", r4+1000)
	}
	kept, err := s.Watch(ctx, r3-1)
	if err != nil {
		t.Fatal(err)
	}
	expectEvents(t, kept, recordEvent("k", "3"), recordEvent("k", "4"))

	gone, err := s.Watch(ctx, r1)
	if err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, gone, 0, store.Event{Err: store.ErrCompacted})
	var ce *store.CompactedError
	if !errors.Is(ev.Err, store.ErrCompacted) || !errors.As(ev.Err, &ce) {
		t.Fatalf("watch from compacted revision %d: %+v, want an event with ErrCompacted", r1, ev)
	}
	if ce.From != r1 || ce.Compacted < r3 || !strings.Contains(ev.Err.Error(), "re-read and watch again") {
		t.Errorf("compacted error %+v (%v), want from %d, compacted at %d or after", ce, ev.Err, r1, r3)
	}
	select {
	case ev, ok := <-gone:
		if ok {
			t.Errorf("after the compacted error: %+v, want the channel closed", ev)
		}
	case <-time.After(10 * time.Second):
		t.Error("the channel is not closed after the compacted error")
	}
	// The follower's way back: read, then watch from the snapshot.
	snap := read(t, s, "k")
	if len(snap.Records["k"]) != 4 {
		t.Errorf("read after the compaction: %d records, want 4", len(snap.Records["k"]))
	}
	again, err := s.Watch(ctx, snap.Revision)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", "5", "e")
	expectEvents(t, again, recordEvent("k", "5"))
}

// testWatchCancel: a watch whose context ends closes its channel and
// leaves no goroutine behind.
func testWatchCancel(t *testing.T, s store.Store) {
	ctx := t.Context()
	warm, cancel := context.WithCancel(ctx)
	if _, err := s.Watch(warm, 0); err != nil {
		t.Fatal(err)
	}
	cancel()
	put(t, s, "k", "warm", "")
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()
	for i := range 10 {
		wctx, cancel := context.WithCancel(ctx)
		events, err := s.Watch(wctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		key := strconv.Itoa(i)
		put(t, s, "k", key, "")
		expectEvents(t, events, recordEvent("k", key))
		cancel()
		ended := make(chan struct{})
		go func() {
			for range events {
			}
			close(ended)
		}()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatalf("watch %d: the channel is not closed after its context ended", i)
		}
	}
	goroutinesBackTo(t, before)
}

// testWatchLast: the last event of each change, and no other, is marked
// Last — a follower that reads the state at a change's end (Pending) must
// not read it halfway.
func testWatchLast(t *testing.T, s store.Store) {
	ctx := t.Context()
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	commit(t, s, Gen("v1"), 0) // the generation added, the current moved
	if _, err := s.Txn(ctx,
		store.Write{Kind: "k", Key: "1", Value: []byte("a"), Rev: store.AnyRevision},
		store.Write{Kind: "k", Key: "2", Value: []byte("b"), Rev: store.AnyRevision},
		store.Write{Kind: "k", Key: "3", Value: []byte("c"), Rev: store.AnyRevision}); err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", "1", "d")
	want := []bool{false, true, false, false, true, true}
	var got []bool
	for i := range want {
		got = append(got, nextEvent(t, events, i, store.Event{}).Last)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Last of the events of a commit, a Txn of three writes and a write: %v, want %v", got, want)
	}
}
