package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"hostel/internal/agent"
	"hostel/internal/api"
	"hostel/internal/deploy"
	"hostel/internal/failpoint"
	"hostel/internal/node"
	"hostel/internal/place"
	"hostel/internal/router"
	"hostel/internal/routes"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// The daemon is one node: it holds a lease in the store, leads the engine
// (an election every daemon sharing the store campaigns in; on one machine
// it wins at once), and follows the store with its agent (node.Follower)
// and its router (routes.Follower). The engine only writes.

// NodeTTL is how long the node's records (node, instances, routes) and
// the engine's leadership outlive the daemon's last renewal: how long a
// node that died is taken for alive — its instances fail over once it
// ends (deploy.Engine.FailOver), the target being 10 s from the death,
// and etcd renews every lease for a whole TTL and an election timeout
// when its own leader changes (the member that died may have led it:
// 7–7.5 s then, etcd.StartClusterMember) — and how long a daemon may
// stall before it loses its node (renewed every third of it). Not
// shorter: a node stops its exclusive instances fenceMargin before its
// lease may end, and when the raft's leader dies every node's renewals
// wait for the election (up to 1 s, and a renewal sent to the dead
// leader its 1 s and a retry): a renewal due as the leader died goes
// through up to ~2.3 s late, within 4.5 s of the last at 6 s, but not
// always within 3.5 s at 5 s — a node no fault touched would stop them.
const NodeTTL = 6 * time.Second

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

// CheckNodeName says what is wrong with a node's name; nil if nothing.
func CheckNodeName(name string) error { return spec.CheckNodeName(name) }

