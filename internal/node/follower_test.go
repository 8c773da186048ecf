package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/node/nodetest"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest"
	"hostel/internal/store/storetest/backends"
	"hostel/internal/supervisor"
)

var appBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hostel-node-app-")
	if err != nil {
		panic(err)
	}
	appBin = filepath.Join(dir, "app")
	if out, err := exec.Command("go", "build", "-o", appBin, "../deploy/testdata/app").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building test app: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// world is a store and a node on a root, the test acting as the engine:
// it commits generations and writes the node's Desired.
type world struct {
	t    *testing.T
	root string
	st   store.Store
	n    *nodetest.Node
}

func newWorld(t *testing.T) *world {
	t.Helper()
	root := t.TempDir()
	st := backends.OpenRoot(t, root) // as HOSTEL_TEST_STORE chooses
	w := &world{t: t, root: root, st: st}
	w.n = nodetest.New(t, st, root, nodetest.Options{})
	w.n.Start(t)
	t.Cleanup(func() {
		w.n.Shutdown()
		st.Close()
	})
	return w
}

// commit makes a generation of one service, web, current, with writes
// made in the same change.
func (w *world) commit(id string, from uint64, also ...store.Write) *spec.Generation {
	w.t.Helper()
	s := &spec.Spec{Services: map[string]*spec.Service{"web": {Exec: []string{appBin}, Env: map[string]string{"APP_ID": id}, Domains: []string{"web.test"},
		Health: &spec.Health{Path: "/healthz", Timeout: spec.Duration(5 * time.Second)}, StopGrace: spec.Duration(spec.MinGrace)}}}
	vs, err := spec.Versions(s, spec.Inputs{})
	if err != nil {
		w.t.Fatal(err)
	}
	g := &spec.Generation{Spec: s, Versions: vs}
	if _, err := w.st.Commit(w.t.Context(), g, from, also...); err != nil {
		w.t.Fatal(err)
	}
	return g
}

// ask writes the node's Desired and waits until the node applied it.
func (w *world) ask(d node.Desired) {
	w.t.Helper()
	d.Node = w.n.Name
	v, _ := json.Marshal(d)
	rev, err := w.st.Txn(w.t.Context(), store.Write{Kind: node.KindDesired, Key: w.n.Name, Value: v, Rev: store.AnyRevision})
	if err != nil {
		w.t.Fatal(err)
	}
	w.applied(rev)
}

// applied waits until the node reports it applied rev.
func (w *world) applied(rev uint64) node.Info {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.t.Context(), 20*time.Second)
	defer cancel()
	var info node.Info
	err := node.Await(ctx, w.st, func(snap *store.Snapshot) bool {
		info = node.Nodes(snap)[w.n.Name]
		return info.Applied >= rev
	}, node.KindNode)
	if err != nil {
		w.t.Fatalf("the node did not apply revision %d: %v", rev, err)
	}
	return info
}

