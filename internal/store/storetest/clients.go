package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"

	"hostel/internal/spec"
	"hostel/internal/store"
)

// testConcurrentClients: writers on their own handles, each reading,
// deciding and writing by compare-and-swap, lose nothing: every commit
// gets its own number and every increment of a counter holds.
func testConcurrentClients(t *testing.T, b Backend) {
	const writers, each = 4, 10
	ctx := t.Context()
	var wg sync.WaitGroup
	conflicts := make([]int, writers)
	handles := make([]store.Store, writers)
	for w := range writers {
		handles[w] = b.Open(t)
	}
	s := handles[0]
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := handles[w]
			for i := 0; i < each; {
				// Read, decide, write: a stale decision fails and is made again.
				cur, err := s.Current(ctx, spec.DefaultEnv)
				if err != nil {
					t.Error(err)
					return
				}
				var from uint64
				if cur != nil {
					from = cur.Number
				}
				if _, err := s.Commit(ctx, Gen(fmt.Sprintf("w%d-%d", w, i)), from); errors.Is(err, store.ErrConflict) {
					conflicts[w]++
					continue
				} else if err != nil {
					t.Error(err)
					return
				}
				// A counter record incremented by compare-and-swap.
				for {
					var n int
					r, err := s.Record(ctx, "counter", "c")
					if err == nil {
						n, _ = strconv.Atoi(string(r.Value))
					} else if !errors.Is(err, store.ErrNotFound) {
						t.Error(err)
						return
					}
					if _, err := s.PutRecord(ctx, "counter", "c", []byte(strconv.Itoa(n+1)), r.Revision); err == nil {
						break
					} else if !errors.Is(err, store.ErrConflict) {
						t.Error(err)
						return
					}
				}
				i++
			}
		}()
	}
	wg.Wait()
	got := numbers(t, s)
	if len(got) != writers*each {
		t.Fatalf("%d generations, want %d", len(got), writers*each)
	}
	for i, n := range got {
		if n != uint64(i+1) {
			t.Fatalf("generation numbers %v: want 1…%d, each once", got, writers*each)
		}
	}
	if c := current(t, s); c != writers*each {
		t.Errorf("current %d, want the last commit %d", c, writers*each)
	}
	r, err := s.Record(ctx, "counter", "c")
	if err != nil || string(r.Value) != strconv.Itoa(writers*each) {
		t.Errorf("counter = %q, %v; want %d: an increment was lost", r.Value, err, writers*each)
	}
}

