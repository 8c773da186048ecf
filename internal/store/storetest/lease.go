package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"hostel/internal/spec"
	"hostel/internal/store"
)

func grant(t *testing.T, s store.Store) store.Lease {
	t.Helper()
	l, err := s.Grant(t.Context(), LeaseTTL)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	if l.ID() == 0 || l.TTL() != LeaseTTL {
		t.Fatalf("lease %x of TTL %v, want an ID and TTL %v", l.ID(), l.TTL(), LeaseTTL)
	}
	return l
}

func putLeased(t *testing.T, s store.Store, kind, key string, l store.Lease) uint64 {
	t.Helper()
	rev, err := s.Txn(t.Context(), store.Write{Kind: kind, Key: key, Value: []byte("up"), Rev: store.AnyRevision, Lease: l.ID()})
	if err != nil {
		t.Fatalf("put %s %s with lease %x: %v", kind, key, l.ID(), err)
	}
	return rev
}

// closed waits up to 10 s for ch to be closed.
func closed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not closed after 10s", what)
	}
}

func notClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
		t.Errorf("%s: closed", what)
	default:
	}
}

// testLeaseKeptAlive: a lease lives, with its records, as long as the
// handle that granted it is open — well past its TTL.
func testLeaseKeptAlive(t *testing.T, b Backend) {
	owner, other := b.Open(t), b.Open(t)
	asked := time.Now()
	l := grant(t, owner)
	if got := l.Renewed(); got.Before(asked) || got.After(time.Now()) {
		t.Errorf("Renewed of a lease just granted: %v, want between %v and now", got, asked)
	}
	rev := putLeased(t, owner, "node", "n1", l)
	r, err := other.Record(t.Context(), "node", "n1")
	if err != nil || r.Lease != l.ID() || r.Revision != rev {
		t.Fatalf("record from the other handle: %+v, %v; want it with lease %x at %d", r, err, l.ID(), rev)
	}
	time.Sleep(2 * LeaseTTL)
	recordAt(t, other, "node", "n1", "up", rev)
	notClosed(t, "Done of a lease renewed by its open handle", l.Done())
	// Renewed every third of its TTL: the bound a node fences on.
	if age := time.Since(l.Renewed()); age > LeaseTTL/3+time.Second {
		t.Errorf("Renewed of a lease kept alive: %v ago, want within a third of its TTL (%v) and a second", age, LeaseTTL)
	}
}

// testLeaseExpires: once the handle that renews a lease is closed, the
// lease is lost at once for its owner (Done), and a TTL later its
// records vanish for everyone else, each with an event.
func testLeaseExpires(t *testing.T, b Backend) {
	ctx := t.Context()
	owner, other := b.Open(t), b.Open(t)
	l := grant(t, owner)
	putLeased(t, owner, "node", "n1", l)
	plain := put(t, other, "node", "n2", "no lease")
	events, err := other.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	owner.Close()
	closed(t, "Done of a lease whose handle was closed", l.Done())
	expectEvents(t, events, store.Event{Type: store.EventRecordDeleted, Kind: "node", Key: "n1"})
	noRecord(t, other, "node", "n1")
	recordAt(t, other, "node", "n2", "no lease", plain)
}

// testLeaseRevoke: a revoked lease ends at once, with its records; it
// cannot be used again; a record written again without a lease leaves it.
func testLeaseRevoke(t *testing.T, s store.Store) {
	ctx := t.Context()
	l := grant(t, s)
	putLeased(t, s, "node", "a", l)
	putLeased(t, s, "node", "b", l)
	kept := grant(t, s)
	putLeased(t, s, "node", "c", kept)
	rc := put(t, s, "node", "c", "no lease now")
	if r, _ := s.Record(ctx, "node", "c"); r.Lease != 0 {
		t.Errorf("record written again without a lease still has lease %x", r.Lease)
	}
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	closed(t, "Done of a revoked lease", l.Done())
	got := map[string]uint64{}
	for i := range 2 {
		ev := nextEvent(t, events, i, store.Event{Type: store.EventRecordDeleted, Kind: "node"})
		if ev.Type != store.EventRecordDeleted || ev.Kind != "node" {
			t.Errorf("event %d = %+v, want a node record deleted", i, ev)
		}
		got[ev.Key] = ev.Revision
	}
	if len(got) != 2 || got["a"] == 0 || got["a"] != got["b"] {
		t.Errorf("records deleted by the revoke at %v: want a and b, at one revision", got)
	}
	noRecord(t, s, "node", "a")
	if _, err := s.Txn(ctx, store.Write{Kind: "node", Key: "d", Rev: 0, Lease: l.ID()}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("write with a revoked lease: %v, want ErrNotFound", err)
	}
	if err := l.Revoke(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Revoke: %v, want ErrNotFound", err)
	}
	if err := kept.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	recordAt(t, s, "node", "c", "no lease now", rc)
}

