package routes

import (
	"context"
	"encoding/json"
	"maps"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest"
)

// swaps records every table swapped in.
type swaps struct {
	mu     sync.Mutex
	tables []router.Table
}

func (s *swaps) Swap(t router.Table) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tables = append(s.tables, t)
	return nil
}

func (s *swaps) last() (router.Table, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.tables) == 0 {
		return router.Table{}, 0
	}
	return s.tables[len(s.tables)-1], len(s.tables)
}

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// follow starts a Follower of st from from, reporting as node n.
func follow(t *testing.T, st store.Store, sw Swapper, from uint64) *Follower {
	t.Helper()
	lease, err := st.Grant(t.Context(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f := NewFollower(st, sw, Options{Node: "n", Lease: lease.ID(), Logf: t.Logf})
	rev, err := f.Sync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if from == 0 {
		from = rev
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx, from) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func web(id string) *spec.Generation {
	return &spec.Generation{Spec: &spec.Spec{Services: map[string]*spec.Service{"web": {Domains: []string{"web.test"}}}},
		Versions: map[string]spec.Version{"web": spec.Version(id)}}
}

// routesApplied reads the revision node n's routes record says.
func routesApplied(t *testing.T, st store.Store) uint64 {
	t.Helper()
	r, err := st.Record(t.Context(), node.KindRoutes, "n")
	if err != nil {
		return 0
	}
	rr, _ := node.DecodeRoutes(r.Key, r.Value)
	return rr.Applied
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFollowerFollows: a commit and a pause each swap in the table of the
// state, and the routes record says the revision followed; a change that
// does not touch the table swaps nothing but is said followed too.
func TestFollowerFollows(t *testing.T) {
	st := openStore(t)
	sw := &swaps{}
	f := follow(t, st, sw, 0)
	if _, err := st.Commit(t.Context(), web("111111111111"), 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the commit's table", func() bool { tab, _ := sw.last(); return tab.Domains["web.test"] == "web-111111111111" })
	pause, _ := json.Marshal(Pause{Max: time.Minute})
	rev, err := st.Txn(t.Context(), store.Write{Kind: store.KindPause, Key: "web", Value: pause})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pause's table", func() bool { tab, _ := sw.last(); return tab.Paused["web"] == time.Minute })
	waitFor(t, "the routes record at the pause", func() bool { return routesApplied(t, st) >= rev })
	if err := f.Wait(t.Context(), rev); err != nil {
		t.Fatal(err)
	}

	_, swapsBefore := sw.last()
	rev, err = st.Txn(t.Context(), store.Write{Kind: node.KindDesired, Key: "n", Value: []byte("{}"), Rev: store.AnyRevision})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the routes record at a change that does not touch them", func() bool { return routesApplied(t, st) >= rev })
	if _, n := sw.last(); n != swapsBefore {
		t.Errorf("%d swaps for a change that does not touch the table", n-swapsBefore)
	}
}

// TestFollowerAfterCompaction: a follower whose history is gone (a watch
// from a compacted revision) reads the state again and follows on.
func TestFollowerAfterCompaction(t *testing.T) {
	st := openStore(t)
	if _, err := st.Commit(t.Context(), web("111111111111"), 0); err != nil {
		t.Fatal(err)
	}
	rev, err := st.Txn(t.Context(), store.Write{Kind: "other", Key: "x", Value: []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Compact(t.Context(), rev); err != nil {
		t.Fatal(err)
	}
	sw := &swaps{}
	follow(t, st, sw, 1) // from before the compaction
	if _, err := st.Commit(t.Context(), web("222222222222"), 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the table after the compaction", func() bool { tab, _ := sw.last(); return tab.Domains["web.test"] == "web-222222222222" })
}

// TestFollowerSwitched: the switch hook is told every table swapped in,
// right after its swap, with the current generations it was made of: what
// certificate management takes its host set from.
func TestFollowerSwitched(t *testing.T) {
	st := openStore(t)
	sw := &swaps{}
	var mu sync.Mutex
	var told []router.Table
	f := NewFollower(st, sw, Options{Logf: t.Logf, Switched: func(tab router.Table, currents map[string]*spec.Generation) {
		mu.Lock()
		defer mu.Unlock()
		if last, n := sw.last(); n != len(told)+1 || !maps.Equal(last.Domains, tab.Domains) || !maps.Equal(last.TLS, tab.TLS) {
			t.Errorf("told table %d, %v, after swap %d, %v", len(told)+1, tab, n, last)
		}
		if g := currents[spec.DefaultEnv]; g != nil && tab.Domains["web.test"] != g.Instance("web") {
			t.Errorf("told table %v with production's generation %d", tab.Domains, g.Number)
		}
		told = append(told, tab)
	}})
	if _, err := f.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Commit(t.Context(), web("111111111111"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 2 || told[1].Certificates()["web.test"] != "web" {
		t.Errorf("told %v, want the empty table, then web.test served over HTTPS", told)
	}
}

// splitChanges is a store whose watch delivers the events of one change a
// moment apart, as a loaded machine may; onRoutes is told, as it is
// written, every revision a routes record says followed.
type splitChanges struct {
	store.Store
	onRoutes func(applied uint64)
}

func (s *splitChanges) Watch(ctx context.Context, from uint64) (<-chan store.Event, error) {
	in, err := s.Store.Watch(ctx, from)
	if err != nil {
		return nil, err
	}
	out := make(chan store.Event)
	go func() {
		defer close(out)
		var last uint64
		for ev := range in {
			if ev.Revision == last {
				time.Sleep(20 * time.Millisecond)
			}
			last = ev.Revision
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (s *splitChanges) Txn(ctx context.Context, writes ...store.Write) (uint64, error) {
	for _, w := range writes {
		if w.Kind == node.KindRoutes {
			r, _ := node.DecodeRoutes(w.Key, w.Value)
			s.onRoutes(r.Applied)
		}
	}
	return s.Store.Txn(ctx, writes...)
}

// TestFollowerNeverAheadOfItsTable: the routes record never says a
// revision followed before the table of that revision is swapped in,
// though the change's first event does not touch the table (a commit
// adds the generation, then moves the current one): what a node waits for
// before it drains what a switch left behind.
func TestFollowerNeverAheadOfItsTable(t *testing.T) {
	base := openStore(t)
	sw := &swaps{}
	type said struct {
		applied uint64
		table   spec.VersionKey // web.test's, as the routes record was written
	}
	var mu sync.Mutex
	var written []said
	st := &splitChanges{Store: base, onRoutes: func(applied uint64) {
		tab, _ := sw.last()
		mu.Lock()
		defer mu.Unlock()
		written = append(written, said{applied, tab.Domains["web.test"]})
	}}
	if _, err := base.Commit(t.Context(), web("111111111111"), 0); err != nil {
		t.Fatal(err)
	}
	follow(t, st, sw, 0)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	events, err := base.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := base.Commit(t.Context(), web("222222222222"), 1); err != nil {
		t.Fatal(err)
	}
	var rev uint64 // the commit's
	for rev == 0 {
		if ev := <-events; ev.Type == store.EventCurrent && ev.Generation == 2 {
			rev = ev.Revision
		}
	}
	waitFor(t, "the routes record at the commit", func() bool { return routesApplied(t, base) >= rev })
	mu.Lock()
	defer mu.Unlock()
	for _, w := range written {
		if w.applied >= rev && w.table != "web-222222222222" {
			t.Errorf("the routes record said revision %d followed with web.test still on %s (the commit, at %d, moved it)", w.applied, w.table, rev)
		}
	}
}

// TestFollowerReportsAgain (issue 22): a report of the revision followed
// that fails is made again until it goes through, with no further change
// to make it: the engine waits for it before it calls a switch done, and
// the nodes before they drain.
func TestFollowerReportsAgain(t *testing.T) {
	st := &storetest.FailingWrites{Store: openStore(t), Match: func(wr store.Write) bool { return wr.Kind == node.KindRoutes }}
	sw := &swaps{}
	follow(t, st, sw, 0)
	st.Fail.Store(3) // the report of the commit, and its first two retries
	if _, err := st.Commit(t.Context(), web("111111111111"), 0); err != nil {
		t.Fatal(err)
	}
	snap, err := st.Read(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	rev := snap.Revision
	waitFor(t, "the commit's table", func() bool { tab, _ := sw.last(); return tab.Domains["web.test"] == "web-111111111111" })
	waitFor(t, "the routes record at the commit", func() bool { return routesApplied(t, st) >= rev })
}