// follower is what runs the node: the lease, the followers, and the
// context they run in.
type follower struct {
	// mu guards lease and rejoined: a node that lost its lease takes
	// another (watchLease).
	mu       sync.Mutex
	lease    store.Lease
	rejoined chan struct{} // closed when lease is replaced
	nodes    *node.Follower
	routes   *routes.Follower
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// startNode takes the node's lease, leads the engine, has the node run
// what the store asks (adopting what a previous daemon left running) and
// the router follow the routes: what a daemon does before it serves. The
// followers then run until stopNode.
func (d *Daemon) startNode(ctx context.Context, a *agent.Agent) error {
	name := d.nodeName()
	// What a previous incarnation of this node left — it died, or was
	// killed — holds its lease until the TTL ends: its records and its
	// leadership of the engine go now, not NodeTTL later.
	// Its node's record names that lease once it reported; a daemon
	// killed before (in its start) left only its kindNodeLease record.
	ended := map[store.LeaseID]bool{}
	for _, kind := range []string{node.KindNode, kindNodeLease} {
		r, err := d.store.Record(ctx, kind, name)
		if errors.Is(err, store.ErrNotFound) || err == nil && (r.Lease == 0 || ended[r.Lease]) {
			continue
		} else if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		err = d.store.Revoke(ctx, r.Lease)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %s: ending the lease it held before: %w", name, err)
		}
		ended[r.Lease] = true
		if err == nil {
			d.logf("node %s: ended the lease its previous daemon left (it was killed)", name)
		}
	}
	lease, err := d.store.Grant(ctx, NodeTTL)
	if err != nil {
		return fmt.Errorf("node %s: lease: %w", name, err)
	}
	// Recorded before it holds anything (a candidacy for the engine), for
	// the next daemon to end should this one die before its node reports.
	if _, err := d.store.Txn(ctx, store.Write{Kind: kindNodeLease, Key: name, Value: []byte(name), Rev: store.AnyRevision, Lease: lease.ID()}); err != nil {
		return fmt.Errorf("node %s: recording its lease: %w", name, err)
	}
	f := &follower{lease: lease, rejoined: make(chan struct{})}
	d.follower = f
	d.setFenceLease(lease)
	d.engine = deploy.New(d.store, deploy.Options{Node: name, Logf: func(f string, a ...any) { d.logf(f, a...) }})
	d.engine.Standby()

	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = stop
	ropts := routes.Options{Node: name, Lease: lease.ID(), Logf: d.logf,
		Switched: func(t router.Table, currents map[string]*spec.Generation) {
			d.noteDrain(currents)
			d.certsFollow(t, currents)
		}}
	if d.peerLn != nil {
		// The router reaches the other nodes: it follows what they run.
		ropts.Remotes = d.router
	}
	f.routes = routes.NewFollower(d.store, d.router, ropts)
	f.nodes = node.NewFollower(d.store, node.Options{Name: name, Self: d.self(), Lease: lease.ID(), Agent: a, Procs: d.sup, Router: d.router, Logf: d.logf,
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
		failpoint.Hit("node-after-campaign")
		w := d.store.Fenced(lead)
		d.engine.SetWriter(w)
		d.sayLeads(ctx, w, name, lease)
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
	f.wg.Go(func() { d.watchLease(runCtx, name, f) })
	if lead != nil {
		if err := d.engine.Resume(ctx, progress); err != nil {
			return err
		}
	}
	f.wg.Go(func() { d.leadLoop(runCtx, name, f, lead) })
	return nil
}

// leadWait is how long a daemon's start waits to lead the engine before
// it goes on as a standby.
const leadWait = 2 * time.Second

// campaignAgain is how long a daemon whose campaign the store cut short
// waits before it campaigns again.
const campaignAgain = time.Second

// leadLoop keeps the engine led by this daemon when it can: while
// another leads, it campaigns; once it leads (lead, if not nil, was won
// at the start), it waits for the leadership to end, makes the engine a
// standby again, and campaigns again.
func (d *Daemon) leadLoop(ctx context.Context, name string, f *follower, lead store.Leadership) {
	progress := func(f string, a ...any) { d.logf(f, a...) }
	for ctx.Err() == nil {
		if lead == nil {
			lease, rejoined := f.currentLease()
			var err error
			if lead, err = d.store.Campaign(ctx, engineElection, lease); err != nil {
				if ctx.Err() != nil {
					return
				}
				d.logf("node %s: campaigning to lead the engine: %v", name, err)
				if errors.Is(err, store.ErrNotLeader) {
					// The lease ended: campaign again once the node
					// rejoined with another (watchLease).
					select {
					case <-ctx.Done():
						return
					case <-rejoined:
					}
					continue
				}
				// The store did not answer (a member lost, a leader
				// elected among them): campaign again.
				select {
				case <-ctx.Done():
					return
				case <-time.After(campaignAgain):
				}
				continue
			}
			w := d.store.Fenced(lead)
			d.engine.SetWriter(w)
			d.sayLeads(ctx, w, name, lease)
			d.logf("node %s: leads the engine now", name)
			if err := d.engine.Recover(ctx, progress); err != nil {
				d.logf("node %s: %v", name, err)
			}
			if err := d.engine.Resume(ctx, progress); err != nil {
				d.logf("node %s: %v", name, err)
			}
		}
		// While it leads, the engine places anew what the nodes that go
		// ran.
		fctx, stopFailOver := context.WithCancel(ctx)
		failedOver := make(chan struct{})
		go func() { defer close(failedOver); d.engine.FailOver(fctx) }()
		select {
		case <-ctx.Done():
			stopFailOver()
			<-failedOver
			return
		case <-lead.Done():
			stopFailOver() // its writes are refused from now on: no need to wait
			d.engine.Detach()
			d.engine.Standby()
			d.logf("node %s: no longer leads the engine", name)
			lead = nil
		}
	}
}

// currentLease returns the node's lease, and a channel closed once it is
// replaced.
func (f *follower) currentLease() (store.Lease, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lease, f.rejoined
}

// rejoinAgain is how long a node that could not take a new lease waits
// before it tries again.
const rejoinAgain = time.Second

// watchLease rejoins when the node's lease is lost — the store was out of
// reach, or the daemon stalled, for longer than NodeTTL: its reports are
// gone from the store, its engine no longer leads, and the leader may
// have placed what it ran on other nodes meanwhile. The node takes a new
// lease, reconciles to what the store asks of it now (stopping what is no
// longer placed here), reports everything anew under that lease, and
// campaigns again (leadLoop).
func (d *Daemon) watchLease(ctx context.Context, name string, f *follower) {
	for {
		l, _ := f.currentLease()
		select {
		case <-ctx.Done():
			return
		case <-l.Done():
		}
		d.logf("node %s: its lease in the store is lost (the store out of reach, or this daemon stalled, for over %s): its reports are gone and what it ran may run elsewhere now; it rejoins", name, NodeTTL)
		for ctx.Err() == nil {
			err := d.rejoin(ctx, f)
			if err == nil {
				d.logf("node %s: rejoined", name)
				break
			}
			d.logf("node %s: rejoining: %v (trying again in %s)", name, err, rejoinAgain)
			select {
			case <-ctx.Done():
				return
			case <-time.After(rejoinAgain):
			}
		}
	}
}

// rejoin takes a new lease for the node and has its followers report
// under it.
func (d *Daemon) rejoin(ctx context.Context, f *follower) error {
	l, err := d.store.Grant(ctx, NodeTTL)
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	// A lease not used is given back, even when ctx ended (the daemon
	// stops) — but for storeWait at most: a store without a quorum (the
	// other members stopped first) would hold the stop forever, and the
	// lease ends with its TTL anyway.
	giveBack := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeWait)
		defer cancel()
		l.Revoke(rctx)
	}
	if err := f.nodes.Rejoin(ctx, l.ID()); err != nil {
		giveBack()
		return err
	}
	if err := f.routes.Rejoin(ctx, l.ID()); err != nil {
		giveBack()
		return err
	}
	// Reconciled under l: what moved away meanwhile is stopped, and what
	// stays placed here may run again under it.
	d.setFenceLease(l)
	f.mu.Lock()
	f.lease = l
	close(f.rejoined)
	f.rejoined = make(chan struct{})
	f.mu.Unlock()
	return nil
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

// self is what the node reports of itself beside what it runs: the
// address the other nodes reach it at (--advertise), its labels and
// capacity (the machine's unless --capacity says).
func (d *Daemon) self() node.Info {
	c := d.opts.Capacity
	if c.CPU == 0 {
		c.CPU = float64(runtime.NumCPU())
	}
	if c.Memory == 0 {
		c.Memory = machineMemory()
	}
	return node.Info{Addr: d.peerAddr, Labels: d.opts.Labels, CPU: c.CPU, Memory: c.Memory}
}

// Capacity is what a node gives to instances' requests.
type Capacity struct {
	CPU    float64 // cores; 0: the machine's
	Memory int64   // bytes; 0: the machine's
}

// ParseCapacity reads --capacity: cpu=N,memory=SIZE, either or both.
func ParseCapacity(s string) (Capacity, error) {
	var c Capacity
	if s == "" {
		return c, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			return c, fmt.Errorf("%q: want cpu=N,memory=SIZE", kv)
		case k == "cpu":
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n <= 0 || n > 1e6 {
				return c, fmt.Errorf("cpu=%s: want a number of cores above 0", v)
			}
			c.CPU = n
		case k == "memory":
			n, err := spec.ParseMemory(v)
			if err != nil || n <= 0 {
				return c, fmt.Errorf("memory=%s: want a size such as 16G", v)
			}
			c.Memory = n
		default:
			return c, fmt.Errorf("%q: want cpu or memory", k)
		}
	}
	return c, nil
}

