package deploy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest/backends"
	"hostel/internal/supervisor"
)

// TestCallableOldVersion: a deploy that replaces a version of an
// old_versions "callable" service keeps it routed: it sleeps once nothing
// is in flight (node.FirstSleep), a request to its immutable name wakes it —
// with the <NEED>_URL it was built with — and the version it needs, which
// the new generation replaced too, is kept with it; gc of the generation
// that held them unregisters both.
func TestCallableOldVersion(t *testing.T) {
	w, sl := newSleepyWorld(t)
	s1 := mkSpec(map[string]*spec.Service{"upstream": app("up-1"), "api": app("api-1", needs("upstream"))})
	s1.Services["api"].OldVersions = spec.OldVersionsCallable
	w.mustDeploy(s1)
	g1, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	s2 := mkSpec(map[string]*spec.Service{"upstream": app("up-2"), "api": app("api-2", needs("upstream"))})
	s2.Services["api"].OldVersions = spec.OldVersionsCallable
	res := w.mustDeploy(s2)
	if len(res.Stopped) != 0 {
		t.Fatalf("the deploy stopped %v; a callable version and its need stay", res.Stopped)
	}
	api1, up1 := g1.Instance("api"), g1.Instance("upstream")
	if got := w.node.Follower.Kept(); len(got) != 2 || got[0] != api1 || got[1] != up1 {
		t.Fatalf("Kept = %v, want %s and %s", got, api1, up1)
	}

	// Nothing in flight: both sleep at the first checks past node.FirstSleep.
	waitFor(t, 30*time.Second, "the kept versions to sleep", func() bool {
		sl.Check()
		_, a := w.sup.Get(api1)
		_, u := w.sup.Get(up1)
		return !a && !u
	})
	for _, k := range []spec.VersionKey{api1, up1} {
		if st, ok := w.router.Sleeping(k); !ok || !st.Asleep {
			t.Fatalf("%s after it slept: %+v %v, want routed asleep", k, st, ok)
		}
	}
	host := spec.VersionHost("api", g1.Versions["api"], spec.DefaultZone)
	if code, id, body := w.get(host, "/call"); code != 200 || id != "api-1" || body != "up-1" {
		t.Fatalf("GET %s/call: %d %s %q, want api-1 answering through up-1", host, code, id, body)
	}
	// Woken, it sleeps again after node.CallableIdle (its service has no idle).
	pol, ok := w.node.Follower.Sleepers()
	if !ok || pol[api1].Idle != node.CallableIdle {
		t.Errorf("after its wake, %s sleeps after %v, want %v", api1, pol[api1].Idle, node.CallableIdle)
	}

	gc, err := w.engine.GC(t.Context(), 1, nil, w.progress)
	if err != nil {
		t.Fatal(err)
	}
	if len(gc.Removed) != 1 || gc.Removed[0] != g1.Number || len(gc.Stopped) != 2 {
		t.Fatalf("gc removed %v and stopped %v, want generation %d and both kept versions", gc.Removed, gc.Stopped, g1.Number)
	}
	for _, k := range []spec.VersionKey{api1, up1} {
		if _, ok := w.router.Sleeping(k); ok {
			t.Errorf("%s: still routed after gc", k)
		}
		if _, ok := w.sup.Get(k); ok {
			t.Errorf("%s: a process after gc", k)
		}
	}
	if code, _, _ := w.get(host, "/"); code == 200 {
		t.Errorf("GET %s after gc: %d", host, code)
	}
	if got := w.node.Follower.Kept(); len(got) != 0 {
		t.Errorf("Kept after gc = %v", got)
	}
}

// TestGCKeepsWindowPrevious: gc never drops the generation an open
// confirm window would switch back to.
func TestGCKeepsWindowPrevious(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"api": app("api-1")}))
	w.mustDeploy(mkSpec(map[string]*spec.Service{"api": app("api-2")}))
	g2, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	deployed := w.deployInWindow(mkSpec(map[string]*spec.Service{"api": app("api-3")}), time.Hour)
	gc, err := w.engine.GC(t.Context(), 1, nil, w.progress)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range gc.Removed {
		if n == g2.Number {
			t.Errorf("gc dropped generation %d, which the open window switches back to", n)
		}
	}
	if _, err := w.store.Get(t.Context(), g2.Number); err != nil {
		t.Errorf("generation %d after gc: %v", g2.Number, err)
	}
	w.deploy(mkSpec(map[string]*spec.Service{"api": app("api-4")}), 0) // ends the window
	<-deployed
}

