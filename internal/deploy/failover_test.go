package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest"
)

// onNode returns the fake node named name.
func (f *fleet) onNode(name string) *fakeNode {
	f.t.Helper()
	for _, n := range f.nodes {
		if n.name == name {
			return n
		}
	}
	f.t.Fatalf("no fake node %s", name)
	return nil
}

// runner returns the nodes of f that run k, by name.
func (f *fleet) runners(k spec.VersionKey) []string {
	var out []string
	for _, n := range f.nodes {
		if slices.Contains(n.runs(), k) {
			out = append(out, n.name)
		}
	}
	return out
}

// desiredOf returns what the store asks node name to run.
func (f *fleet) desiredOf(name string) node.Desired {
	f.t.Helper()
	r, err := f.st.Record(f.t.Context(), node.KindDesired, name)
	if err != nil {
		f.t.Fatal(err)
	}
	d, err := node.DecodeDesired(name, r.Value)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// comeBack makes a node that died come back as its daemon's restart
// does: a new lease, what it still runs, and its Desired read again.
func (n *fakeNode) comeBack() {
	n.t.Helper()
	lease, err := n.st.Grant(n.t.Context(), 5*time.Second)
	if err != nil {
		n.t.Fatal(err)
	}
	n.mu.Lock()
	n.lease, n.mute = lease, false
	n.mu.Unlock()
	snap, err := n.st.Read(n.t.Context(), node.KindDesired)
	if err != nil {
		n.t.Fatal(err)
	}
	n.apply(n.t.Context(), snap)
}

// eventually fails t unless cond holds within 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10 s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFailoverLostNode: a node that dies (its lease ended, its records
// gone) has what it ran placed on the nodes left, by the engine on its
// own (FailOver); its Desired keeps nothing, and once it comes back it
// stops what it still ran and runs nothing.
func TestFailoverLostNode(t *testing.T) {
	f := newFleet(t, 3, Options{})
	if _, err := f.deploy(fakeSpec(map[string]string{"api": "1", "web": "1", "jobs": "1"}), 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.engine.FailOver(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	keys := f.keysOfGen(f.current())
	var lost *fakeNode
	var k spec.VersionKey
	for _, key := range keys {
		if on := f.runners(key); len(on) == 1 {
			lost, k = f.onNode(on[0]), key
			break
		}
	}
	if lost == nil {
		t.Fatalf("no instance runs on one node: %v", keys)
	}
	lost.die()
	eventually(t, string(k)+" placed on a node left", func() bool {
		return strings.Contains(f.log.String(), "placed anew:")
	})
	if on := f.runners(k); len(on) != 2 || !slices.Contains(on, lost.name) { // the dead one "runs" it still
		t.Errorf("%s runs on %v, want a node left besides the dead one", k, on)
	}
	if d := f.desiredOf(lost.name); !d.Placed || len(d.Instances) != 0 {
		t.Errorf("the lost node is asked %+v, want placed with nothing", d)
	}
	if !strings.Contains(f.log.String(), "placed anew: "+string(k)+" from "+lost.name) {
		t.Errorf("the log does not say what moved:\n%s", f.log)
	}
	for _, key := range keys {
		if on := f.runners(key); len(on) < 1 {
			t.Errorf("%s runs nowhere", key)
		}
	}

	lost.comeBack()
	if got := lost.runs(); len(got) != 0 {
		t.Errorf("the node that came back runs %v, want nothing: it was all moved away", got)
	}
	if on := f.runners(k); len(on) != 1 || on[0] == lost.name {
		t.Errorf("%s runs on %v, want one node, not the one that came back", k, on)
	}
}

// TestFailoverOnceItsOwnNodeReports: an engine whose own node's record is
// missing (its report lost, the store out of reach a moment) places
// nothing — it does not know that node's labels and capacity — and
// places what a node that died ran as soon as its own node reports
// itself again, with no other change to make it (issue 22).
func TestFailoverOnceItsOwnNodeReports(t *testing.T) {
	f := newFleet(t, 3, Options{})
	if _, err := f.deploy(fakeSpec(map[string]string{"api": "1", "web": "1", "jobs": "1"}), 0); err != nil {
		t.Fatal(err)
	}
	e := New(f.st, Options{Node: "node-0", Logf: f.log.add})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.FailOver(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(200 * time.Millisecond) // FailOver watches

	if _, err := f.st.Txn(t.Context(), store.Write{Kind: node.KindNode, Key: "node-0", Rev: store.AnyRevision, Delete: true}); err != nil {
		t.Fatal(err)
	}
	before := f.desiredOf("node-2")
	if len(before.Instances) == 0 {
		t.Fatal("node-2 runs nothing: nothing to fail over")
	}
	f.nodes[2].die()
	time.Sleep(500 * time.Millisecond)
	if got := f.desiredOf("node-2"); !slices.Equal(got.Instances, before.Instances) {
		t.Fatalf("node-2 was asked %v while the engine's own node had not reported itself, want %v as it was", got.Instances, before.Instances)
	}
	snap, err := f.st.Read(t.Context(), node.KindDesired)
	if err != nil {
		t.Fatal(err)
	}
	f.nodes[0].apply(t.Context(), snap) // its report, made again
	eventually(t, "node-2's instances placed elsewhere once node-0 reported itself", func() bool {
		return len(f.desiredOf("node-2").Instances) == 0
	})
	for _, k := range before.Instances {
		if on := f.runners(k); !slices.ContainsFunc(on, func(n string) bool { return n != "node-2" }) {
			t.Errorf("%s runs on %v, want a node left", k, on)
		}
	}
}

// TestFailoverCommitFails (issue 22): a failover whose commit fails —
// its stage made, the nodes left running what moves to them beside what
// they ran — is made again until it commits: no instance is left placed
// more often than its replicas, and each node runs what is placed on it;
// also when the node that went came back meanwhile, running what its
// Desired, not rewritten, still names (shop on three nodes, solo on two,
// as a chaos run once left them).
func TestFailoverCommitFails(t *testing.T) {
	for _, comesBack := range []bool{false, true} {
		t.Run(fmt.Sprintf("comes back %v", comesBack), func(t *testing.T) {
			f := newFleet(t, 3, Options{})
			s := fakeSpec(map[string]string{"shop": "1", "solo": "1"})
			two := 2
			s.Services["shop"].Replicas = &two
			if _, err := f.deploy(s, 0); err != nil {
				t.Fatal(err)
			}
			var lost *fakeNode
			for _, n := range f.nodes {
				if slices.ContainsFunc(f.desiredOf(n.name).Instances, func(k spec.VersionKey) bool { return k.Service() == "shop" }) {
					lost = n
					break
				}
			}
			if lost == nil {
				t.Fatal("no node runs shop")
			}
			w := &storetest.FailingWrites{Store: f.st, Match: func(wr store.Write) bool { return wr.Kind == node.KindDesired && wr.Key == lost.name }}
			w.Fail.Store(1) // the commit: the stage writes the nodes left only
			f.engine.SetWriter(w)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { f.engine.FailOver(ctx); close(done) }()
			t.Cleanup(func() { cancel(); <-done })
			time.Sleep(200 * time.Millisecond) // FailOver watches

			lost.die()
			eventually(t, "the failover's commit failed", func() bool { return strings.Contains(f.log.String(), "trying again") })
			if comesBack {
				lost.comeBack()
			}
			eventually(t, "each instance placed as often as its replicas, and run where placed", func() bool {
				placed := map[spec.VersionKey][]string{}
				for _, n := range f.nodes {
					for _, k := range f.desiredOf(n.name).Instances {
						placed[k] = append(placed[k], n.name)
						if !slices.Contains(n.runs(), k) && (n != lost || comesBack) {
							return false
						}
					}
					if n != lost || comesBack {
						for _, k := range n.runs() {
							if !slices.Contains(f.desiredOf(n.name).Instances, k) {
								return false
							}
						}
					}
				}
				for k, on := range placed {
					if want := map[string]int{"shop": 2, "solo": 1}[k.Service()]; len(on) != want {
						return false
					}
				}
				return len(placed) == 2
			})
			if !comesBack {
				if d := f.desiredOf(lost.name); len(d.Instances) != 0 {
					t.Errorf("the node that went is asked %v, want nothing", d.Instances)
				}
			}
		})
	}
}

// TestFailoverPinnedStays: an instance pinned (placement.node) to a node
// that died is not moved — it stays placed there, said so — while the
// rest moves; the node runs it again when it comes back.
func TestFailoverPinnedStays(t *testing.T) {
	f := newFleet(t, 2, Options{})
	s := fakeSpec(map[string]string{"db": "1", "web": "1"})
	s.Services["db"].Placement = &spec.Placement{Node: "node-1"}
	s.Services["web"].Placement = &spec.Placement{Labels: nil}
	if _, err := f.deploy(s, 0); err != nil {
		t.Fatal(err)
	}
	var db, web spec.VersionKey
	for _, k := range f.keysOfGen(f.current()) {
		if k.Service() == "db" {
			db = k
		} else {
			web = k
		}
	}
	if on := f.runners(web); !slices.Equal(on, []string{"node-0"}) {
		t.Fatalf("web runs on %v, want node-0 (the least loaded)", on)
	}
	if _, err := f.engine.Drain(t.Context(), "node-1", f.log.add); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `service "db"`) {
		t.Fatalf("drain of node-1, where db is pinned: %v, want refused naming db", err)
	}
	if _, err := f.st.Record(t.Context(), node.KindUnschedulable, "node-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a drain refused left its record: %v", err)
	}
	f.onNode("node-1").die()
	r, err := f.engine.Replace(t.Context(), f.log.add)
	if err != nil {
		t.Fatalf("replace: %v\n%s", err, f.log)
	}
	if len(r.Moved) != 0 || len(r.Stranded) != 1 || r.Stranded[0].Instance != db || !slices.Equal(r.Stranded[0].From, []string{"node-1"}) {
		t.Errorf("replacement %+v, want db stranded on node-1 and nothing moved", r)
	}
	if d := f.desiredOf("node-1"); !slices.Equal(d.Instances, []spec.VersionKey{db}) {
		t.Errorf("node-1 is asked %v, want db still", d.Instances)
	}
	if on := f.runners(db); !slices.Equal(on, []string{"node-1"}) {
		t.Errorf("db runs on %v, want only where it was", on)
	}
	f.onNode("node-1").comeBack()
	if got := f.onNode("node-1").runs(); !slices.Equal(got, []spec.VersionKey{db}) {
		t.Errorf("node-1, back, runs %v, want db", got)
	}
}

// TestDrain: a drained node's instances start elsewhere and are reported
// ready there before it stops them; it is recorded unschedulable (a
// deploy places nothing on it) until undrained; a node unknown is an
// input error.
func TestDrain(t *testing.T) {
	f := newFleet(t, 3, Options{})
	if _, err := f.deploy(twoAPIs("1"), 0); err != nil {
		t.Fatal(err)
	}
	k := f.keysOfGen(f.current())[0]
	on := f.runners(k)
	drainee := on[0]

	// The order the nodes report in: every report of k, as it comes.
	events, err := f.st.Watch(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.engine.Drain(t.Context(), drainee, f.log.add)
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, f.log)
	}
	if len(r.Moved) != 1 || r.Moved[0].Instance != k || !slices.Equal(r.Moved[0].From, []string{drainee}) || len(r.Moved[0].To) != 1 {
		t.Errorf("drain moved %+v, want %s from %s", r.Moved, k, drainee)
	}
	to := r.Moved[0].To[0]
	var readyAt, stoppedAt uint64
	timeout := time.After(5 * time.Second)
	for readyAt == 0 || stoppedAt == 0 {
		select {
		case ev := <-events:
			switch ev.Key {
			case node.InstanceKey(to, k):
				if ev.Type == store.EventRecord && readyAt == 0 {
					readyAt = ev.Revision
				}
			case node.InstanceKey(drainee, k):
				if ev.Type == store.EventRecordDeleted {
					stoppedAt = ev.Revision
				}
			}
		case <-timeout:
			t.Fatalf("reports: ready on %s at %d, stopped on %s at %d", to, readyAt, drainee, stoppedAt)
		}
	}
	if readyAt >= stoppedAt {
		t.Errorf("%s was ready on %s at revision %d, after it stopped on %s at %d", k, to, readyAt, drainee, stoppedAt)
	}
	if got := f.runners(k); slices.Contains(got, drainee) || len(got) != 2 {
		t.Errorf("%s runs on %v, want two nodes, not %s", k, got, drainee)
	}
	// It stays drained: a deploy places nothing on it.
	if _, err := f.deploy(fakeSpec(map[string]string{"api": "1", "web": "1", "jobs": "1"}), 0); err != nil {
		t.Fatal(err)
	}
	if got := f.onNode(drainee).runs(); len(got) != 0 {
		t.Errorf("drained %s runs %v after a deploy", drainee, got)
	}
	if _, err := f.st.Record(t.Context(), node.KindUnschedulable, drainee); err != nil {
		t.Errorf("the drain's record: %v", err)
	}

	was, err := f.engine.Undrain(t.Context(), drainee)
	if err != nil || !was {
		t.Fatalf("undrain: %v, %v", was, err)
	}
	if _, err := f.st.Record(t.Context(), node.KindUnschedulable, drainee); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the drain's record after undrain: %v, want none", err)
	}
	if _, err := f.deploy(fakeSpec(map[string]string{"api": "2", "web": "2", "jobs": "2", "mail": "2"}), 0); err != nil {
		t.Fatal(err)
	}
	if got := f.onNode(drainee).runs(); len(got) == 0 {
		t.Errorf("undrained %s runs nothing after a deploy of 4 services on 3 nodes", drainee)
	}
	if was, err := f.engine.Undrain(t.Context(), drainee); err != nil || was {
		t.Errorf("undrain of a node not drained: %v, %v; want false, nil", was, err)
	}
	for _, op := range []func() error{
		func() error { _, err := f.engine.Drain(t.Context(), "node-9", f.log.add); return err },
		func() error { _, err := f.engine.Undrain(t.Context(), "node-9"); return err },
	} {
		if err := op(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `no node "node-9"`) {
			t.Errorf("an unknown node: %v, want an input error naming it", err)
		}
	}
}