// testTwoClients: two handles on one backend see each other's writes,
// and a compare-and-swap by one fails the other's stale write.
func testTwoClients(t *testing.T, b Backend) {
	ctx := t.Context()
	a, c := b.Open(t), b.Open(t)
	events, err := c.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	n1 := commit(t, a, Gen("v1"), 0)
	if got := current(t, c); got != n1 {
		t.Fatalf("c reads current %d after a committed %d", got, n1)
	}
	// Both decide from generation 1; a commits first, so c is stale.
	n2 := commit(t, a, Gen("v2"), n1)
	if _, err := c.Commit(ctx, Gen("v3"), n1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("c's commit on generation %d after a's: %v, want ErrConflict", n1, err)
	}
	r1, err := a.PutRecord(ctx, "k", "x", []byte("a1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	seen, err := c.Record(ctx, "k", "x")
	if err != nil || seen.Revision != r1 {
		t.Fatalf("c reads %+v, %v; want a's record at %d", seen, err, r1)
	}
	r2, err := a.PutRecord(ctx, "k", "x", []byte("a2"), seen.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutRecord(ctx, "k", "x", []byte("c"), seen.Revision); !errors.Is(err, store.ErrConflict) {
		t.Errorf("c's write of a record a changed since: %v, want ErrConflict", err)
	}
	recordAt(t, c, "k", "x", "a2", r2)
	revs := expectEvents(t, events,
		store.Event{Type: store.EventAdded, Generation: n1, Env: spec.DefaultEnv},
		store.Event{Type: store.EventCurrent, Generation: n1, Env: spec.DefaultEnv},
		store.Event{Type: store.EventAdded, Generation: n2, Env: spec.DefaultEnv},
		store.Event{Type: store.EventCurrent, Generation: n2, From: n1, Env: spec.DefaultEnv},
		recordEvent("k", "x"), recordEvent("k", "x"))
	if revs[4] != r1 || revs[5] != r2 {
		t.Errorf("c saw a's records at revisions %v, a wrote them at %d, %d", revs[4:], r1, r2)
	}
}

// testReadThenWatch: a follower reads, then watches from the snapshot's
// revision: what changed in between is delivered, nothing before it.
func testReadThenWatch(t *testing.T, b Backend) {
	ctx := t.Context()
	leader, follower := b.Open(t), b.Open(t)
	n1 := commit(t, leader, Gen("v1"), 0)
	put(t, leader, "desired", "node-a", "v1")
	snap := read(t, follower, "desired")
	if snap.Currents[spec.DefaultEnv] == nil || snap.Currents[spec.DefaultEnv].Number != n1 || len(snap.Records["desired"]) != 1 {
		t.Fatalf("snapshot %+v, want generation %d and one record", snap, n1)
	}
	n2 := commit(t, leader, Gen("v2"), n1)
	rev := put(t, leader, "desired", "node-a", "v2")
	events, err := follower.Watch(ctx, snap.Revision)
	if err != nil {
		t.Fatal(err)
	}
	revs := expectEvents(t, events,
		store.Event{Type: store.EventAdded, Generation: n2, Env: spec.DefaultEnv},
		store.Event{Type: store.EventCurrent, Generation: n2, From: n1, Env: spec.DefaultEnv},
		recordEvent("desired", "node-a"))
	if revs[2] != rev {
		t.Errorf("record event at %d, written at %d", revs[2], rev)
	}
}

// testReopen: everything outlives a reopen — generations, currents,
// numbering, secrets, confirm windows, records with their revisions, the
// revision itself and the history a watch replays.
func testReopen(t *testing.T, b Backend) {
	ctx := t.Context()
	s := b.Open(t)
	g := Gen("v1")
	g.Secrets = map[string][]byte{"k": []byte("ct")}
	commit(t, s, g, 0)
	commit(t, s, Gen("v2"), 1)
	commit(t, s, Gen("v3"), 2)
	if err := s.SetCurrent(ctx, 3, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, 3); err != nil {
		t.Fatal(err)
	}
	e := commit(t, s, InEnv("pr-1", "e"), 0)
	if err := s.SetConfirm(ctx, 2, &spec.Confirm{State: spec.ConfirmFailed, Reason: "r"}, 0, 0); err != nil {
		t.Fatal(err)
	}
	mid := put(t, s, store.KindRelease, "a/v1", "ran")
	last := put(t, s, store.KindDatabase, "a", "db")
	before := read(t, s, store.KindRelease, store.KindDatabase)

	b.Reopen(t)
	if _, err := s.List(ctx); err == nil {
		t.Error("a handle from before the reopen still works")
	}
	s = b.Open(t)
	after := read(t, s, store.KindRelease, store.KindDatabase)
	if after.Revision != before.Revision || after.Revision != last {
		t.Errorf("revision %d after the reopen, %d before (last write %d)", after.Revision, before.Revision, last)
	}
	if fmt.Sprint(summary(after)) != fmt.Sprint(summary(before)) {
		t.Errorf("after the reopen:\n%v\nbefore:\n%v", summary(after), summary(before))
	}
	if g1, err := s.Get(ctx, 1); err != nil || !bytes.Equal(g1.Secrets["k"], []byte("ct")) {
		t.Errorf("generation 1 after the reopen: %v, secrets %q", err, g1.Secrets)
	}
	if c := confirmOf(t, s, 2); c == nil || c.State != spec.ConfirmFailed || c.Reason != "r" {
		t.Errorf("confirm of generation 2 after the reopen: %+v", c)
	}
	events, err := s.Watch(ctx, mid-1)
	if err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events, recordEvent(store.KindRelease, "a/v1"), recordEvent(store.KindDatabase, "a"))
	if n := commit(t, s, Gen("v5"), 1); n != e+1 {
		t.Errorf("commit after the reopen numbered %d, want %d", n, e+1)
	}
	if rev := put(t, s, store.KindRelease, "a/v1", "again"); rev <= last {
		t.Errorf("a write after the reopen at revision %d, not after %d", rev, last)
	}
}

// summary is what a snapshot holds, revisions of records included, in
// a form to compare.
func summary(snap *store.Snapshot) []string {
	var out []string
	for env, g := range snap.Currents {
		out = append(out, fmt.Sprintf("current %s %d", env, g.Number))
	}
	for _, g := range snap.Generations {
		out = append(out, fmt.Sprintf("generation %d %s %s %s %d secrets", g.Number, g.Env, g.SpecHash, g.Time.UTC().Format("15:04:05.000000000"), len(g.Secrets)))
	}
	for kind, recs := range snap.Records {
		for _, r := range recs {
			out = append(out, fmt.Sprintf("record %s %s %q %d", kind, r.Key, r.Value, r.Revision))
		}
	}
	slices.Sort(out)
	return out
}

// testBigDelete: deleting more generations than one etcd transaction may
// hold works, and so does dropping an environment that has more; a
// delete that names a current generation still deletes nothing.
func testBigDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	const n = 300
	secret := []byte("the first generation's ciphertext")
	var from uint64
	for i := range n {
		g := Gen(strconv.Itoa(i))
		if i == 0 {
			g.Secrets = map[string][]byte{"k": secret}
		}
		from = commit(t, s, g, from)
	}
	all := make([]uint64, n)
	for i := range all {
		all[i] = uint64(i + 1)
	}
	if err := s.Delete(ctx, all...); !errors.Is(err, store.ErrCurrent) {
		t.Fatalf("Delete of all %d, the current one too: %v, want ErrCurrent", n, err)
	}
	if got := numbers(t, s); len(got) != n {
		t.Fatalf("a refused Delete left %d generations of %d", len(got), n)
	}
	if err := s.Delete(ctx, all[:n-1]...); err != nil {
		t.Fatalf("Delete of %d generations: %v", n-1, err)
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{n}) {
		t.Errorf("after deleting all but the current: %v", got)
	}
	if _, err := s.Secret(ctx, store.SecretDigest(secret)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the secret of deleted generation 1 is kept: %v", err)
	}
	const envGens = 150
	from = 0
	for i := range envGens {
		from = commit(t, s, InEnv("pr-1", strconv.Itoa(i)), from)
	}
	if err := s.DropEnv(ctx, "pr-1", from); err != nil {
		t.Fatalf("DropEnv of %d generations: %v", envGens, err)
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{n}) {
		t.Errorf("after dropping pr-1: %d generations (%v…), want only %d", len(got), got[:min(len(got), 5)], n)
	}
	if got := currentOf(t, s, "pr-1"); got != 0 {
		t.Errorf("pr-1 dropped, its current is %d", got)
	}
}
