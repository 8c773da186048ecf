package routes

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"hostel/internal/node"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// Swapper is what a Follower needs of the router.
type Swapper interface {
	Swap(t router.Table) error
}

var _ Swapper = (*router.Router)(nil)

// Follower keeps a router's table following the store: it reads the
// state, swaps in its table, and after every change that moves a current
// generation or a pause, reads and swaps again — one Swap per change,
// never a table the store did not hold. It reports the revision its table
// follows (node.Routes, under the node's lease), which the engine waits
// for before it calls a switch done.
type Follower struct {
	st    store.Store
	node  string
	lease store.LeaseID // guarded by mu: a node that rejoins changes it
	r     Swapper
	logf  func(format string, args ...any)
	// switched, if set, is told every table swapped in, with the currents
	// it was made of, right after the swap (certificates follow it).
	switched func(t router.Table, currents map[string]*spec.Generation)
	// remotes, if set, is given the instances of the other nodes
	// (Options.Remotes).
	remotes Remoter

	// syncMu makes each Sync's read and swap one step: a Sync that
	// starts later swaps a table at least as new.
	syncMu sync.Mutex

	// report writes the routes record, and again until it went through;
	// nil without a node.
	report *node.Reporter

	mu      sync.Mutex
	applied uint64
	changed chan struct{} // closed and replaced when applied moves
}

// Options configure a Follower.
type Options struct {
	// Node names the node whose router this is; Lease is the node's, the
	// routes record lives with it.
	Node  string
	Lease store.LeaseID
	// Switched, if set, is told every table swapped in, with the current
	// generations it was made of, right after the swap: certificate
	// management takes its host set from it (Table.Certificates).
	Switched func(t router.Table, currents map[string]*spec.Generation)
	// Remotes, if set, follows what the other nodes of a cluster run, as
	// they report it (the function Remotes), beside the table: the
	// router of a node that reaches its peers. nil: what other nodes run
	// is not read (one machine, or a node that reaches no other).
	Remotes Remoter
	// Logf receives what goes wrong while following; nil discards it.
	Logf func(format string, args ...any)
}

// NewFollower returns a Follower of st for r; Sync and Run start it.
func NewFollower(st store.Store, r Swapper, opts Options) *Follower {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	f := &Follower{st: st, node: opts.Node, lease: opts.Lease, r: r, logf: logf, switched: opts.Switched, remotes: opts.Remotes, changed: make(chan struct{})}
	if opts.Node != "" {
		f.report = node.NewReporter(st, node.KindRoutes, opts.Node, logf)
	}
	return f
}

// Sync reads the state and swaps its table in, once: what a daemon does
// before it serves, and what one that must know its router follows a
// change it just made may do at any time. With Options.Remotes, what the
// other nodes run is read in the same snapshot and given to the router
// before the table: a table that routes to an instance on another node
// never comes before the router knows where it is. It returns the
// revision it read.
func (f *Follower) Sync(ctx context.Context) (uint64, error) {
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	kinds := []string{store.KindPause}
	if f.remotes != nil {
		kinds = append(kinds, node.KindNode, node.KindInstance)
	}
	snap, err := f.st.Read(ctx, kinds...)
	if err != nil {
		return 0, fmt.Errorf("routes: %w", err)
	}
	if f.remotes != nil {
		f.remotes.SetRemotes(Remotes(f.node, snap.Records[node.KindNode], snap.Records[node.KindInstance]))
	}
	t := Of(snap)
	if err := f.r.Swap(t); err != nil {
		return 0, fmt.Errorf("routes: %w", err)
	}
	if f.switched != nil {
		f.switched(t, snap.Currents)
	}
	f.setApplied(ctx, snap.Revision)
	return snap.Revision, nil
}

// syncRemotes reads what the other nodes run and gives it to the router:
// after a change of the nodes' reports alone, which leaves the table as
// it is. Its two reads are not one snapshot: a report that changes
// between them makes an event of its own, read again after it.
func (f *Follower) syncRemotes(ctx context.Context) error {
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	nodes, err := f.st.Records(ctx, node.KindNode)
	if err != nil {
		return fmt.Errorf("routes: the nodes: %w", err)
	}
	instances, err := f.st.Records(ctx, node.KindInstance)
	if err != nil {
		return fmt.Errorf("routes: the nodes' instances: %w", err)
	}
	f.remotes.SetRemotes(Remotes(f.node, nodes, instances))
	return nil
}