// TestFailoverMoreReplicasThanNodes: an instance with a replica on every
// node runs on every node left when one dies — not refused as a deploy
// of it would be — and on the node again once it comes back.
func TestFailoverMoreReplicasThanNodes(t *testing.T) {
	f := newFleet(t, 3, Options{})
	s := fakeSpec(map[string]string{"shop": "1"})
	r := 3
	s.Services["shop"].Replicas = &r
	if _, err := f.deploy(s, 0); err != nil {
		t.Fatal(err)
	}
	k := f.keysOfGen(f.current())[0]
	f.nodes[2].die()
	if _, err := f.engine.Replace(t.Context(), f.log.add); err != nil {
		t.Fatalf("replace with 2 nodes of 3: %v", err)
	}
	if d := f.desiredOf("node-2"); len(d.Instances) != 0 {
		t.Errorf("the dead node is asked %v, want nothing", d.Instances)
	}
	f.nodes[2].comeBack()
	r2, err := f.engine.Replace(t.Context(), f.log.add)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.runners(k); len(got) != 3 || len(r2.Moved) != 0 {
		t.Errorf("%s runs on %v once node-2 is back (moved %+v), want all three", k, got, r2.Moved)
	}
}

// TestFailoverWaitsForJoin: an engine made while a node it asks to run
// something has not reported itself — it may be starting, as a cluster
// started together — does not move its instances until JoinWait after it
// was made; one it saw go — or that went after the last report of a node
// there is — it moves at once (TestFailoverLostNode).
func TestFailoverWaitsForJoin(t *testing.T) {
	f := newFleet(t, 3, Options{})
	if _, err := f.deploy(fakeSpec(map[string]string{"api": "1", "web": "1", "jobs": "1"}), 0); err != nil {
		t.Fatal(err)
	}
	before := f.desiredOf("node-2")
	f.nodes[2].die()
	for _, n := range f.nodes[:2] {
		n.comeBack() // reports anew: node-2 went before every report there is
	}
	// A daemon starts now, with node-2 not (yet) there.
	e := New(f.st, Options{JoinWait: 1500 * time.Millisecond, Logf: f.log.add})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.FailOver(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(700 * time.Millisecond)
	if got := f.desiredOf("node-2"); !slices.Equal(got.Instances, before.Instances) {
		t.Errorf("node-2, not reported yet, was asked %v within JoinWait, want %v as it was", got.Instances, before.Instances)
	}
	eventually(t, "node-2's instances placed elsewhere after JoinWait", func() bool {
		return len(f.desiredOf("node-2").Instances) == 0
	})
}

// TestDrainRefusesExclusive: an exclusive service's instance does not
// move off a drained node (its handover is a node's): the drain is
// refused, an input error naming it, and nothing changed.
func TestDrainRefusesExclusive(t *testing.T) {
	f := newFleet(t, 2, Options{})
	s := fakeSpec(map[string]string{"db": "1"})
	s.Services["db"].Exclusive = true
	if _, err := f.deploy(s, 0); err != nil {
		t.Fatal(err)
	}
	k := f.keysOfGen(f.current())[0]
	on := f.runners(k)
	_, err := f.engine.Drain(t.Context(), on[0], f.log.add)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `service "db"`) {
		t.Fatalf("drain of the node of an exclusive service: %v, want refused naming it", err)
	}
	if got := f.runners(k); !slices.Equal(got, on) {
		t.Errorf("db runs on %v after a refused drain, want %v", got, on)
	}
}

