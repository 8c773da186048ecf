package deploy

import (
	"context"
	"encoding/json"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// fakeNode is a node in memory: it follows the store as a real node does
// — reads what it is asked to run at every change it has not read yet,
// "runs" it at once, reports each instance running and ready, its Info
// and the revision its "router" follows — with no process at all. It can be told to fail a
// service's start, to stop answering, or to die (its lease revoked).
type fakeNode struct {
	t     *testing.T
	name  string
	st    store.Store
	lease store.Lease

	mu      sync.Mutex
	fail    map[string]string // service → why its start fails
	mute    bool              // reports nothing more
	running map[spec.VersionKey]bool
	asked   []node.Desired // every Desired it read, in order
	results []node.Result  // what each apply did
	cancel  context.CancelFunc
	done    chan struct{}
}

// startFakeNode registers a fake node on st and follows the store until
// the test ends.
func startFakeNode(t *testing.T, st store.Store, name string) *fakeNode {
	t.Helper()
	lease, err := st.Grant(t.Context(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNode{t: t, name: name, st: st, lease: lease, fail: map[string]string{}, running: map[spec.VersionKey]bool{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	snap, err := st.Read(ctx, node.KindDesired)
	if err != nil {
		t.Fatal(err)
	}
	f.apply(ctx, snap)
	go f.follow(ctx, snap.Revision)
	t.Cleanup(func() { cancel(); <-f.done })
	return f
}

func (f *fakeNode) follow(ctx context.Context, rev uint64) {
	defer close(f.done)
	events, err := f.st.Watch(ctx, rev)
	if err != nil {
		return
	}
	for ev := range events {
		if ev.Err != nil {
			return
		}
		switch {
		case ev.Revision <= rev:
			continue // read already, with the rest of its change
		case ev.Type == store.EventCurrent, ev.Kind == node.KindDesired && ev.Key == f.name, ev.Kind == store.KindPause:
		default:
			continue
		}
		snap, err := f.st.Read(ctx, node.KindDesired)
		if err != nil {
			return
		}
		rev = snap.Revision
		f.apply(ctx, snap)
	}
}

// apply "runs" what snap asks of the node and reports it.
func (f *fakeNode) apply(ctx context.Context, snap *store.Snapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mute {
		return
	}
	var d node.Desired
	for _, r := range snap.Records[node.KindDesired] {
		if r.Key == f.name {
			d, _ = node.DecodeDesired(r.Key, r.Value)
		}
	}
	f.asked = append(f.asked, d)
	gens := slices.Collect(func(yield func(*spec.Generation) bool) {
		for _, g := range snap.Currents {
			yield(g)
		}
		for _, n := range d.Keep {
			for _, g := range snap.Generations {
				if g.Number == n {
					yield(g)
				}
			}
		}
		if d.Staged != nil {
			yield(d.Staged)
		}
	})
	want := map[spec.VersionKey]bool{}
	info := node.Result{Applied: snap.Revision}
	for _, g := range gens {
		for name := range g.Versions {
			k := g.Instance(name)
			if d.Placed && !slices.Contains(d.Instances, k) {
				continue // placed on another node
			}
			if why, ok := f.fail[name]; ok && !f.running[k] {
				info.Failures = append(info.Failures, node.Failure{Service: name, Version: g.Versions[name], Reason: why})
				continue
			}
			want[k] = true
		}
	}
	if len(info.Failures) > 0 {
		// As an agent does: a start that fails stops what it started.
		want = map[spec.VersionKey]bool{}
		for k := range f.running {
			want[k] = true
		}
	}
	var writes []store.Write
	for k := range want {
		if !f.running[k] {
			info.Started = append(info.Started, string(k))
			f.running[k] = true
			in, _ := json.Marshal(node.Instance{Node: f.name, Key: k, State: supervisor.StateRunning, Ready: true})
			writes = append(writes, store.Write{Kind: node.KindInstance, Key: node.InstanceKey(f.name, k), Value: in, Rev: store.AnyRevision, Lease: f.lease.ID()})
		}
	}
	for k := range f.running {
		if !want[k] {
			info.Stopped = append(info.Stopped, string(k))
			delete(f.running, k)
			writes = append(writes, store.Write{Kind: node.KindInstance, Key: node.InstanceKey(f.name, k), Rev: store.AnyRevision, Delete: true})
		}
	}
	sort.Strings(info.Started)
	sort.Strings(info.Stopped)
	f.results = append(f.results, info)
	iv, _ := json.Marshal(node.Info{Name: f.name, Applied: snap.Revision, Results: f.results})
	rv, _ := json.Marshal(node.Routes{Applied: snap.Revision})
	writes = append(writes,
		store.Write{Kind: node.KindNode, Key: f.name, Value: iv, Rev: store.AnyRevision, Lease: f.lease.ID()},
		store.Write{Kind: node.KindRoutes, Key: f.name, Value: rv, Rev: store.AnyRevision, Lease: f.lease.ID()})
	if _, err := f.st.Txn(ctx, writes...); err != nil && ctx.Err() == nil {
		f.t.Logf("fake node %s: reporting: %v", f.name, err)
	}
}

// report writes what the node reports of instance k.
func (f *fakeNode) report(in node.Instance) {
	f.t.Helper()
	in.Node = f.name
	v, _ := json.Marshal(in)
	if _, err := f.st.Txn(f.t.Context(), store.Write{Kind: node.KindInstance, Key: node.InstanceKey(f.name, in.Key), Value: v, Rev: store.AnyRevision, Lease: f.lease.ID()}); err != nil {
		f.t.Fatal(err)
	}
}

// failStart makes the node fail every start of service's versions.
func (f *fakeNode) failStart(service, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[service] = why
}

// silence makes the node stop answering: it stays registered but reports
// nothing more.
func (f *fakeNode) silence() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mute = true
}

// die makes the node go as a machine that crashed: it answers no more
// and its lease ends, its records with it.
func (f *fakeNode) die() {
	f.t.Helper()
	f.silence()
	if err := f.lease.Revoke(f.t.Context()); err != nil {
		f.t.Fatal(err)
	}
}

// runs returns what the node runs, sorted.
func (f *fakeNode) runs() []spec.VersionKey {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []spec.VersionKey
	for k := range f.running {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// lastAsked returns the last Desired the node read.
func (f *fakeNode) lastAsked() node.Desired {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.asked) == 0 {
		return node.Desired{}
	}
	return f.asked[len(f.asked)-1]
}

// askedCount returns how many times the node read what it is asked.
func (f *fakeNode) askedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.asked)
}
