package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"hostel/internal/spec"
	"hostel/internal/store"
)

func testEmpty(t *testing.T, s store.Store) {
	if g, err := s.Current(t.Context(), spec.DefaultEnv); err != nil || g != nil {
		t.Errorf("Current = %v, %v; want nil, nil", g, err)
	}
	if got := numbers(t, s); len(got) != 0 {
		t.Errorf("List = %v, want none", got)
	}
	if _, err := s.Get(t.Context(), 1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(1) = %v, want ErrNotFound", err)
	}
	if _, err := s.Record(t.Context(), "k", "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Record = %v, want ErrNotFound", err)
	}
	if recs, err := s.Records(t.Context(), "k"); err != nil || len(recs) != 0 {
		t.Errorf("Records = %v, %v; want none", recs, err)
	}
}

func testCommitAndGet(t *testing.T, s store.Store) {
	g := Gen("v1")
	g.Source = "hostel.json"
	g.Plan = []spec.Change{{Name: "a", Action: "add", To: "v1", Reasons: []string{"new service"}}}
	before := time.Now().Add(-time.Second)
	n := commit(t, s, g, 0)
	if n != 1 || g.Number != 1 {
		t.Fatalf("first commit numbered %d (g.Number %d), want 1", n, g.Number)
	}
	got, err := s.Get(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	if got.Number != 1 || got.SpecHash != "hash-v1" || got.Source != "hostel.json" || got.Versions["a"] != "v1" || got.Spec.Services["a"].Exec[0] != "/bin/a" {
		t.Errorf("Get(1) = %+v, want what was committed", got)
	}
	if got.Time.Before(before) || got.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("committed at %v, want about now", got.Time)
	}
	if fmt.Sprint(got.Plan) != fmt.Sprint(g.Plan) {
		t.Errorf("Get(1).Plan = %+v, want %+v", got.Plan, g.Plan)
	}
	if c := current(t, s); c != 1 {
		t.Errorf("current %d after the first commit, want 1", c)
	}
	n2 := commit(t, s, Gen("v2"), 1)
	if c := current(t, s); n2 != 2 || c != 2 {
		t.Errorf("second commit numbered %d, current %d; want 2, 2", n2, c)
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("List = %v, want [1 2]", got)
	}
	if got, err := s.Get(t.Context(), 2); err != nil || got.Plan != nil {
		t.Errorf("Get(2) of a generation committed without a plan: plan %+v, %v; want none", got.Plan, err)
	}
}

func testNumbersNeverReused(t *testing.T, s store.Store) {
	commitChain(t, s, 3)
	if err := s.Delete(t.Context(), 1, 2); err != nil {
		t.Fatal(err)
	}
	if n := commit(t, s, Gen("v4"), 3); n != 4 {
		t.Errorf("after deleting 1 and 2, next number %d, want 4", n)
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{3, 4}) {
		t.Errorf("List = %v, want [3 4]", got)
	}
}

func testCommitConflict(t *testing.T, s store.Store) {
	commit(t, s, Gen("v1"), 0)
	// Two writers read generation 1 as current; the second to commit is stale.
	commit(t, s, Gen("v2"), 1)
	_, err := s.Commit(t.Context(), Gen("stale"), 1)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale Commit = %v, want ErrConflict", err)
	}
	if _, err := s.Commit(t.Context(), Gen("stale"), 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Commit as if the store were empty = %v, want ErrConflict", err)
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("a refused commit stored something: List = %v, want [1 2]", got)
	}
	if c := current(t, s); c != 2 {
		t.Errorf("a refused commit moved current to %d", c)
	}
}

