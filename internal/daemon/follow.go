package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
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

// nodeName is the name the daemon's node goes by by default: the
// machine's host name, its first label if that is not a node name.
func nodeName() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	if CheckNodeName(h) != nil {
		h, _, _ = strings.Cut(h, ".")
	}
	if CheckNodeName(h) != nil {
		return "localhost"
	}
	return h
}

// nodeNameRE is what a node's name may be: it is a key of the store's
// records and a host name's label.
var nodeNameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?$`)

// CheckNodeName says what is wrong with a node's name; nil if nothing.
func CheckNodeName(name string) error {
	if !nodeNameRE.MatchString(name) {
		return fmt.Errorf("%q is not a node name: want letters, digits, '.', '_' and '-', 63 at most, a letter or digit at each end", name)
	}
	return nil
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
	name := d.opts.Node
	if name == "" {
		name = nodeName()
	}
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
	d.engine = deploy.New(d.store, deploy.Options{Node: name, Logf: func(f string, a ...any) { d.logf(f, a...) }})
	d.engine.Standby()

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
	// Lead the engine if no other daemon sharing the store does — at once
	// on one machine — before the node starts: what a deploy that died
	// left staged is taken back first. Else the engine is a standby, and
	// campaigns on in the background.
	lctx, cancel := context.WithTimeout(ctx, leadWait)
	lead, err := d.store.Campaign(lctx, engineElection, lease)
	cancel()
	switch {
	case err == nil:
		d.engine.SetWriter(d.store.Fenced(lead))
		if err := d.engine.Recover(ctx, progress); err != nil {
			return err
		}
	case errors.Is(err, context.DeadlineExceeded):
		d.logf("node %s: another daemon sharing the store leads the engine: this one follows, and takes over if it goes", name)
		lead = nil
	default:
		return fmt.Errorf("node %s: leading the engine: %w", name, err)
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
	if lead != nil {
		if err := d.engine.Resume(ctx, progress); err != nil {
			return err
		}
	}
	f.wg.Go(func() { d.leadLoop(runCtx, name, lease, lead) })
	return nil
}

// leadWait is how long a daemon's start waits to lead the engine before
// it goes on as a standby.
const leadWait = 2 * time.Second

// leadLoop keeps the engine led by this daemon when it can: while
// another leads, it campaigns; once it leads (lead, if not nil, was won
// at the start), it waits for the leadership to end, makes the engine a
// standby again, and campaigns again.
func (d *Daemon) leadLoop(ctx context.Context, name string, lease store.Lease, lead store.Leadership) {
	progress := func(f string, a ...any) { d.logf(f, a...) }
	for ctx.Err() == nil {
		if lead == nil {
			var err error
			if lead, err = d.store.Campaign(ctx, engineElection, lease); err != nil {
				if ctx.Err() == nil {
					d.logf("node %s: campaigning to lead the engine: %v", name, err)
				}
				return
			}
			d.engine.SetWriter(d.store.Fenced(lead))
			d.logf("node %s: leads the engine now", name)
			if err := d.engine.Recover(ctx, progress); err != nil {
				d.logf("node %s: %v", name, err)
			}
			if err := d.engine.Resume(ctx, progress); err != nil {
				d.logf("node %s: %v", name, err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-lead.Done():
			d.engine.Detach()
			d.engine.Standby()
			d.logf("node %s: no longer leads the engine", name)
			lead = nil
		}
	}
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