// blockingPreparer holds the preparation of one service's versions until
// released, saying when one begins.
type blockingPreparer struct {
	service string
	begun   chan struct{}
	release chan struct{}
}

func (p *blockingPreparer) Prepare(_ context.Context, _ *spec.Generation, service string, _ *supervisor.Config) error {
	if service == p.service {
		p.begun <- struct{}{}
		<-p.release
	}
	return nil
}

// TestGCWaitsForDeploy: gc runs under the engine's lock: one asked for
// while a deploy starts its versions does nothing until the deploy is
// done, then releases (Nix roots) knowing the generation that deploy
// committed, so it never unpins a version starting.
func TestGCWaitsForDeploy(t *testing.T) {
	p := &blockingPreparer{service: "web", begun: make(chan struct{}, 1), release: make(chan struct{})}
	w := newWorld(t, p)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"api": app("api-1")}))
	deployed := make(chan error, 1)
	go func() {
		_, err := w.deploy(mkSpec(map[string]*spec.Service{"api": app("api-1"), "web": app("web-1")}), 0)
		deployed <- err
	}()
	<-p.begun
	released := make(chan []uint64, 1)
	gcDone := make(chan error, 1)
	gcCalled := make(chan struct{})
	go func() {
		close(gcCalled)
		_, err := w.engine.GC(context.Background(), 1, func(kept []*spec.Generation) ([]string, error) {
			var ns []uint64
			for _, g := range kept {
				ns = append(ns, g.Number)
			}
			released <- ns
			return nil, nil
		}, w.progress)
		gcDone <- err
	}()
	<-gcCalled
	// While the deploy is held in its preparation, gc must not get
	// through: a gc that took no lock releases within this wait (a gc
	// that waits never fails here, however slow the machine).
	select {
	case got := <-released:
		close(p.release) // let the deploy end, for the cleanup
		t.Fatalf("gc released (kept %v) while a deploy was starting its versions", got)
	case <-time.After(300 * time.Millisecond):
	}
	close(p.release)
	if err := <-deployed; err != nil {
		t.Fatal(err)
	}
	if err := <-gcDone; err != nil {
		t.Fatal(err)
	}
	cur, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	if got := <-released; len(got) != 1 || got[0] != cur.Number {
		t.Errorf("gc released with generations %v kept, want only %d, which the deploy committed", got, cur.Number)
	}
}

// replaceCallable deploys api-1, callable, then api-2, and returns the
// first generation: its api is kept asleep.
func (w *world) replaceCallable(t *testing.T) *spec.Generation {
	t.Helper()
	var g1 *spec.Generation
	for i, id := range []string{"api-1", "api-2"} {
		s := mkSpec(map[string]*spec.Service{"api": app(id)})
		s.Services["api"].OldVersions = spec.OldVersionsCallable
		w.mustDeploy(s)
		if i == 0 {
			g1, _ = w.store.Current(t.Context(), spec.DefaultEnv)
		}
	}
	return g1
}

// TestRollbackWakesCallable: a rollback to a generation whose version of
// a service without idle was kept asleep (callable) wakes it: current
// again, it runs without waiting for a request.
func TestRollbackWakesCallable(t *testing.T) {
	w, sl := newSleepyWorld(t)
	g1 := w.replaceCallable(t)
	api1 := g1.Instance("api")
	waitFor(t, 30*time.Second, "the kept version to sleep", func() bool {
		sl.Check()
		_, awake := w.sup.Get(api1)
		return !awake
	})
	if _, err := w.engine.Rollback(t.Context(), "", g1.Number, w.progress); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the rolled-back version to run", func() bool {
		_, awake := w.sup.Get(api1)
		return awake
	})
	if got := w.node.Follower.Kept(); len(got) != 1 || got[0] == api1 {
		t.Errorf("Kept after the rollback = %v, want the replaced api-2 only", got)
	}
}

// listCounter is a store that counts List calls.
type listCounter struct {
	store.Store
	mu    sync.Mutex
	lists int
}

func (s *listCounter) List(ctx context.Context) ([]*spec.Generation, error) {
	s.mu.Lock()
	s.lists++
	s.mu.Unlock()
	return s.Store.List(ctx)
}

func (s *listCounter) Read(ctx context.Context, kinds ...string) (*store.Snapshot, error) {
	s.mu.Lock()
	s.lists++
	s.mu.Unlock()
	return s.Store.Read(ctx, kinds...)
}

func (s *listCounter) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lists
}