func (w *world) pid(key spec.VersionKey) int {
	w.t.Helper()
	st, ok := w.n.Sup.Status(key)
	if !ok {
		return 0
	}
	return st.PID
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFollowerRunsTheCurrent: a node runs the current generation as soon
// as it is committed, reports each instance under its lease, and drains
// the one a commit replaced.
func TestFollowerRunsTheCurrent(t *testing.T) {
	w := newWorld(t)
	g1 := w.commit("one", 0)
	k1 := g1.Instance("web")
	waitFor(t, "web one running", func() bool { return w.pid(k1) > 0 })
	waitFor(t, "web one reported ready", func() bool {
		r, err := w.st.Record(t.Context(), node.KindInstance, node.InstanceKey(w.n.Name, k1))
		if err != nil {
			return false
		}
		in, _ := node.DecodeInstance(r.Key, r.Value)
		return in.Ready && in.Addr != "" && r.Lease == w.n.Lease.ID()
	})
	g2 := w.commit("two", 1)
	waitFor(t, "web one drained, two running", func() bool { return w.pid(k1) == 0 && w.pid(g2.Instance("web")) > 0 })
	waitFor(t, "web one's report gone", func() bool {
		_, err := w.st.Record(t.Context(), node.KindInstance, node.InstanceKey(w.n.Name, k1))
		return err != nil
	})
}

// TestFollowerRestartsOnce: a restart asked is carried out once — not
// again at the next change, nor by the node's next start.
func TestFollowerRestartsOnce(t *testing.T) {
	w := newWorld(t)
	g := w.commit("one", 0)
	k := g.Instance("web")
	waitFor(t, "web running", func() bool { return w.pid(k) > 0 })
	before := w.pid(k)
	w.ask(node.Desired{Restarts: map[spec.VersionKey]int{k: 1}})
	after := w.pid(k)
	if after == 0 || after == before {
		t.Fatalf("pid %d after a restart, was %d", after, before)
	}
	w.ask(node.Desired{Restarts: map[spec.VersionKey]int{k: 1}, Keep: []uint64{}})
	if got := w.pid(k); got != after {
		t.Errorf("restarted again by a change that asked no more: pid %d, was %d", got, after)
	}
	// The next start of the node finds the request done.
	w.n.Stop()
	w.n.Sup.Detach()
	next := nodetest.New(t, w.st, w.root, nodetest.Options{Name: w.n.Name})
	next.Start(t)
	t.Cleanup(next.Shutdown)
	if st, ok := next.Sup.Status(k); !ok || st.PID != after {
		t.Errorf("after the node's next start: %+v, want pid %d adopted, not restarted", st, after)
	}
}

// TestFollowerStopsFor: an instance asked stopped stops, its requests
// held, and starts again once no longer asked; the held request is
// answered by it.
func TestFollowerStopsFor(t *testing.T) {
	w := newWorld(t)
	g := w.commit("one", 0)
	k := g.Instance("web")
	waitFor(t, "web running", func() bool { return w.pid(k) > 0 })
	w.ask(node.Desired{Stopped: []spec.VersionKey{k}})
	if pid := w.pid(k); pid != 0 {
		t.Fatalf("pid %d while asked stopped", pid)
	}
	var answered atomic.Int64
	go func() {
		req, _ := http.NewRequest("GET", w.n.Front.URL, nil)
		req.Host = "web.test"
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			answered.Store(int64(resp.StatusCode))
		}
	}()
	time.Sleep(200 * time.Millisecond)
	if answered.Load() != 0 {
		t.Fatal("a request was answered while the instance was stopped")
	}
	w.ask(node.Desired{})
	waitFor(t, "the held request answered", func() bool { return answered.Load() == 200 })
}

