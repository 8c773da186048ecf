//go:build failpoints

package storetest

import (
	"errors"
	"testing"
	"time"

	"hostel/internal/failpoint"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// arm arms failpoint point with terms until the test ends.
func arm(t *testing.T, point, terms string) {
	t.Helper()
	if err := failpoint.Enable(point, terms); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { failpoint.Disable(point) })
}

// storeWrite is one of the store's writes, as its failpoints see it.
type storeWrite struct {
	// op names its failpoints: store-before-OP, store-after-OP.
	op string
	// setup readies the store for the write.
	setup func(t *testing.T, s store.Store)
	// write makes it.
	write func(t *testing.T, s store.Store) error
	// made reports whether the write's change is in the store.
	made func(t *testing.T, s store.Store) bool
}

var storeWrites = []storeWrite{
	{"commit", func(t *testing.T, s store.Store) { commitChain(t, s, 1) },
		func(t *testing.T, s store.Store) error { _, err := s.Commit(t.Context(), Gen("v1"), 1); return err },
		func(t *testing.T, s store.Store) bool { return current(t, s) == 2 }},
	{"set-current", func(t *testing.T, s store.Store) { commitChain(t, s, 2) },
		func(t *testing.T, s store.Store) error { return s.SetCurrent(t.Context(), 2, 1) },
		func(t *testing.T, s store.Store) bool { return current(t, s) == 1 }},
	{"set-confirm", func(t *testing.T, s store.Store) { commitChain(t, s, 2) },
		func(t *testing.T, s store.Store) error {
			return s.SetConfirm(t.Context(), 2, &spec.Confirm{State: spec.ConfirmFailed, Previous: 1}, 2, 1)
		},
		func(t *testing.T, s store.Store) bool { return current(t, s) == 1 }},
	{"txn", func(*testing.T, store.Store) {},
		func(t *testing.T, s store.Store) error {
			_, err := s.Txn(t.Context(), store.Write{Kind: "k", Key: "a", Value: []byte("x")})
			return err
		},
		func(t *testing.T, s store.Store) bool {
			_, err := s.Record(t.Context(), "k", "a")
			return err == nil
		}},
	{"delete", func(t *testing.T, s store.Store) { commitChain(t, s, 2) },
		func(t *testing.T, s store.Store) error { return s.Delete(t.Context(), 1) },
		func(t *testing.T, s store.Store) bool {
			_, err := s.Get(t.Context(), 1)
			return errors.Is(err, store.ErrNotFound)
		}},
	{"drop-env", func(t *testing.T, s store.Store) { commit(t, s, InEnv("pr-1", "v0"), 0) },
		func(t *testing.T, s store.Store) error { return s.DropEnv(t.Context(), "pr-1", 1) },
		func(t *testing.T, s store.Store) bool { return currentOf(t, s, "pr-1") == 0 }},
}

// RunFailpoints checks the store's failpoints (a binary built with
// -tags failpoints): an error before a write changes nothing, an error
// after it leaves the change made though the caller is told it failed,
// a sleep delays it; a failed delivery ends a watch with the error (a
// watch again from the last revision read goes on), a delayed one comes
// late; a failed renewal loses the lease and, a TTL later, its records.
// A kill at each is the e2e robustness test's (test/e2e).
func RunFailpoints(t *testing.T, fresh func(t *testing.T) Backend) {
	for _, w := range storeWrites {
		for _, when := range []string{"before", "after"} {
			point := "store-" + when + "-" + w.op
			t.Run(point, func(t *testing.T) {
				s := fresh(t).Open(t)
				w.setup(t, s)
				arm(t, point, "1*error")
				if err := w.write(t, s); !errors.Is(err, failpoint.ErrInjected) {
					t.Fatalf("%s: %v, want the injected error", w.op, err)
				}
				if got, want := w.made(t, s), when == "after"; got != want {
					t.Errorf("%s failed %s its change: made %v, want %v", w.op, when, got, want)
				}
			})
		}
	}
	t.Run("store-before-commit=sleep", func(t *testing.T) {
		s := fresh(t).Open(t)
		arm(t, "store-before-commit", "1*sleep(200ms)")
		start := time.Now()
		if n := commit(t, s, Gen("v0"), 0); n != 1 {
			t.Errorf("committed generation %d, want 1", n)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("the commit took %s, want the 200ms sleep in it", d)
		}
	})
	t.Run("store-watch-deliver", func(t *testing.T) { testWatchDeliver(t, fresh(t).Open(t)) })
	t.Run("store-lease-keepalive", func(t *testing.T) { testLeaseKeepalive(t, fresh(t)) })
}

// testWatchDeliver: a failed delivery ends the watch with the error; a
// watch from the revision a Read saw delivers what came after; a delayed
// delivery comes, late.
func testWatchDeliver(t *testing.T, s store.Store) {
	ctx := t.Context()
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	arm(t, "store-watch-deliver", "1*error")
	put(t, s, "k", "a", "1")
	if ev := nextEvent(t, events, 0, store.Event{}); !errors.Is(ev.Err, failpoint.ErrInjected) {
		t.Fatalf("first event %+v, want the injected error", ev)
	}
	if ev, ok := <-events; ok {
		t.Fatalf("after the error: %+v, want the watch ended", ev)
	}
	snap := read(t, s)
	again, err := s.Watch(ctx, snap.Revision)
	if err != nil {
		t.Fatal(err)
	}
	arm(t, "store-watch-deliver", "1*sleep(200ms)")
	start := time.Now()
	put(t, s, "k", "b", "2")
	expectEvents(t, again, recordEvent("k", "b"))
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("the event came after %s, want the 200ms sleep before it", d)
	}
}

// testLeaseKeepalive: a lease whose renewal fails is lost for its owner
// at once (Done), and its record goes a TTL later, with an event, though
// the handle is still open.
func testLeaseKeepalive(t *testing.T, b Backend) {
	owner, other := b.Open(t), b.Open(t)
	events, err := other.Watch(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	arm(t, "store-lease-keepalive", "1*error")
	l := grant(t, owner)
	putLeased(t, owner, "node", "n1", l)
	closed(t, "Done of a lease whose renewal failed", l.Done())
	expectEvents(t, events, recordEvent("node", "n1"), store.Event{Type: store.EventRecordDeleted, Kind: "node", Key: "n1"})
	noRecord(t, other, "node", "n1")
}