// campaign campaigns in the background; the leadership won arrives on the
// channel returned.
func campaign(t *testing.T, s store.Store, name string, l store.Lease) <-chan store.Leadership {
	t.Helper()
	won := make(chan store.Leadership, 1)
	go func() {
		ld, err := s.Campaign(t.Context(), name, l)
		if err != nil {
			if t.Context().Err() == nil {
				t.Errorf("Campaign(%s): %v", name, err)
			}
			return
		}
		won <- ld
	}()
	return won
}

func wins(t *testing.T, what string, won <-chan store.Leadership) store.Leadership {
	t.Helper()
	select {
	case ld := <-won:
		return ld
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no leadership after 20s", what)
		return nil
	}
}

// testElection: candidates lead in the order they campaigned; the next
// leads when the leader resigns or its lease ends; a campaign given up
// leaves no candidacy behind; elections are independent.
func testElection(t *testing.T, b Backend) {
	ctx := t.Context()
	a, c, d, e := b.Open(t), b.Open(t), b.Open(t), b.Open(t)
	la, lc, ld, le := grant(t, a), grant(t, c), grant(t, d), grant(t, e)
	lda, err := a.Campaign(ctx, "scheduler", la)
	if err != nil {
		t.Fatal(err)
	}
	if lda.Name() != "scheduler" || lda.Lease().ID() != la.ID() {
		t.Errorf("leadership %s with lease %x, want scheduler with %x", lda.Name(), lda.Lease().ID(), la.ID())
	}
	cWon := campaign(t, c, "scheduler", lc)
	if _, err := c.Campaign(ctx, "other", lc); err != nil {
		t.Fatalf("Campaign(other) while a leads scheduler: %v", err)
	}
	// d gives up waiting: its candidacy goes, and blocks no one later.
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := d.Campaign(dctx, "scheduler", ld); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Campaign with a context that ends: %v, want DeadlineExceeded", err)
	}
	select {
	case <-cWon:
		t.Fatal("c leads scheduler while a does")
	case <-time.After(500 * time.Millisecond):
	}
	if err := lda.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	closed(t, "Done of a resigned leadership", lda.Done())
	ldc := wins(t, "c, after a resigned", cWon)
	eWon := campaign(t, e, "scheduler", le)
	c.Close()
	closed(t, "Done of a leadership whose handle closed", ldc.Done())
	wins(t, "e, once c's lease expired (d withdrew)", eWon)
}

