// Package storetest is the conformance suite of store.Store: what every
// implementation (bbolt, etcd) must do, each test on a fresh, empty
// backend on which it opens as many handles as it needs — two daemons on
// one file, two nodes on one etcd. It is test code, imported only by
// tests.
package storetest

import (
	"runtime"
	"strconv"
	"testing"
	"time"

	"hostel/internal/spec"
	"hostel/internal/store"
)

// Backend is one store — a bbolt file, an etcd's keys under a prefix —
// on which the suite opens handles.
type Backend interface {
	// Open returns a new handle on the backend. The test may close it
	// (closing twice must be harmless); whatever is left open is closed
	// when the test ends.
	Open(t *testing.T) store.Store
	// Reopen closes every handle open on the backend and opens the
	// backend again (a server restarts), its content kept: a daemon's
	// restart, a machine's reboot. Handles opened before are closed.
	Reopen(t *testing.T)
}

// LeaseTTL is the TTL the suite grants its leases: short, for the tests
// that wait for one to expire, but twice the shortest etcd grants, so
// that a keep-alive (every third of it) late on a loaded machine does not
// lose a lease that must live. A backend the suite runs against must
// grant it as asked.
const LeaseTTL = 2 * time.Second

// Run runs the suite; fresh returns a new backend that holds nothing.
func Run(t *testing.T, fresh func(t *testing.T) Backend) {
	one := func(fn func(t *testing.T, s store.Store)) func(t *testing.T, b Backend) {
		return func(t *testing.T, b Backend) { fn(t, b.Open(t)) }
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, b Backend)
	}{
		{"Empty", one(testEmpty)},
		{"CommitAndGet", one(testCommitAndGet)},
		{"NumbersNeverReused", one(testNumbersNeverReused)},
		{"CommitConflict", one(testCommitConflict)},
		{"SetCurrent", one(testSetCurrent)},
		{"SetConfirm", one(testSetConfirm)},
		{"SetConfirmSwitchBack", one(testSetConfirmSwitchBack)},
		{"SetConfirmConflict", one(testSetConfirmConflict)},
		{"DeleteRefusesCurrent", one(testDeleteRefusesCurrent)},
		{"SecretsByDigest", one(testSecretsByDigest)},
		{"Records", one(testRecords)},
		{"Environments", one(testEnvironments)},
		{"DropEnv", one(testDropEnv)},
		{"Read", one(testRead)},
		{"Txn", one(testTxn)},
		{"AlsoWrites", one(testAlsoWrites)},
		{"Watch", one(testWatch)},
		{"WatchEnds", one(testWatchEnds)},
		{"WatchFromRevision", one(testWatchFromRevision)},
		{"WatchLast", one(testWatchLast)},
		{"WatchCompacted", one(testWatchCompacted)},
		{"WatchCancelLeaksNothing", one(testWatchCancel)},
		{"TwoClients", testTwoClients},
		{"ReadThenWatch", testReadThenWatch},
		{"ConcurrentClients", testConcurrentClients},
		{"Reopen", testReopen},
		{"LeaseKeptAlive", testLeaseKeptAlive},
		{"LeaseExpires", testLeaseExpires},
		{"LeaseRevoke", one(testLeaseRevoke)},
		{"RevokeByID", testRevokeByID},
		{"Election", testElection},
		{"Fencing", testFencing},
		{"BigDelete", one(testBigDelete)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, fresh(t)) })
	}
}

// Gen returns a generation whose service "a" runs version v.
func Gen(v string) *spec.Generation {
	return &spec.Generation{
		SpecHash: "hash-" + v,
		Spec:     &spec.Spec{Services: map[string]*spec.Service{"a": {Exec: []string{"/bin/a"}}}},
		Versions: map[string]spec.Version{"a": spec.Version(v)},
	}
}

// InEnv returns Gen(v) in environment env.
func InEnv(env, v string) *spec.Generation {
	g := Gen(v)
	g.Env = env
	return g
}

func commit(t *testing.T, s store.Store, g *spec.Generation, from uint64) uint64 {
	t.Helper()
	n, err := s.Commit(t.Context(), g, from)
	if err != nil {
		t.Fatalf("Commit(from %d): %v", from, err)
	}
	return n
}

// commitChain commits n generations, v0 to vN-1, each on the one before,
// numbered 1 to n in an empty store.
func commitChain(t *testing.T, s store.Store, n uint64) {
	t.Helper()
	for i := range n {
		commit(t, s, Gen("v"+strconv.FormatUint(i, 10)), i)
	}
}

func current(t *testing.T, s store.Store) uint64 {
	t.Helper()
	return currentOf(t, s, spec.DefaultEnv)
}

// currentOf returns env's current generation number, 0 for none.
func currentOf(t *testing.T, s store.Store, env string) uint64 {
	t.Helper()
	g, err := s.Current(t.Context(), env)
	if err != nil {
		t.Fatalf("Current(%s): %v", env, err)
	}
	if g == nil {
		return 0
	}
	return g.Number
}

func numbers(t *testing.T, s store.Store) []uint64 {
	t.Helper()
	gens, err := s.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var out []uint64
	for _, g := range gens {
		out = append(out, g.Number)
	}
	return out
}

// read returns s.Read(kinds...), failing the test on an error.
func read(t *testing.T, s store.Store, kinds ...string) *store.Snapshot {
	t.Helper()
	snap, err := s.Read(t.Context(), kinds...)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return snap
}

// nextEvent returns the next event on events, which the test expects to be
// its i-th, want; the test fails if none comes.
func nextEvent(t *testing.T, events <-chan store.Event, i int, want store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatalf("event %d (%v): the watch ended", i, want)
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatalf("event %d (%v) not delivered", i, want)
		return store.Event{}
	}
}

// expectEvents checks that the next events on events are want, revisions
// aside, and returns their revisions.
func expectEvents(t *testing.T, events <-chan store.Event, want ...store.Event) []uint64 {
	t.Helper()
	revs := make([]uint64, len(want))
	for i, w := range want {
		ev := nextEvent(t, events, i, w)
		revs[i] = ev.Revision
		ev.Revision, ev.Last = 0, false
		if ev != w {
			t.Errorf("event %d = %+v, want %+v", i, ev, w)
		}
	}
	return revs
}

// eventually waits up to 20 s for cond, failing the test with what
// otherwise.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// goroutinesBackTo waits until no more goroutines run than before.
func goroutinesBackTo(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