// TestFollowerDrainsAfterTheRoutes: a version a commit left behind is
// stopped only once the routers follow the commit.
func TestFollowerDrainsAfterTheRoutes(t *testing.T) {
	root := t.TempDir()
	st := backends.OpenRoot(t, root)
	release := make(chan struct{})
	var asked atomic.Uint64
	n := nodetest.New(t, st, root, nodetest.Options{RoutesAt: func(ctx context.Context, rev uint64) error {
		asked.Store(rev)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	n.Start(t)
	t.Cleanup(n.Shutdown)
	w := &world{t: t, root: root, st: st, n: n}
	g1 := w.commit("one", 0)
	k1 := g1.Instance("web")
	waitFor(t, "web one running", func() bool { return w.pid(k1) > 0 })
	w.commit("two", 1)
	waitFor(t, "the node waiting for the routes", func() bool { return asked.Load() > 0 })
	time.Sleep(200 * time.Millisecond)
	if w.pid(k1) == 0 {
		t.Fatal("web one stopped before the routers followed the commit")
	}
	close(release)
	waitFor(t, "web one stopped once the routers followed", func() bool { return w.pid(k1) == 0 })
}

// TestFollowerOneChangeOneReconcile: a change whose several events matter
// to the node — a commit that moves the current generation and writes
// the node's Desired, as the engine's does — is read and reconciled once,
// not twice: a second reconcile that finds nothing to do costs a read
// and a report for nothing.
func TestFollowerOneChangeOneReconcile(t *testing.T) {
	w := newWorld(t)
	g1 := w.commit("one", 0)
	k1 := g1.Instance("web")
	waitFor(t, "web one reported started", func() bool {
		r, err := w.st.Record(t.Context(), node.KindNode, w.n.Name)
		if err != nil {
			return false
		}
		info, _ := node.DecodeInfo(r.Key, r.Value)
		return slices.Contains(info.Since(0).Started, string(k1))
	})

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	events, err := w.st.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	desired, _ := json.Marshal(node.Desired{Node: w.n.Name})
	g2 := w.commit("two", g1.Number, store.Write{Kind: node.KindDesired, Key: w.n.Name, Value: desired, Rev: store.AnyRevision})
	r, err := w.st.Record(t.Context(), node.KindDesired, w.n.Name)
	if err != nil {
		t.Fatal(err)
	}
	stopped := w.applied(r.Revision).Since(r.Revision).Stopped
	if want := []string{string(k1)}; !slices.Equal(stopped, want) {
		t.Errorf("the node reports it stopped %v applying generation %d, want %v", stopped, g2.Number, want)
	}
	// Whatever the node writes of itself next comes within a moment of
	// the first report; a second reconcile would write it.
	var reports []uint64 // their revisions
	for deadline := time.After(time.Second); ; {
		select {
		case ev := <-events:
			if ev.Kind == node.KindNode && ev.Key == w.n.Name && ev.Type == store.EventRecord && ev.Revision > r.Revision {
				reports = append(reports, ev.Revision)
			}
			continue
		case <-deadline:
		}
		break
	}
	if len(reports) != 1 {
		t.Errorf("the node reported itself %d times for one change (at revisions %v), want once", len(reports), reports)
	}
}

// slowStarting is a store whose writes of an instance report saying
// "starting" take a while to land, as a write can on a loaded machine or a
// remote etcd; started is told when one begins.
type slowStarting struct {
	store.Store
	started chan struct{}
}

func (s *slowStarting) Txn(ctx context.Context, writes ...store.Write) (uint64, error) {
	for _, wr := range writes {
		if wr.Kind != node.KindInstance || wr.Delete {
			continue
		}
		if in, err := node.DecodeInstance(wr.Key, wr.Value); err == nil && in.State == supervisor.StateStarting {
			select {
			case s.started <- struct{}{}:
			default:
			}
			time.Sleep(node.ReportEvery / 2)
			break
		}
	}
	return s.Store.Txn(ctx, writes...)
}

// TestFollowerReportsInOrder: the node's reports of an instance land in
// the order they were taken, though one is slow to write: the report that
// a version is ready is never overwritten by the one taken before, while
// it started — which an engine's confirm window would read as a crash.
func TestFollowerReportsInOrder(t *testing.T) {
	root := t.TempDir()
	st := &slowStarting{Store: backends.OpenRoot(t, root), started: make(chan struct{}, 1)}
	n := nodetest.New(t, st, root, nodetest.Options{})
	n.Start(t)
	t.Cleanup(n.Shutdown)
	// web starts listening only once the file is there: its start is
	// reported (slowly) meanwhile.
	await := filepath.Join(t.TempDir(), "go")
	s := &spec.Spec{Services: map[string]*spec.Service{"web": {Exec: []string{appBin}, Env: map[string]string{"APP_ID": "one", "AWAIT_FILE": await},
		Health: &spec.Health{Path: "/healthz", Timeout: spec.Duration(10 * time.Second)}, StopGrace: spec.Duration(spec.MinGrace)}}}
	vs, err := spec.Versions(s, spec.Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	g := &spec.Generation{Spec: s, Versions: vs}
	if _, err := st.Commit(t.Context(), g, 0); err != nil {
		t.Fatal(err)
	}
	k := g.Instance("web")
	select {
	case <-st.started:
	case <-time.After(20 * time.Second):
		t.Fatal("the node never reported web starting")
	}
	if err := os.WriteFile(await, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var seen []supervisor.State
	ready := false
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		r, err := st.Record(t.Context(), node.KindInstance, node.InstanceKey(n.Name, k))
		if err != nil {
			continue
		}
		in, _ := node.DecodeInstance(r.Key, r.Value)
		if len(seen) == 0 || seen[len(seen)-1] != in.State {
			seen = append(seen, in.State)
		}
		if in.State == supervisor.StateRunning && in.Ready {
			ready = true
		} else if ready {
			t.Fatalf("web's report went back to %s after it was reported ready (reports seen: %v)", in.State, seen)
		}
	}
	if !ready {
		t.Errorf("web never reported ready (reports seen: %v)", seen)
	}
}

// TestFollowerRejoins: a node whose lease ended — its records gone with
// it — reports everything anew under the lease it rejoins with, also what
// runs unchanged; and one whose instance the engine placed elsewhere
// meanwhile (its Desired lists nothing) stops it.
func TestFollowerRejoins(t *testing.T) {
	w := newWorld(t)
	g := w.commit("one", 0)
	k := g.Instance("web")
	w.ask(node.Desired{Placed: true, Instances: []spec.VersionKey{k}})
	waitFor(t, "web running", func() bool { return w.pid(k) > 0 })
	rejoin := func(old store.Lease) store.Lease {
		t.Helper()
		if err := old.Revoke(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := w.st.Record(t.Context(), node.KindNode, w.n.Name); err == nil {
			t.Fatal("the node's record outlived its lease")
		}
		lease, err := w.st.Grant(t.Context(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.n.Follower.Rejoin(t.Context(), lease.ID()); err != nil {
			t.Fatal(err)
		}
		if r, err := w.st.Record(t.Context(), node.KindNode, w.n.Name); err != nil || r.Lease != lease.ID() {
			t.Fatalf("the node's record after it rejoined: %+v, %v; want it under the new lease", r, err)
		}
		return lease
	}
	lease := rejoin(w.n.Lease)
	waitFor(t, "web reported again under the new lease", func() bool {
		r, err := w.st.Record(t.Context(), node.KindInstance, node.InstanceKey(w.n.Name, k))
		return err == nil && r.Lease == lease.ID()
	})

	// Placed elsewhere while the node had no lease: it stops it.
	if err := lease.Revoke(t.Context()); err != nil {
		t.Fatal(err)
	}
	v, _ := json.Marshal(node.Desired{Node: w.n.Name, Placed: true})
	if _, err := w.st.Txn(t.Context(), store.Write{Kind: node.KindDesired, Key: w.n.Name, Value: v, Rev: store.AnyRevision}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web stopped", func() bool { return w.pid(k) == 0 })
	lease2, err := w.st.Grant(t.Context(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.n.Follower.Rejoin(t.Context(), lease2.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := w.st.Record(t.Context(), node.KindInstance, node.InstanceKey(w.n.Name, k)); err == nil {
		t.Error("web, stopped, is reported after the node rejoined")
	}
}

// TestFollowerReportsAgain (issue 22): a node whose report of what it
// applied fails — the store out of reach for a moment — reports it again
// until it goes through, with no further change to make it: the engine
// waits for that report (a failover's stage, a deploy's), and a node
// that said nothing more stalled them for their whole bound.
func TestFollowerReportsAgain(t *testing.T) {
	root := t.TempDir()
	st := reportsFailing(backends.OpenRoot(t, root), node.KindNode)
	n := nodetest.New(t, st, root, nodetest.Options{})
	n.Start(t)
	t.Cleanup(n.Shutdown)
	w := &world{t: t, root: root, st: st, n: n}
	g := w.commit("one", 0)
	w.applied(0)
	st.Fail.Store(3) // the next report, and its first two retries
	v, _ := json.Marshal(node.Desired{Node: n.Name, Placed: true, Instances: []spec.VersionKey{g.Instance("web")}})
	rev, err := st.Txn(t.Context(), store.Write{Kind: node.KindDesired, Key: n.Name, Value: v, Rev: store.AnyRevision})
	if err != nil {
		t.Fatal(err)
	}
	if info := w.applied(rev); info.Applied < rev {
		t.Errorf("the node reports it applied %d, want %d", info.Applied, rev)
	}
	if left := st.Fail.Load(); left > 0 {
		t.Errorf("%d writes of the node's record were not tried", left)
	}
}

// reportsFailing is st with its writes of records of kind (not their
// deletion) failing while its Fail counts, as a node's report does whose
// etcd member was cut off.
func reportsFailing(st store.Store, kind string) *storetest.FailingWrites {
	return &storetest.FailingWrites{Store: st, Match: func(wr store.Write) bool { return wr.Kind == kind && !wr.Delete }}
}
