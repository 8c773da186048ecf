package deploy

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"

	"hostel/internal/idle"
	"hostel/internal/node/nodetest"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest/backends"
	"hostel/internal/supervisor"
)

// world is an engine over a real store and one real node following it
// (supervisor, router, agent, Sleeper), wired and started as the daemon
// does: the engine recovers, the node starts (adopting what a previous
// world on the root left running), then the engine resumes its windows.
type world struct {
	t      *testing.T
	engine *Engine
	store  store.Store
	node   *nodetest.Node
	sup    *supervisor.Supervisor
	router *router.Router
	front  *httptest.Server
	cancel context.CancelFunc

	mu    sync.Mutex
	lines []string
	// switched are the production generations the routes switched to,
	// in order.
	switched []uint64
}

func newWorld(t *testing.T, p ...Preparer) *world {
	t.Helper()
	return newWorldAt(t, t.TempDir(), p...)
}

// newSleepyWorld is a world with its node's Sleeper, which does not
// watch: the test calls Check.
func newSleepyWorld(t *testing.T) (*world, *idle.Sleeper) {
	t.Helper()
	w := newWorld(t)
	return w, w.node.Sleeper
}

// newSleepyWorldAt is newSleepyWorld on root.
func newSleepyWorldAt(t *testing.T, root string) (*world, *idle.Sleeper) {
	t.Helper()
	w := newWorldAt(t, root)
	return w, w.node.Sleeper
}

// newWorldAt is a world on root: a second one on the same root is the next
// daemon, once the first let go of it (letGo, shutdown). Its store is the
// one HOSTEL_TEST_STORE chooses, kept under root (backends.OpenRoot): the
// bbolt file, or an etcd member in the test's process that the world's
// stop stops too.
func newWorldAt(t *testing.T, root string, p ...Preparer) *world {
	t.Helper()
	return newWorldOn(t, backends.OpenRoot(t, root), root, p...)
}

// newWorldOn is a world whose engine and node use st, the node's agent
// with preparers p.
func newWorldOn(t *testing.T, st store.Store, root string, p ...Preparer) *world {
	t.Helper()
	w := &world{t: t, store: st}
	n := nodetest.New(t, st, root, nodetest.Options{Logf: w.progress, Switched: w.noteSwitch, Preparers: p})
	w.node, w.sup, w.router, w.front = n, n.Sup, n.Router, n.Front
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.engine = New(st, Options{Node: n.Name, Logf: w.progress})
	if err := w.engine.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.engine.Recover(ctx, w.progress); err != nil {
		t.Fatal(err)
	}
	n.Start(t)
	if err := w.engine.Resume(ctx, w.progress); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if w.cancel == nil {
			return // let go of already
		}
		w.engine.Detach()
		n.Shutdown()
		w.cancel()
		st.Close()
	})
	return w
}

// letGo is the daemon's stop: the engine and the node let go of what runs,
// which keeps running, and the store is closed.
func (w *world) letGo() {
	w.engine.Detach()
	w.node.Stop()
	w.sup.Detach()
	w.router.Close()
	w.cancel()
	w.cancel = nil
	w.store.Close()
}

// shutdown is `hostel shutdown`: every version stops; a window ends
// undecided.
func (w *world) shutdown() {
	w.engine.Detach()
	w.node.Shutdown()
	w.router.Close()
	w.cancel()
	w.cancel = nil
	w.store.Close()
}

// noteSwitch records production's generation each time the routes follow
// a new one.
func (w *world) noteSwitch(currents map[string]*spec.Generation) {
	g := currents[spec.DefaultEnv]
	if g == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := len(w.switched); n == 0 || w.switched[n-1] != g.Number {
		w.switched = append(w.switched, g.Number)
	}
}