func testSetCurrent(t *testing.T, s store.Store) {
	commitChain(t, s, 3)
	if err := s.SetCurrent(t.Context(), 3, 1); err != nil {
		t.Fatal(err)
	}
	if c := current(t, s); c != 1 {
		t.Fatalf("current %d after SetCurrent(3, 1)", c)
	}
	if err := s.SetCurrent(t.Context(), 3, 2); !errors.Is(err, store.ErrConflict) {
		t.Errorf("stale SetCurrent = %v, want ErrConflict", err)
	}
	if err := s.SetCurrent(t.Context(), 1, 9); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetCurrent to a missing generation = %v, want ErrNotFound", err)
	}
	if c := current(t, s); c != 1 {
		t.Errorf("refused SetCurrents moved current to %d", c)
	}
	// A commit after a rollback builds on the rolled-back-to generation.
	if _, err := s.Commit(t.Context(), Gen("v4"), 3); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Commit on the generation rolled back from = %v, want ErrConflict", err)
	}
	if n := commit(t, s, Gen("v4"), 1); n != 4 {
		t.Errorf("commit after rollback numbered %d, want 4", n)
	}
}

// pending returns a generation whose service "a" runs version v, its
// confirm window open with prev to switch back to.
func pending(v string, prev uint64) *spec.Generation {
	g := Gen(v)
	g.Confirm = &spec.Confirm{State: spec.ConfirmPending, Deadline: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), Previous: prev}
	return g
}

// sameConfirm reports whether a and b record the same confirm window.
func sameConfirm(a, b *spec.Confirm) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.State == b.State && a.Deadline.Equal(b.Deadline) && a.Previous == b.Previous && a.Reason == b.Reason
}

func confirmOf(t *testing.T, s store.Store, n uint64) *spec.Confirm {
	t.Helper()
	g, err := s.Get(t.Context(), n)
	if err != nil {
		t.Fatalf("Get(%d): %v", n, err)
	}
	return g.Confirm
}

func testSetConfirm(t *testing.T, s store.Store) {
	ctx := t.Context()
	commit(t, s, Gen("v1"), 0)
	g := pending("v2", 1)
	g.Secrets = map[string][]byte{"k": []byte("age ciphertext")}
	commit(t, s, g, 1)
	if c := confirmOf(t, s, 2); !sameConfirm(c, g.Confirm) {
		t.Fatalf("committed confirm = %+v, want %+v", c, g.Confirm)
	}
	want := &spec.Confirm{State: spec.ConfirmConfirmed, Previous: 1}
	if err := s.SetConfirm(ctx, 2, want, 0, 0); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !sameConfirm(got.Confirm, want) {
		t.Errorf("confirm = %+v, want %+v", got.Confirm, want)
	}
	// Only the confirmation changes.
	if got.Number != 2 || !got.Time.Equal(g.Time) || got.SpecHash != "hash-v2" || got.Versions["a"] != "v2" || !bytes.Equal(got.Secrets["k"], g.Secrets["k"]) {
		t.Errorf("generation after SetConfirm = %+v, want it as committed but for its confirm", got)
	}
	if c := current(t, s); c != 2 {
		t.Errorf("SetConfirm without a switch moved current to %d", c)
	}
	// A generation that is not current can be recorded too (superseded).
	if err := s.SetConfirm(ctx, 1, &spec.Confirm{State: spec.ConfirmSuperseded, Reason: "r"}, 0, 0); err != nil {
		t.Fatal(err)
	}
	if c := confirmOf(t, s, 1); c == nil || c.State != spec.ConfirmSuperseded || c.Reason != "r" {
		t.Errorf("confirm of generation 1 = %+v, want superseded", c)
	}
	if err := s.SetConfirm(ctx, 9, want, 0, 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetConfirm of a missing generation = %v, want ErrNotFound", err)
	}
	// A switch that names no generation to switch to is refused.
	if err := s.SetConfirm(ctx, 2, &spec.Confirm{State: spec.ConfirmFailed}, 2, 0); err == nil {
		t.Error("SetConfirm(from 2, to 0) = nil, want an error")
	}
	if c := confirmOf(t, s, 2); !sameConfirm(c, want) {
		t.Errorf("refused SetConfirms changed the confirm to %+v", c)
	}
	// A switch from and to the current generation records and moves nothing.
	if err := s.SetConfirm(ctx, 2, &spec.Confirm{State: spec.ConfirmSkipped}, 2, 2); err != nil {
		t.Fatal(err)
	}
	if c := current(t, s); c != 2 {
		t.Errorf("SetConfirm(from 2, to 2) moved current to %d", c)
	}
}