// ParseLabels reads --labels: k=v,k=v.
func ParseLabels(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want k=v", kv)
		}
		if err := spec.CheckLabel(k, v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

// machineMemory is the machine's memory in bytes (MemTotal); 0 if it
// cannot be read.
func machineMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n * 1024
			}
		}
	}
	return 0
}

// kindNodeLease is the record (key: the node's name) that holds, bound to
// it, the lease a daemon took for its node, written as soon as it has
// it. A daemon killed in its start, its lease a candidate for the engine
// and its node's record not written yet, would otherwise hold the engine
// a NodeTTL past its death: the next daemon of the node ends that lease at
// once, as the one its node's record names.
const kindNodeLease = "node-lease"

// kindLeader is the record (key "engine") naming the node whose daemon
// leads the engine, under its lease: `hostel nodes` reads it.
const kindLeader = "leader"

// sayLeads records that node name leads the engine, through w, the
// store fenced on that leadership — again until it is recorded, while it
// leads: the other nodes pass requests to the node the record names, and
// without it answer that none leads (a write that went to a member frozen
// since fails, and the next goes to another).
func (d *Daemon) sayLeads(ctx context.Context, w store.Store, name string, lease store.Lease) {
	for {
		_, err := w.Txn(ctx, store.Write{Kind: kindLeader, Key: "engine", Value: []byte(name), Rev: store.AnyRevision, Lease: lease.ID()})
		if err == nil {
			return
		}
		d.logf("node %s: recording that it leads the engine: %v", name, err)
		if errors.Is(err, store.ErrNotLeader) || ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-lease.Done():
			return
		case <-time.After(campaignAgain):
		}
	}
}