// TestDeposedEngineMovesNothing: an engine whose leadership ended (its
// lease revoked: its daemon died, another leads) writes nothing through
// its fenced view — neither a drain's record nor a re-placement.
func TestDeposedEngineMovesNothing(t *testing.T) {
	f := newFleet(t, 2, Options{})
	if _, err := f.deploy(fakeSpec(map[string]string{"api": "1", "web": "1"}), 0); err != nil {
		t.Fatal(err)
	}
	lease, err := f.st.Grant(t.Context(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lead, err := f.st.Campaign(t.Context(), "engine", lease)
	if err != nil {
		t.Fatal(err)
	}
	f.engine.SetWriter(f.st.Fenced(lead))
	if err := lease.Revoke(t.Context()); err != nil {
		t.Fatal(err)
	}
	<-lead.Done()
	before := f.desiredOf("node-0")
	if _, err := f.engine.Drain(t.Context(), "node-0", f.log.add); !errors.Is(err, store.ErrNotLeader) {
		t.Errorf("a deposed engine's drain: %v, want %v", err, store.ErrNotLeader)
	}
	if _, err := f.st.Record(t.Context(), node.KindUnschedulable, "node-0"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a deposed engine's drain left its record: %v", err)
	}
	if got := f.desiredOf("node-0"); !slices.Equal(got.Instances, before.Instances) {
		t.Errorf("node-0 is asked %v after a deposed engine's drain, want %v", got.Instances, before.Instances)
	}
}
