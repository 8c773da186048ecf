// Package nodetest assembles a node for the tests of the packages that
// drive one — the engine's, the daemon's — as the daemon does: a
// supervisor and a router, the agent over them with a Sleeper for
// scale to zero, and the followers that make them follow a store.
package nodetest

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"hostel/internal/agent"
	"hostel/internal/idle"
	"hostel/internal/node"
	"hostel/internal/router"
	"hostel/internal/routes"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// Node is one node on a root, following a store.
type Node struct {
	Name    string
	Store   store.Store
	Sup     *supervisor.Supervisor
	Router  *router.Router
	Agent   *agent.Agent
	Sleeper *idle.Sleeper
	// Follower makes the node run what the store asks; Routes has the
	// router follow the committed routes.
	Follower *node.Follower
	Routes   *routes.Follower
	Lease    store.Lease
	// Front serves the router on a local address (Front.URL).
	Front *httptest.Server

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Options configure a Node.
type Options struct {
	// Name is the node's; "" is "node".
	Name string
	// Logf receives what the node does; nil: t.Logf.
	Logf func(format string, args ...any)
	// Preparers are handed to the agent.
	Preparers []agent.Preparer
	// Switched, if set, is told the current generations of every table
	// the router follows.
	Switched func(currents map[string]*spec.Generation)
	// Sup is the supervisor the node runs its versions with; nil: one of
	// its own on root.
	Sup *supervisor.Supervisor
	// RoutesAt is the node's wait for the routers before it drains (see
	// node.Options); nil: every router of the store.
	RoutesAt func(ctx context.Context, rev uint64) error
}

// wakeVia breaks the cycle between the router (made first) and the
// Sleeper.
type wakeVia struct{ s **idle.Sleeper }

func (w wakeVia) Wake(ctx context.Context, key spec.VersionKey) (string, error) {
	return (*w.s).Wake(ctx, key)
}

// New assembles a node on root over st; Start makes it follow. Its
// Sleeper does not watch: a test calls Check.
func New(t testing.TB, st store.Store, root string, opts Options) *Node {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "node"
	}
	logf := opts.Logf
	if logf == nil {
		logf = t.Logf
	}
	n := &Node{Name: opts.Name, Store: st, Sup: opts.Sup}
	if n.Sup == nil {
		n.Sup = supervisor.New(supervisor.Options{Root: root})
	}
	n.Router = router.New(router.Options{Waker: wakeVia{&n.Sleeper}, Logf: logf})
	n.Agent = agent.New(n.Sup, n.Router)
	n.Agent.Use(opts.Preparers...)
	n.Agent.SetAsleep(func(k spec.VersionKey) bool { s, ok := n.Router.Sleeping(k); return ok && s.Asleep })
	n.Sleeper = idle.New(n.Sup, n.Router, func() (map[spec.VersionKey]idle.Policy, bool) {
		if n.Follower == nil {
			return nil, false
		}
		return n.Follower.Sleepers()
	}, logf)
	n.Agent.SetSleeper(n.Sleeper)
	n.Front = httptest.NewServer(n.Router)
	t.Cleanup(func() {
		n.Stop()
		n.Front.Close()
		n.Router.Close()
	})
	lease, err := st.Grant(t.Context(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	n.Lease = lease
	var switched func(router.Table, map[string]*spec.Generation)
	if opts.Switched != nil {
		switched = func(_ router.Table, currents map[string]*spec.Generation) { opts.Switched(currents) }
	}
	n.Routes = routes.NewFollower(st, n.Router, routes.Options{Node: n.Name, Lease: lease.ID(), Logf: logf, Switched: switched})
	routesAt := opts.RoutesAt
	if routesAt == nil {
		routesAt = func(ctx context.Context, rev uint64) error {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return node.RoutesAt(ctx, st, rev)
		}
	}
	n.Follower = node.NewFollower(st, node.Options{Name: n.Name, Lease: lease.ID(), Agent: n.Agent, Procs: n.Sup, Router: n.Router, Logf: logf, RoutesAt: routesAt})
	return n
}

// Start has the node run what the store asks (adopting what a previous
// node on its root left running), routes the router, and follows on in
// the background until Stop.
func (n *Node) Start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	nodeRev, err := n.Follower.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	routesRev, err := n.Routes.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n.wg.Go(func() { n.Follower.Run(ctx, nodeRev) })
	n.wg.Go(func() { n.Routes.Run(ctx, routesRev) })
}

// Stop stops following; what runs keeps running.
func (n *Node) Stop() {
	if n.cancel != nil {
		n.cancel()
		n.cancel = nil
	}
	n.wg.Wait()
}

// Shutdown stops following and every version, topmost first.
func (n *Node) Shutdown() {
	n.Stop()
	n.Agent.StopAll(context.Background())
}
