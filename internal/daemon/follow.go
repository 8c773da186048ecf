package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"hostel/internal/agent"
	"hostel/internal/deploy"
	"hostel/internal/node"
	"hostel/internal/routes"
	"hostel/internal/store"
)

// The daemon is one node: it holds a lease in the store, leads the engine
// (an election every daemon sharing the store campaigns in; on one machine
// it wins at once), and follows the store with its agent (node.Follower)
// and its router (routes.Follower). The engine only writes.

// NodeTTL is how long the node's records (node, instances, routes) and
// the engine's leadership outlive the daemon's last renewal.
const NodeTTL = 10 * time.Second

// engineElection is the election the engine's leadership is won in.
const engineElection = "engine"

// routesWait bounds how long a node waits for every router to follow a
// switch before it drains what the switch left behind.
const routesWait = 10 * time.Second

// nodeName is the name the daemon's node goes by: the machine's host
// name.
func nodeName() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// follower is what runs the node: the lease, the followers, and the
// context they run in.
type follower struct {
	lease  store.Lease
	nodes  *node.Follower
	routes *routes.Follower
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startNode takes the node's lease, leads the engine, has the node run
// what the store asks (adopting what a previous daemon left running) and
// the router follow the routes: what a daemon does before it serves. The
// followers then run until stopNode.
func (d *Daemon) startNode(ctx context.Context, a *agent.Agent) error {
	name := nodeName()
	// What a previous incarnation of this node left — it died, or was
	// killed — holds its lease until the TTL ends: its records and its
	// leadership of the engine go now, not NodeTTL later.
	if r, err := d.store.Record(ctx, node.KindNode, name); err == nil && r.Lease != 0 {
		if err := d.store.Revoke(ctx, r.Lease); err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %s: ending the lease it held before: %w", name, err)
		}
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("node %s: %w", name, err)
	}
	lease, err := d.store.Grant(ctx, NodeTTL)
	if err != nil {
		return fmt.Errorf("node %s: lease: %w", name, err)
	}
	f := &follower{lease: lease}
	d.follower = f
	lctx, cancel := context.WithTimeout(ctx, 2*NodeTTL)
	lead, err := d.store.Campaign(lctx, engineElection, lease)
	cancel()
	if err != nil {
		return fmt.Errorf("node %s: leading the engine: %w", name, err)
	}
	d.engine = deploy.New(d.store, deploy.Options{Node: name, Logf: func(f string, a ...any) { d.logf(f, a...) }})
	d.engine.SetWriter(d.store.Fenced(lead))

	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = stop
	f.routes = routes.NewFollower(d.store, d.router, routes.Options{Node: name, Lease: lease.ID(), Switched: d.certsFollow, Logf: d.logf})
	f.nodes = node.NewFollower(d.store, node.Options{Name: name, Lease: lease.ID(), Agent: a, Procs: d.sup, Router: d.router, Logf: d.logf,
		RoutesAt: func(ctx context.Context, rev uint64) error {
			ctx, cancel := context.WithTimeout(ctx, routesWait)
			defer cancel()
			return node.RoutesAt(ctx, d.store, rev)
		}})
	if err := d.engine.Start(runCtx); err != nil {
		return err
	}
	progress := func(f string, a ...any) { d.logf(f, a...) }
	if err := d.engine.Recover(ctx, progress); err != nil {
		return err
	}
	nodeRev, err := f.nodes.Start(ctx)
	if err != nil {
		return err
	}
	routesRev, err := f.routes.Sync(ctx)
	if err != nil {
		return err
	}
	f.wg.Go(func() { f.nodes.Run(runCtx, nodeRev) })
	f.wg.Go(func() { f.routes.Run(runCtx, routesRev) })
	f.wg.Go(func() { d.watchLease(runCtx, lease) })
	return d.engine.Resume(ctx, progress)
}

// watchLease says so when the node's lease is lost (the store was out of
// reach for longer than NodeTTL): its reports are gone from the store and
// the engine no longer leads; the daemon must be restarted.
func (d *Daemon) watchLease(ctx context.Context, l store.Lease) {
	select {
	case <-ctx.Done():
	case <-l.Done():
		d.logf("node %s: its lease in the store is lost: this daemon no longer leads the engine and its reports are gone; restart it", nodeName())
	}
}

// stopNode stops following the store; what runs keeps running.
func (d *Daemon) stopNode() {
	f := d.follower
	if f == nil {
		return
	}
	f.cancel()
	f.wg.Wait()
	d.follower = nil
}