// Run follows the store from revision from (what Sync returned) until
// ctx ends. A watch lost to compaction, or a store that fails for a
// while, is met by reading the state again; a report of the revision
// followed that failed is tried again (node.Reporter).
func (f *Follower) Run(ctx context.Context, from uint64) {
	if f.report != nil {
		var wg sync.WaitGroup
		wg.Go(func() { f.report.Run(ctx) })
		defer wg.Wait()
	}
	for ctx.Err() == nil {
		err := f.follow(ctx, from)
		if ctx.Err() != nil {
			return
		}
		f.logf("routes: %v; reading the state again", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		if from, err = f.Sync(ctx); err != nil {
			f.logf("%v", err)
		}
	}
}

// follow watches from rev and swaps after every change that matters. It
// returns why it stopped.
func (f *Follower) follow(ctx context.Context, rev uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := f.st.Watch(ctx, rev)
	if err != nil {
		return err
	}
	for {
		batch, err := store.Pending(events)
		if err != nil {
			return err
		}
		// One read for every change already there (Pending returns whole
		// changes: a commit adds the generation, then moves the current
		// one, and the first event alone does not touch the table).
		matters, seen, reported := false, uint64(0), false
		for _, ev := range batch {
			matters = Matters(ev) || matters
			seen = max(seen, followed(ev))
			reported = Reported(ev) || reported
		}
		switch {
		case matters:
			if _, err := f.Sync(ctx); err != nil {
				return err
			}
		case reported && f.remotes != nil:
			if err := f.syncRemotes(ctx); err != nil {
				return err
			}
			if seen > 0 {
				f.setApplied(ctx, seen)
			}
		case seen > 0:
			// The table is the same at this revision: say so, so that an
			// engine waiting for the routers to follow a change of its own
			// that does not touch them (a node's Desired) need not wait.
			f.setApplied(ctx, seen)
		}
	}
}

// followed returns ev's revision if the routes report following it, 0 if
// not: what the nodes report (their records and instances, the routes'
// own) is not followed, or every report would make one more.
func followed(ev store.Event) uint64 {
	switch ev.Kind {
	case node.KindNode, node.KindInstance, node.KindRoutes:
		return 0
	}
	return ev.Revision
}

// Matters reports whether ev changes the table: a current generation
// moved (a commit, a switch, an environment dropped) or a pause.
func Matters(ev store.Event) bool {
	switch ev.Type {
	case store.EventCurrent:
		return true
	case store.EventRecord, store.EventRecordDeleted:
		return ev.Kind == store.KindPause
	}
	return false
}

// setApplied records and reports that the table follows revision rev.
func (f *Follower) setApplied(ctx context.Context, rev uint64) {
	f.mu.Lock()
	if rev > f.applied {
		f.applied = rev
		close(f.changed)
		f.changed = make(chan struct{})
	}
	f.mu.Unlock()
	if f.node == "" {
		return
	}
	v, _ := json.Marshal(node.Routes{Applied: rev})
	f.mu.Lock()
	lease := f.lease
	f.mu.Unlock()
	// One that fails is tried again (Reporter): the engine, and the
	// nodes before they drain, wait for it.
	if err := f.report.Report(ctx, v, lease); err != nil {
		f.logf("routes: reporting revision %d: %v", rev, err)
	}
}

// Rejoin makes the follower report under lease, its node's new one once
// the old was lost (its record went with it), and reads and swaps again.
func (f *Follower) Rejoin(ctx context.Context, lease store.LeaseID) error {
	f.mu.Lock()
	f.lease = lease
	f.mu.Unlock()
	_, err := f.Sync(ctx)
	return err
}

// Applied returns the revision the router's table follows.
func (f *Follower) Applied() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// Wait waits until the router's table follows revision rev or later.
func (f *Follower) Wait(ctx context.Context, rev uint64) error {
	for {
		f.mu.Lock()
		applied, changed := f.applied, f.changed
		f.mu.Unlock()
		if applied >= rev {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