// TestSleepersKeptPolicy: Sleepers, run every half second, gives a
// replaced callable version that still runs node.FirstSleep, from what the
// last decision found, without reading the store.
func TestSleepersKeptPolicy(t *testing.T) {
	root := t.TempDir()
	counted := &listCounter{Store: backends.OpenRoot(t, root)}
	w := newWorldOn(t, counted, root)
	g1 := w.replaceCallable(t)
	before := counted.count()
	pol, ok := w.node.Follower.Sleepers()
	if !ok {
		t.Fatal("Sleepers: busy after the deploy")
	}
	if p := pol[g1.Instance("api")]; p.Idle != node.FirstSleep {
		t.Errorf("the replaced version's policy %+v, want it to sleep after %v", p, node.FirstSleep)
	}
	if n := counted.count() - before; n != 0 {
		t.Errorf("Sleepers read the store %d times", n)
	}
}

// TestKeptWokenSoonSleepsAfterIdle: a replaced callable version woken
// right after its first sleep — before the sleeper looked at it asleep —
// sleeps again after node.CallableIdle, not node.FirstSleep.
func TestKeptWokenSoonSleepsAfterIdle(t *testing.T) {
	w, sl := newSleepyWorld(t)
	g1 := w.replaceCallable(t)
	api1 := g1.Instance("api")
	waitFor(t, 30*time.Second, "the kept version's first sleep", func() bool {
		sl.Check() // puts it to sleep, the router's gate first
		st, _ := w.router.Sleeping(api1)
		return st.Asleep
	})
	host := spec.VersionHost("api", g1.Versions["api"], spec.DefaultZone)
	if code, id, _ := w.get(host, "/"); code != 200 || id != "api-1" {
		t.Fatalf("GET %s: %d %s, want api-1 woken", host, code, id)
	}
	pol, ok := w.node.Follower.Sleepers()
	if !ok || pol[api1].Idle != node.CallableIdle {
		t.Errorf("woken right after its first sleep, %s sleeps after %v, want %v", api1, pol[api1].Idle, node.CallableIdle)
	}
}

// TestExclusiveRefusedWhileOldVersionKept: a deploy that makes a service
// exclusive while an old version of it is kept callable (a kept version
// of a callable service needs it) is an input error and changes nothing;
// once gc dropped the generation that kept it, the same deploy goes.
func TestExclusiveRefusedWhileOldVersionKept(t *testing.T) {
	w, _ := newSleepyWorld(t)
	for _, id := range []string{"1", "2"} {
		s := mkSpec(map[string]*spec.Service{"db": app("db-" + id), "api": app("api-"+id, needs("db"))})
		s.Services["api"].OldVersions = spec.OldVersionsCallable
		w.mustDeploy(s)
	}
	before := w.current()
	s3 := mkSpec(map[string]*spec.Service{"db": app("db-3"), "api": app("api-3", needs("db"))})
	s3.Services["db"].Exclusive = true
	_, err := w.deploy(s3, 0)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `service "db": exclusive`) {
		t.Fatalf("deploy making db exclusive with db-1 kept: %v, want an input error naming db's exclusive", err)
	}
	if got := w.current(); got != before {
		t.Errorf("current generation %d after the refused deploy, want %d", got, before)
	}
	if _, err := w.engine.GC(t.Context(), 1, nil, w.progress); err != nil {
		t.Fatal(err)
	}
	w.mustDeploy(s3)
}

// TestRestartAsleepAndPaused: hostel restart of a service that is asleep
// and paused by hand is refused at once — a wake would wait for the
// resume with the engine's lock held — and the service stays asleep.
func TestRestartAsleepAndPaused(t *testing.T) {
	w, sl := newSleepyWorld(t)
	s := mkSpec(map[string]*spec.Service{"api": app("api-1")})
	s.Services["api"].Idle = spec.Duration(spec.MinIdle)
	w.mustDeploy(s)
	g, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	key := g.Instance("api")
	waitFor(t, 30*time.Second, "api to sleep", func() bool {
		sl.Check()
		st, _ := w.router.Sleeping(key)
		return st.Asleep
	})
	if err := w.engine.PauseService(t.Context(), "api", time.Minute); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := w.engine.Restart(ctx, "api"); !errors.Is(err, ErrInvalid) {
		t.Errorf("restart of the asleep, paused api: %v, want an input error", err)
	}
	if st, _ := w.router.Sleeping(key); !st.Asleep || st.Waking || st.Wakes != 0 {
		t.Errorf("%s after the refused restart: %+v, want asleep, never woken", key, st)
	}
}