// testSetConfirmSwitchBack: a failed confirmation and the switch back to
// the previous generation are one change: a reader sees both or neither,
// and watchers get both events at one revision.
func testSetConfirmSwitchBack(t *testing.T, s store.Store) {
	ctx := t.Context()
	commit(t, s, Gen("v1"), 0)
	commit(t, s, pending("v2", 1), 1)
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A reader, concurrent with the switch back, must never see one half
	// of it without the other. Each look reads one half before the other,
	// in both orders: what the first read saw done the second must see.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		read := func() (uint64, bool) {
			g, err := s.Current(ctx, spec.DefaultEnv)
			if err != nil || g == nil {
				t.Errorf("Current = %v, %v; want a generation", g, err)
				return 0, false
			}
			return g.Number, true
		}
		state := func() (spec.ConfirmState, bool) {
			g, err := s.Get(ctx, 2)
			if err != nil || g.Confirm == nil {
				t.Errorf("Get(2) = %v, %v; want it with its confirm", g, err)
				return "", false
			}
			return g.Confirm.State, true
		}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				cur, ok := read()
				st, ok2 := state()
				if !ok || !ok2 {
					return
				}
				if cur == 1 && st != spec.ConfirmFailed {
					t.Errorf("generation 1 is current again, but generation 2 is recorded %s", st)
					return
				}
			} else {
				st, ok := state()
				cur, ok2 := read()
				if !ok || !ok2 {
					return
				}
				if st == spec.ConfirmFailed && cur != 1 {
					t.Errorf("generation 2 is recorded failed, but %d is current", cur)
					return
				}
			}
		}
	}()
	rec := &spec.Confirm{State: spec.ConfirmFailed, Previous: 1, Reason: "a-v2 crashed"}
	err = s.SetConfirm(ctx, 2, rec, 2, 1)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if c := current(t, s); c != 1 {
		t.Errorf("current %d after the switch back, want 1", c)
	}
	if c := confirmOf(t, s, 2); !sameConfirm(c, rec) {
		t.Errorf("confirm after the switch back = %+v, want %+v", c, rec)
	}
	if c := confirmOf(t, s, 1); c != nil {
		t.Errorf("the switch back recorded a confirm on generation 1: %+v", c)
	}
	want := []store.Event{
		{Type: store.EventConfirm, Generation: 2, Env: spec.DefaultEnv},
		{Type: store.EventCurrent, Generation: 1, From: 2, Env: spec.DefaultEnv},
	}
	var rev uint64
	for i, w := range want {
		ev := nextEvent(t, events, i, w)
		if i == 0 {
			rev = ev.Revision
		} else if ev.Revision != rev {
			t.Errorf("event %d at revision %d, the switch back's first at %d: one change, one revision", i, ev.Revision, rev)
		}
		ev.Revision, ev.Last = 0, false
		if ev != w {
			t.Errorf("event %d = %+v, want %+v", i, ev, w)
		}
	}
	// A commit after the switch back builds on the generation switched to.
	if _, err := s.Commit(ctx, Gen("v3"), 2); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Commit on the generation switched back from = %v, want ErrConflict", err)
	}
	if n := commit(t, s, Gen("v3"), 1); n != 3 {
		t.Errorf("commit after the switch back numbered %d, want 3", n)
	}
}