// testFencing: every write through the view fenced by a leadership fails
// with ErrNotLeader, and leaves no trace, once another leads; the new
// leader's fenced writes go through.
func testFencing(t *testing.T, b Backend) {
	ctx := t.Context()
	a, k, c := b.Open(t), b.Open(t), b.Open(t)
	la := grant(t, k) // a leads with k's lease, which ends when k closes
	lda, err := a.Campaign(ctx, "scheduler", la)
	if err != nil {
		t.Fatal(err)
	}
	fa := a.Fenced(lda)
	n1 := commit(t, fa, Gen("v1"), 0)
	n2 := commit(t, fa, Gen("v2"), n1)
	e1 := commit(t, fa, InEnv("pr-1", "e1"), 0)
	rev, err := fa.PutRecord(ctx, "desired", "node-a", []byte("v2"), 0)
	if err != nil {
		t.Fatalf("fenced write while leading: %v", err)
	}
	cWon := campaign(t, c, "scheduler", grant(t, c))
	k.Close()
	closed(t, "Done of the leadership whose lease's handle closed", lda.Done())
	ldc := wins(t, "c, once a's lease expired", cWon)

	before := summary(read(t, c, "desired"))
	beforeRev := read(t, c).Revision
	writes := map[string]func() error{
		"Commit": func() error { _, err := fa.Commit(ctx, Gen("stale"), n2); return err },
		"Commit with a write": func() error {
			_, err := fa.Commit(ctx, Gen("stale"), n2, store.Write{Kind: "desired", Key: "node-a", Value: []byte("x"), Rev: rev})
			return err
		},
		"SetCurrent":        func() error { return fa.SetCurrent(ctx, n2, n1) },
		"SetCurrent no-op":  func() error { return fa.SetCurrent(ctx, n2, n2) },
		"SetConfirm":        func() error { return fa.SetConfirm(ctx, n1, &spec.Confirm{State: spec.ConfirmConfirmed}, 0, 0) },
		"Delete":            func() error { return fa.Delete(ctx, n1) },
		"DropEnv":           func() error { return fa.DropEnv(ctx, "pr-1", e1) },
		"PutRecord":         func() error { _, err := fa.PutRecord(ctx, "desired", "node-a", []byte("x"), rev); return err },
		"PutRecord created": func() error { _, err := fa.PutRecord(ctx, "desired", "node-b", []byte("x"), 0); return err },
		"DeleteRecord":      func() error { return fa.DeleteRecord(ctx, "desired", "node-a", rev) },
		"Txn": func() error {
			_, err := fa.Txn(ctx, store.Write{Kind: "desired", Key: "node-c", Value: []byte("x"), Rev: store.AnyRevision})
			return err
		},
	}
	for name, write := range writes {
		if err := write(); !errors.Is(err, store.ErrNotLeader) {
			t.Errorf("%s through the deposed leader's view: %v, want ErrNotLeader", name, err)
		}
	}
	if after := summary(read(t, c, "desired")); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("refused fenced writes changed the store:\n%v\nwas:\n%v", after, before)
	}
	if rev := read(t, c).Revision; rev != beforeRev {
		t.Errorf("refused fenced writes moved the revision from %d to %d", beforeRev, rev)
	}
	// Reads through the deposed view go on.
	if got := current(t, fa); got != n2 {
		t.Errorf("read through the deposed view: current %d, want %d", got, n2)
	}
	fc := c.Fenced(ldc)
	commit(t, fc, Gen("v3"), n2)
	if err := ldc.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := fc.PutRecord(ctx, "desired", "node-a", []byte("x"), store.AnyRevision); !errors.Is(err, store.ErrNotLeader) {
		t.Errorf("write after resigning: %v, want ErrNotLeader", err)
	}
	// Closing a view leaves its handle open.
	fc.Close()
	if got := current(t, c); got != n2+2 {
		t.Errorf("after closing the fenced view, the handle reads current %d, want %d", got, n2+2)
	}
}

// testRevokeByID: a lease another handle holds — one a node that died
// left — is ended at once by its ID: its records go, and so does the
// leadership it held, so the next candidate leads without waiting for its
// TTL; an ID no lease has is ErrNotFound.
func testRevokeByID(t *testing.T, b Backend) {
	ctx := t.Context()
	dead, next := b.Open(t), b.Open(t)
	l := grant(t, dead)
	putLeased(t, dead, "node", "n1", l)
	old, err := dead.Campaign(ctx, "engine", l)
	if err != nil {
		t.Fatal(err)
	}
	ln := grant(t, next)
	won := campaign(t, next, "engine", ln)
	if err := next.Revoke(ctx, l.ID()); err != nil {
		t.Fatalf("Revoke(%x): %v", l.ID(), err)
	}
	closed(t, "Done of the revoked lease", l.Done())
	closed(t, "Done of its leadership", old.Done())
	if _, err := next.Record(ctx, "node", "n1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the revoked lease's record: %v, want ErrNotFound", err)
	}
	select {
	case <-won:
	case <-time.After(LeaseTTL / 2):
		t.Fatal("the next candidate does not lead at once once the leader's lease is revoked")
	}
	if err := next.Revoke(ctx, l.ID()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Revoke of a lease gone: %v, want ErrNotFound", err)
	}
}
