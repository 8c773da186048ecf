package storetest

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"hostel/internal/spec"
	"hostel/internal/store"
)

// testRead: one Read is a consistent snapshot with the revision it was
// taken at: every current generation, every generation oldest first with
// its secrets, the records of the kinds asked and only those.
func testRead(t *testing.T, s store.Store) {
	ctx := t.Context()
	empty := read(t, s, "k")
	if empty.Revision == 0 {
		t.Error("an empty store's snapshot at revision 0, which Watch takes as from now")
	}
	if len(empty.Currents) != 0 || len(empty.Generations) != 0 || len(empty.Records["k"]) != 0 {
		t.Errorf("empty store read %+v", empty)
	}
	g1 := Gen("p1")
	g1.Secrets = map[string][]byte{"k": []byte("ciphertext")}
	p1 := commit(t, s, g1, 0)
	e1 := commit(t, s, InEnv("pr-1", "e1"), 0)
	p2 := commit(t, s, Gen("p2"), p1)
	ra := put(t, s, "k", "a", "1")
	put(t, s, "other", "x", "2")
	rb := put(t, s, "k", "b", "3")

	snap := read(t, s, "k")
	if snap.Revision != rb {
		t.Errorf("snapshot at revision %d, the last write was at %d", snap.Revision, rb)
	}
	if got := read(t, s); got.Revision != snap.Revision {
		t.Errorf("a second read at revision %d, the first at %d: nothing changed between", got.Revision, snap.Revision)
	}
	cur := map[string]uint64{}
	for env, g := range snap.Currents {
		cur[env] = g.Number
	}
	if want := map[string]uint64{spec.DefaultEnv: p2, "pr-1": e1}; !mapsEqual(cur, want) {
		t.Errorf("snapshot currents %v, want %v", cur, want)
	}
	var ns []uint64
	for _, g := range snap.Generations {
		ns = append(ns, g.Number)
	}
	if !slices.Equal(ns, []uint64{p1, e1, p2}) {
		t.Errorf("snapshot generations %v, want %v oldest first", ns, []uint64{p1, e1, p2})
	}
	if len(snap.Generations) > 0 && !bytes.Equal(snap.Generations[0].Secrets["k"], []byte("ciphertext")) {
		t.Errorf("generation %d in the snapshot without its secret: %q", p1, snap.Generations[0].Secrets)
	}
	recs := snap.Records["k"]
	if len(recs) != 2 || recs[0].Key != "a" || recs[0].Revision != ra || string(recs[0].Value) != "1" || recs[1].Key != "b" || recs[1].Revision != rb {
		t.Errorf("snapshot records of k: %+v, want a at %d, b at %d", recs, ra, rb)
	}
	if _, ok := snap.Records["other"]; ok {
		t.Errorf("a kind not asked for is in the snapshot: %+v", snap.Records)
	}
	if both := read(t, s, "k", "other"); len(both.Records["k"]) != 2 || len(both.Records["other"]) != 1 {
		t.Errorf("read of two kinds: %+v", both.Records)
	}
	if _, err := s.Read(ctx, "a/b"); err == nil {
		t.Error("Read of kind a/b: no error, want the kind refused")
	}
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// recordAt fails the test unless record kind/key holds value at rev.
func recordAt(t *testing.T, s store.Store, kind, key, value string, rev uint64) {
	t.Helper()
	r, err := s.Record(t.Context(), kind, key)
	if err != nil || string(r.Value) != value || r.Revision != rev {
		t.Errorf("record %s %s = %q at %d (%v), want %q at %d", kind, key, r.Value, r.Revision, err, value, rev)
	}
}

func noRecord(t *testing.T, s store.Store, kind, key string) {
	t.Helper()
	if r, err := s.Record(t.Context(), kind, key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("record %s %s = %+v, %v; want ErrNotFound", kind, key, r, err)
	}
}

// testTxn: writes to several records are made all or none, each by
// compare-and-swap on its revision, or whatever it is with AnyRevision.
func testTxn(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := func(key, value string, rev uint64) store.Write {
		return store.Write{Kind: "k", Key: key, Value: []byte(value), Rev: rev}
	}
	del := func(key string, rev uint64) store.Write {
		return store.Write{Kind: "k", Key: key, Rev: rev, Delete: true}
	}
	r1, err := s.Txn(ctx, w("a", "1", 0), w("b", "1", 0))
	if err != nil {
		t.Fatal(err)
	}
	recordAt(t, s, "k", "a", "1", r1)
	recordAt(t, s, "k", "b", "1", r1)
	// One write whose expectation fails fails them all.
	if _, err := s.Txn(ctx, w("a", "2", r1), w("c", "2", 0), w("b", "2", r1+1000)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Txn with a stale write: %v, want ErrConflict", err)
	}
	recordAt(t, s, "k", "a", "1", r1)
	noRecord(t, s, "k", "c")
	if rev := read(t, s).Revision; rev != r1 {
		t.Errorf("a refused Txn moved the revision from %d to %d", r1, rev)
	}
	r2, err := s.Txn(ctx, w("a", "any", store.AnyRevision), w("d", "new", store.AnyRevision))
	if err != nil || r2 <= r1 {
		t.Fatalf("Txn with AnyRevision = %d, %v; want a revision after %d", r2, err, r1)
	}
	recordAt(t, s, "k", "a", "any", r2)
	recordAt(t, s, "k", "d", "new", r2)
	// A delete needs the record at its revision; AnyRevision deletes it if it is there.
	if _, err := s.Txn(ctx, del("a", r1)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("stale delete: %v, want ErrConflict", err)
	}
	if _, err := s.Txn(ctx, del("zz", r1)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete of a missing record: %v, want ErrNotFound", err)
	}
	if rev, err := s.Txn(ctx, del("zz", store.AnyRevision)); err != nil || rev != r2 {
		t.Errorf("delete of a missing record with AnyRevision = %d, %v; want nothing done, revision %d", rev, err, r2)
	}
	if _, err := s.Txn(ctx, del("a", r2), del("d", store.AnyRevision), w("b", "3", r1)); err != nil {
		t.Fatal(err)
	}
	noRecord(t, s, "k", "a")
	noRecord(t, s, "k", "d")
	// Refused before anything is tried: bad kinds, a record written twice.
	for name, writes := range map[string][]store.Write{
		"empty kind":    {{Kind: "", Key: "x"}},
		"kind with /":   {{Kind: "a/b", Key: "x"}},
		"written twice": {w("x", "1", 0), w("x", "2", store.AnyRevision)},
	} {
		if _, err := s.Txn(ctx, writes...); err == nil || errors.Is(err, store.ErrConflict) {
			t.Errorf("Txn(%s): %v, want it refused", name, err)
		}
	}
	noRecord(t, s, "k", "x")
	// A lease that does not exist.
	if _, err := s.Txn(ctx, store.Write{Kind: "k", Key: "l", Rev: 0, Lease: 0x7eadbeef}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Txn with a lease that does not exist: %v, want ErrNotFound", err)
	}
	noRecord(t, s, "k", "l")
}

// testAlsoWrites: a commit, a switch and a confirm carry record writes
// made in the same change — one revision, all or nothing.
func testAlsoWrites(t *testing.T, s store.Store) {
	ctx := t.Context()
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	desired := func(node, v string, rev uint64) store.Write {
		return store.Write{Kind: "desired", Key: node, Value: []byte(v), Rev: rev}
	}
	n1, err := s.Commit(ctx, Gen("v1"), 0, desired("node-a", "v1", 0), desired("node-b", "v1", 0))
	if err != nil {
		t.Fatal(err)
	}
	revs := expectEvents(t, events,
		store.Event{Type: store.EventAdded, Generation: n1, Env: spec.DefaultEnv},
		store.Event{Type: store.EventCurrent, Generation: n1, Env: spec.DefaultEnv},
		recordEvent("desired", "node-a"), recordEvent("desired", "node-b"))
	if slices.Max(revs) != slices.Min(revs) {
		t.Errorf("a commit with its records at revisions %v: one change, one revision", revs)
	}
	recordAt(t, s, "desired", "node-a", "v1", revs[0])
	// A write that fails fails the commit: no generation, no move, no number used.
	if _, err := s.Commit(ctx, Gen("v2"), n1, desired("node-a", "v2", revs[0]+1000)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("commit with a stale record write: %v, want ErrConflict", err)
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{n1}) || current(t, s) != n1 {
		t.Fatalf("a refused commit left generations %v, current %d", got, current(t, s))
	}
	n2, err := s.Commit(ctx, Gen("v2"), n1, desired("node-a", "v2", revs[0]), store.Write{Kind: "desired", Key: "node-b", Delete: true, Rev: revs[0]})
	if err != nil || n2 != n1+1 {
		t.Fatalf("commit = %d, %v; want %d: a refused commit uses no number", n2, err, n1+1)
	}
	revs = expectEvents(t, events,
		store.Event{Type: store.EventAdded, Generation: n2, Env: spec.DefaultEnv},
		store.Event{Type: store.EventCurrent, Generation: n2, From: n1, Env: spec.DefaultEnv},
		recordEvent("desired", "node-a"),
		store.Event{Type: store.EventRecordDeleted, Kind: "desired", Key: "node-b"})
	noRecord(t, s, "desired", "node-b")
	rA := revs[2]

	// A switch back with its writes; a stale one, or one whose write fails, changes nothing.
	if err := s.SetCurrent(ctx, n1, n1, desired("node-a", "x", rA)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("stale SetCurrent with writes: %v, want ErrConflict", err)
	}
	if err := s.SetCurrent(ctx, n2, n1, desired("node-a", "x", rA+1000)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("SetCurrent with a stale write: %v, want ErrConflict", err)
	}
	if current(t, s) != n2 {
		t.Fatalf("refused SetCurrents moved current to %d", current(t, s))
	}
	recordAt(t, s, "desired", "node-a", "v2", rA)
	if err := s.SetCurrent(ctx, n2, n1, desired("node-a", "v1", rA)); err != nil {
		t.Fatal(err)
	}
	revs = expectEvents(t, events,
		store.Event{Type: store.EventCurrent, Generation: n1, From: n2, Env: spec.DefaultEnv},
		recordEvent("desired", "node-a"))
	if revs[0] != revs[1] {
		t.Errorf("SetCurrent and its write at revisions %v", revs)
	}
	rA = revs[1]

	// A confirm with its writes, and a switch with it.
	failed := &spec.Confirm{State: spec.ConfirmFailed, Reason: "r"}
	if err := s.SetConfirm(ctx, n2, failed, n1, n2, desired("node-a", "v2", rA+1000)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("SetConfirm with a stale write: %v, want ErrConflict", err)
	}
	if c := confirmOf(t, s, n2); c != nil || current(t, s) != n1 {
		t.Errorf("a refused SetConfirm recorded %+v, current %d", c, current(t, s))
	}
	if err := s.SetConfirm(ctx, n2, failed, n1, n2, desired("node-a", "v2", rA)); err != nil {
		t.Fatal(err)
	}
	revs = expectEvents(t, events,
		store.Event{Type: store.EventConfirm, Generation: n2, Env: spec.DefaultEnv},
		store.Event{Type: store.EventCurrent, Generation: n2, From: n1, Env: spec.DefaultEnv},
		recordEvent("desired", "node-a"))
	if slices.Max(revs) != slices.Min(revs) {
		t.Errorf("SetConfirm, its switch and its write at revisions %v", revs)
	}
	if _, err := s.Commit(ctx, Gen("v3"), n2, store.Write{Kind: "bad/kind", Key: "x"}); err == nil {
		t.Error("commit with a write of a bad kind: no error")
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{n1, n2}) {
		t.Errorf("generations %v after a refused commit", got)
	}

	// An environment dropped with its writes; one whose write fails stays.
	pr := Gen("p1")
	pr.Env = "pr-1"
	np, err := s.Commit(ctx, pr, 0)
	if err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events,
		store.Event{Type: store.EventAdded, Generation: np, Env: "pr-1"},
		store.Event{Type: store.EventCurrent, Generation: np, Env: "pr-1"})
	rA = recordRev(t, s, "desired", "node-a")
	if err := s.DropEnv(ctx, "pr-1", np, desired("node-a", "x", rA+1000)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("DropEnv with a stale write: %v, want ErrConflict", err)
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{n1, n2, np}) {
		t.Fatalf("a refused DropEnv left generations %v", got)
	}
	if err := s.DropEnv(ctx, "pr-1", np, desired("node-a", "dropped", rA)); err != nil {
		t.Fatal(err)
	}
	revs = expectEvents(t, events,
		store.Event{Type: store.EventCurrent, From: np, Env: "pr-1"},
		store.Event{Type: store.EventRemoved, Generation: np, Env: "pr-1"},
		recordEvent("desired", "node-a"))
	if slices.Max(revs) != slices.Min(revs) {
		t.Errorf("DropEnv and its write at revisions %v", revs)
	}
	recordAt(t, s, "desired", "node-a", "dropped", revs[2])
}

// recordRev returns the revision of record kind/key.
func recordRev(t *testing.T, s store.Store, kind, key string) uint64 {
	t.Helper()
	r, err := s.Record(t.Context(), kind, key)
	if err != nil {
		t.Fatal(err)
	}
	return r.Revision
}