// testSetConfirmConflict: a switch back by a stale writer — another one
// moved the current generation since it read it — fails and changes
// nothing: neither the confirmation nor the current generation.
func testSetConfirmConflict(t *testing.T, s store.Store) {
	ctx := t.Context()
	commit(t, s, Gen("v1"), 0)
	commit(t, s, pending("v2", 1), 1)
	commit(t, s, Gen("v3"), 2) // another writer deployed meanwhile
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	before := confirmOf(t, s, 2)
	err = s.SetConfirm(ctx, 2, &spec.Confirm{State: spec.ConfirmFailed, Previous: 1, Reason: "stale"}, 2, 1)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale switch back = %v, want ErrConflict", err)
	}
	if c := confirmOf(t, s, 2); !sameConfirm(c, before) {
		t.Errorf("a refused switch back recorded %+v, want %+v unchanged", c, before)
	}
	if c := current(t, s); c != 3 {
		t.Errorf("a refused switch back moved current to %d, want 3", c)
	}
	if err := s.SetConfirm(ctx, 2, &spec.Confirm{State: spec.ConfirmFailed}, 3, 9); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("switch to a missing generation = %v, want ErrNotFound", err)
	}
	if err := s.SetConfirm(ctx, 9, &spec.Confirm{State: spec.ConfirmFailed}, 3, 1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("switch back from the confirm of a missing generation = %v, want ErrNotFound", err)
	}
	if c := current(t, s); c != 3 {
		t.Errorf("refused switches moved current to %d, want 3", c)
	}
	if c := confirmOf(t, s, 2); !sameConfirm(c, before) {
		t.Errorf("refused switches recorded %+v, want %+v unchanged", c, before)
	}
	// Refused changes are not events: the first one seen is the next change.
	if err := s.SetConfirm(ctx, 3, &spec.Confirm{State: spec.ConfirmSkipped}, 0, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Type != store.EventConfirm || ev.Generation != 3 {
			t.Errorf("first event after refused switches = %+v, want generation 3's confirm", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the confirm of generation 3 was not delivered")
	}
}

func testDeleteRefusesCurrent(t *testing.T, s store.Store) {
	commitChain(t, s, 3)
	if err := s.Delete(t.Context(), 1, 3); !errors.Is(err, store.ErrCurrent) {
		t.Fatalf("Delete(1, current) = %v, want ErrCurrent", err)
	}
	if got := numbers(t, s); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("a refused Delete removed something: List = %v", got)
	}
	if err := s.Delete(t.Context(), 1, 7); err != nil {
		t.Errorf("Delete(1, missing) = %v, want nil", err)
	}
	if _, err := s.Get(t.Context(), 1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(deleted) = %v, want ErrNotFound", err)
	}
}

func testSecretsByDigest(t *testing.T, s store.Store) {
	shared, own := []byte("age ciphertext shared"), []byte("age ciphertext own")
	g1 := Gen("v1")
	g1.Secrets = map[string][]byte{"k": shared}
	g2 := Gen("v2")
	g2.Secrets = map[string][]byte{"k": shared, "o": own}
	commit(t, s, g1, 0)
	commit(t, s, g2, 1)
	commit(t, s, Gen("v3"), 2)
	for n, want := range map[uint64]map[string][]byte{1: g1.Secrets, 2: g2.Secrets} {
		got, err := s.Get(t.Context(), n)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Secrets) != len(want) {
			t.Errorf("generation %d secrets %q, want %q", n, got.Secrets, want)
		}
		for k, v := range want {
			if !bytes.Equal(got.Secrets[k], v) {
				t.Errorf("generation %d secret %s = %q, want %q", n, k, got.Secrets[k], v)
			}
		}
	}
	dShared, dOwn := store.SecretDigest(shared), store.SecretDigest(own)
	if ct, err := s.Secret(t.Context(), dShared); err != nil || !bytes.Equal(ct, shared) {
		t.Errorf("Secret(shared) = %q, %v", ct, err)
	}
	if err := s.Delete(t.Context(), 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Secret(t.Context(), dOwn); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a ciphertext no generation refers to is kept: %v", err)
	}
	if _, err := s.Secret(t.Context(), dShared); err != nil {
		t.Errorf("a ciphertext generation 1 still refers to is gone: %v", err)
	}
	if err := s.Delete(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Secret(t.Context(), dShared); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a ciphertext no generation refers to is kept: %v", err)
	}
}