// Nodes implements api.NodesDaemon: every node that reports itself, with
// what is placed on it and what that requests.
func (d *Daemon) Nodes(ctx context.Context) (*api.Nodes, error) {
	snap, err := d.store.Read(ctx, node.KindNode, node.KindDesired, node.KindUnschedulable, kindLeader)
	if err != nil {
		return nil, err
	}
	leader := ""
	for _, r := range snap.Records[kindLeader] {
		leader = string(r.Value)
	}
	desired := map[string]node.Desired{}
	for _, r := range snap.Records[node.KindDesired] {
		if dd, err := node.DecodeDesired(r.Key, r.Value); err == nil {
			desired[r.Key] = dd
		}
	}
	// What each instance requests, from the generations that hold it.
	requests := map[spec.VersionKey]place.Instance{}
	gens := slices.Clone(snap.Generations)
	for _, dd := range desired {
		if dd.Staged != nil {
			gens = append(gens, dd.Staged)
		}
	}
	for _, g := range gens {
		for name := range g.Versions {
			if in, err := place.InstanceOf(g, name); err == nil {
				requests[in.Key] = in
			}
		}
	}
	out := &api.Nodes{Nodes: []api.Node{}}
	now := time.Now()
	infos := node.Nodes(snap)
	for _, name := range slices.Sorted(maps.Keys(infos)) {
		info := infos[name]
		n := api.Node{Name: name, Address: info.Addr, Labels: info.Labels, Capacity: api.Resources{CPU: info.CPU, Memory: info.Memory},
			Drained: info.Unschedulable, Up: info.Up, LeaseAgeSeconds: now.Sub(info.Up).Round(time.Second).Seconds(),
			Leader: name == leader, Instances: []string{}}
		dd := desired[name]
		for _, k := range dd.Instances {
			n.Instances = append(n.Instances, string(k))
			in := requests[k]
			n.Use.CPU += in.CPU
			n.Use.Memory += in.Memory
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}

var _ api.NodesDaemon = (*Daemon)(nil)

// Drain implements api.DrainDaemon: node name takes no instance until
// Undrain, and those it runs move to other nodes.
func (d *Daemon) Drain(ctx context.Context, name string) (*api.Drain, error) {
	r, err := d.engine.Drain(ctx, name, func(f string, a ...any) { d.logf("drain %s: "+f, append([]any{name}, a...)...) })
	if err != nil {
		return nil, apiError(err)
	}
	out := &api.Drain{Node: name, Moved: []api.Move{}, Stopped: r.Stopped}
	for _, m := range r.Moved {
		out.Moved = append(out.Moved, api.Move{Instance: string(m.Instance), From: m.From, To: m.To})
	}
	return out, nil
}

// Undrain implements api.DrainDaemon.
func (d *Daemon) Undrain(ctx context.Context, name string) (*api.Undrain, error) {
	was, err := d.engine.Undrain(ctx, name)
	if err != nil {
		return nil, apiError(err)
	}
	return &api.Undrain{Node: name, WasDrained: was}, nil
}

var _ api.DrainDaemon = (*Daemon)(nil)

// nodeName is the name of the daemon's node.
func (d *Daemon) nodeName() string {
	if d.opts.Node != "" {
		return d.opts.Node
	}
	return nodeName()
}