func testRecords(t *testing.T, s store.Store) {
	ctx := t.Context()
	r1, err := s.PutRecord(ctx, "release", "api/abc", []byte("one"), 0)
	if err != nil || r1 == 0 {
		t.Fatalf("create = %d, %v", r1, err)
	}
	if _, err := s.PutRecord(ctx, "release", "api/abc", []byte("two"), 0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("create of an existing record = %v, want ErrConflict", err)
	}
	r2, err := s.PutRecord(ctx, "release", "api/abc", []byte("two"), r1)
	if err != nil || r2 <= r1 {
		t.Fatalf("update = %d, %v; want a revision after %d", r2, err, r1)
	}
	if _, err := s.PutRecord(ctx, "release", "api/abc", []byte("stale"), r1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("stale update = %v, want ErrConflict", err)
	}
	got, err := s.Record(ctx, "release", "api/abc")
	if err != nil || string(got.Value) != "two" || got.Revision != r2 || got.Kind != "release" || got.Key != "api/abc" {
		t.Errorf("Record = %+v, %v; want two at %d", got, err, r2)
	}
	// Kinds do not mix, not even when one is a prefix of another.
	for _, kr := range [][2]string{{"releases", "x"}, {"database", "api"}, {"release", "api/0"}} {
		if _, err := s.PutRecord(ctx, kr[0], kr[1], []byte(kr[1]), 0); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.Records(ctx, "release")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, r := range recs {
		keys = append(keys, r.Kind+":"+r.Key)
	}
	if !slices.Equal(keys, []string{"release:api/0", "release:api/abc"}) {
		t.Errorf("Records(release) = %v", keys)
	}
	if err := s.DeleteRecord(ctx, "release", "api/abc", r1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("stale delete = %v, want ErrConflict", err)
	}
	if err := s.DeleteRecord(ctx, "release", "api/abc", r2); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRecord(ctx, "release", "api/abc", r2); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete of a missing record = %v, want ErrNotFound", err)
	}
	if _, err := s.Record(ctx, "release", "api/abc"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Record after delete = %v, want ErrNotFound", err)
	}
	// A deleted record can be created again.
	if _, err := s.PutRecord(ctx, "release", "api/abc", []byte("again"), 0); err != nil {
		t.Errorf("create after delete = %v", err)
	}
}

// testEnvironments: each environment has its own current generation,
// moved by compare-and-swap on its own; numbers count across them; a
// generation without an environment is production's.
func testEnvironments(t *testing.T, s store.Store) {
	ctx := t.Context()
	p1 := commit(t, s, Gen("p1"), 0) // no Env: production
	e1 := commit(t, s, InEnv("pr-1", "e1"), 0)
	if p1 != 1 || e1 != 2 {
		t.Fatalf("numbers %d, %d, want 1, 2: they count across environments", p1, e1)
	}
	if g, err := s.Get(ctx, p1); err != nil || g.Env != spec.DefaultEnv {
		t.Errorf("generation committed without an environment: Env %q (%v), want %q", g.Env, err, spec.DefaultEnv)
	}
	// A preview's commit is checked against the preview's current only.
	if _, err := s.Commit(ctx, InEnv("pr-1", "stale"), 0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("commit to pr-1 from 0 while %d is current there: %v, want ErrConflict", e1, err)
	}
	if _, err := s.Commit(ctx, Gen("stale"), e1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("commit to production from pr-1's current: %v, want ErrConflict", err)
	}
	p2 := commit(t, s, Gen("p2"), p1)
	e2 := commit(t, s, InEnv("pr-1", "e2"), e1)
	if got := currentOf(t, s, spec.DefaultEnv); got != p2 {
		t.Errorf("production's current %d, want %d", got, p2)
	}
	if got := currentOf(t, s, "pr-1"); got != e2 {
		t.Errorf("pr-1's current %d, want %d", got, e2)
	}
	if got := currentOf(t, s, "pr-2"); got != 0 {
		t.Errorf("pr-2, never deployed, has current %d", got)
	}
	// SetCurrent moves the environment of the generation it switches to.
	if err := s.SetCurrent(ctx, p2, e1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("SetCurrent(from production's %d to pr-1's %d): %v, want ErrConflict", p2, e1, err)
	}
	if err := s.SetCurrent(ctx, e2, e1); err != nil {
		t.Fatalf("SetCurrent in pr-1: %v", err)
	}
	if got := currentOf(t, s, spec.DefaultEnv); got != p2 {
		t.Errorf("a switch in pr-1 moved production to %d", got)
	}
	cs, err := s.Currents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for env, g := range cs {
		got[env] = g.Number
	}
	if want := map[string]uint64{spec.DefaultEnv: p2, "pr-1": e1}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Currents = %v, want %v", got, want)
	}
	// Every environment's current is kept from deletion.
	if err := s.Delete(ctx, e1); !errors.Is(err, store.ErrCurrent) {
		t.Errorf("Delete(pr-1's current): %v, want ErrCurrent", err)
	}
	if err := s.Delete(ctx, p1, e2); err != nil {
		t.Errorf("Delete of generations current nowhere: %v", err)
	}
}

// testDropEnv: dropping an environment removes its current generation and
// every generation of it in one change; production and a stale drop are
// refused and change nothing.
func testDropEnv(t *testing.T, s store.Store) {
	ctx := t.Context()
	p1 := commit(t, s, Gen("p1"), 0)
	secret := []byte("ciphertext only the preview uses")
	g := InEnv("pr-1", "e1")
	g.Secrets = map[string][]byte{"k": secret}
	e1 := commit(t, s, g, 0)
	e2 := commit(t, s, InEnv("pr-1", "e2"), e1)
	if err := s.DropEnv(ctx, spec.DefaultEnv, p1); !errors.Is(err, store.ErrDefaultEnv) {
		t.Errorf("DropEnv(production): %v, want ErrDefaultEnv", err)
	}
	if err := s.DropEnv(ctx, "pr-1", e1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("DropEnv(pr-1 from %d while %d is current): %v, want ErrConflict", e1, e2, err)
	}
	if err := s.DropEnv(ctx, "pr-9", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DropEnv of an environment never deployed: %v, want ErrNotFound", err)
	}
	if got := currentOf(t, s, "pr-1"); got != e2 {
		t.Fatalf("refused drops moved pr-1 to %d", got)
	}
	events, err := s.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DropEnv(ctx, "pr-1", e2); err != nil {
		t.Fatalf("DropEnv(pr-1): %v", err)
	}
	if got := currentOf(t, s, "pr-1"); got != 0 {
		t.Errorf("pr-1 dropped, but its current is %d", got)
	}
	for _, n := range []uint64{e1, e2} {
		if _, err := s.Get(ctx, n); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("generation %d of the dropped pr-1: %v, want ErrNotFound", n, err)
		}
	}
	if _, err := s.Secret(ctx, store.SecretDigest(secret)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a secret only pr-1 held outlives it: %v", err)
	}
	if got := currentOf(t, s, spec.DefaultEnv); got != p1 {
		t.Errorf("production's current %d after dropping pr-1, want %d", got, p1)
	}
	want := []store.Event{
		{Type: store.EventCurrent, From: e2, Env: "pr-1"},
		{Type: store.EventRemoved, Generation: e1, Env: "pr-1"},
		{Type: store.EventRemoved, Generation: e2, Env: "pr-1"},
	}
	for i, w := range want {
		ev := nextEvent(t, events, i, w)
		ev.Revision, ev.Last = 0, false
		if ev != w {
			t.Errorf("event %d = %+v, want %+v", i, ev, w)
		}
	}
}
