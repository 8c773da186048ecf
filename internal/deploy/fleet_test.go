package deploy

import (
	"context"
	"fmt"
	"slices"
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

// fleet is an engine over a real store and fake nodes in memory: the
// engine's contract with the nodes — Desired in, Info and Instance
// records out — with no process anywhere.
type fleet struct {
	t      *testing.T
	st     store.Store
	engine *Engine
	nodes  []*fakeNode
	log    *lines
}

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l = append(l.l, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.l, "\n")
}

// newFleet starts an engine and n fake nodes, node-0 … node-(n-1).
func newFleet(t *testing.T, n int, opts Options) *fleet {
	t.Helper()
	st := backends.OpenRoot(t, t.TempDir())
	f := &fleet{t: t, st: st, log: &lines{}}
	for i := range n {
		f.nodes = append(f.nodes, startFakeNode(t, st, "node-"+string(rune('0'+i))))
	}
	opts.Logf = f.log.add
	f.engine = New(st, opts)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := f.engine.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fleet) deploy(s *spec.Spec, confirm time.Duration) (*Result, error) {
	f.t.Helper()
	return f.engine.Deploy(context.Background(), Request{Source: "test.json", Spec: s, Confirm: confirm}, f.log.add)
}

// fakeSpec is a spec of services that need nothing to run: fake nodes
// run them.
func fakeSpec(ids map[string]string) *spec.Spec {
	s := &spec.Spec{Services: map[string]*spec.Service{}}
	for name, id := range ids {
		s.Services[name] = &spec.Service{Exec: []string{"/bin/true"}, Env: map[string]string{"ID": id},
			Health: &spec.Health{Path: "/", Timeout: spec.Duration(time.Second)}}
	}
	return s
}

// pinned pins every service of s to node (placement.node).
func pinned(s *spec.Spec, node string) *spec.Spec {
	for _, svc := range s.Services {
		svc.Placement = &spec.Placement{Node: node}
	}
	return s
}

// keysOfGen returns generation n's instances, sorted.
func (f *fleet) keysOfGen(n uint64) []spec.VersionKey {
	f.t.Helper()
	g, err := f.st.Get(f.t.Context(), n)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []spec.VersionKey
	for name := range g.Versions {
		out = append(out, g.Instance(name))
	}
	slices.Sort(out)
	return out
}

func (f *fleet) current() uint64 {
	f.t.Helper()
	g, err := f.st.Current(f.t.Context(), spec.DefaultEnv)
	if err != nil || g == nil {
		return 0
	}
	return g.Number
}

// TestFleetDeploy: a deploy stages its new versions on the nodes they
// are placed on, commits once each reported them ready, and then the
// nodes run the new generation — each instance on one node, spread — and
// drain the old; each node's Desired says so, with nothing left staged.
func TestFleetDeploy(t *testing.T) {
	f := newFleet(t, 3, Options{})
	if _, err := f.deploy(fakeSpec(map[string]string{"api": "1", "web": "1"}), 0); err != nil {
		t.Fatalf("deploy: %v\n%s", err, f.log)
	}
	res, err := f.deploy(fakeSpec(map[string]string{"api": "1", "web": "2"}), 0)
	if err != nil {
		t.Fatalf("deploy: %v\n%s", err, f.log)
	}
	if res.Generation != 2 || len(res.Started) != 1 || len(res.Stopped) != 1 {
		t.Errorf("result %+v, want generation 2, web's new version started and its old one stopped", res)
	}
	want := f.keysOfGen(2)
	var all []spec.VersionKey
	for _, n := range f.nodes {
		runs := n.runs()
		if len(runs) > 1 {
			t.Errorf("%s runs %v: two instances on one node of three", n.name, runs)
		}
		all = append(all, runs...)
		if d := n.lastAsked(); d.Staged != nil || len(d.Keep) != 0 || d.Node != n.name || !d.Placed || !slices.Equal(d.Instances, runs) {
			t.Errorf("%s is left asked %+v, running %v; want nothing staged or kept, and what it runs placed on it", n.name, d, runs)
		}
	}
	slices.Sort(all)
	if !slices.Equal(all, want) {
		t.Errorf("the nodes run %v together, want generation 2's %v, each once", all, want)
	}
}

// TestFleetNodeNeverAnswers: a node that stays registered but never
// applies what it is asked fails the deploy after its bound, naming it;
// nothing is committed, and the other nodes stop what they started.
func TestFleetNodeNeverAnswers(t *testing.T) {
	f := newFleet(t, 3, Options{NodeWait: 500 * time.Millisecond})
	if _, err := f.deploy(pinned(fakeSpec(map[string]string{"web": "1"}), "node-0"), 0); err != nil {
		t.Fatal(err)
	}
	f.nodes[1].silence()
	_, err := f.deploy(pinned(fakeSpec(map[string]string{"web": "2"}), "node-0"), 0)
	if err == nil || !strings.Contains(err.Error(), "node-1 did not answer") || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("deploy with a node that never answers: %v, want it named, nothing changed", err)
	}
	if got := f.current(); got != 1 {
		t.Errorf("current generation %d, want 1", got)
	}
	if got, want := f.nodes[0].runs(), f.keysOfGen(1); !slices.Equal(got, want) {
		t.Errorf("node-0 runs %v after the failed deploy, want only %v", got, want)
	}
}

// TestFleetNodeDies: a node that dies while a deploy waits for it (its
// lease ends, its records with it) is no longer waited for: the deploy
// goes on with the nodes there are.
func TestFleetNodeDies(t *testing.T) {
	f := newFleet(t, 3, Options{NodeWait: 20 * time.Second})
	if _, err := f.deploy(pinned(fakeSpec(map[string]string{"web": "1"}), "node-0"), 0); err != nil {
		t.Fatal(err)
	}
	f.nodes[2].silence()
	done := make(chan error, 1)
	go func() {
		_, err := f.deploy(pinned(fakeSpec(map[string]string{"web": "2"}), "node-0"), 0)
		done <- err
	}()
	time.Sleep(300 * time.Millisecond) // the deploy waits for node-2
	f.nodes[2].die()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("deploy once a node died: %v\n%s", err, f.log)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the deploy still waits for a dead node\n%s", f.log)
	}
	if got := f.current(); got != 2 {
		t.Errorf("current generation %d, want 2", got)
	}
	if got, want := f.nodes[0].runs(), f.keysOfGen(2); !slices.Equal(got, want) {
		t.Errorf("node-0 runs %v, want %v", got, want)
	}
}

// TestFleetStartFails: a version one node cannot start fails the deploy
// before the switch, the service named; every node is left as it was.
func TestFleetStartFails(t *testing.T) {
	f := newFleet(t, 2, Options{})
	if _, err := f.deploy(pinned(fakeSpec(map[string]string{"web": "1"}), "node-1"), 0); err != nil {
		t.Fatal(err)
	}
	f.nodes[1].failStart("web", "exit status 3")
	_, err := f.deploy(pinned(fakeSpec(map[string]string{"web": "2"}), "node-1"), 0)
	if fs := Failures(err); len(fs) != 1 || fs[0].Service != "web" || fs[0].Step != StepStart || !strings.Contains(fs[0].Error(), "exit status 3") {
		t.Fatalf("deploy with a start that fails: %v, want web failing at start", err)
	}
	if got := f.current(); got != 1 {
		t.Errorf("current generation %d, want 1", got)
	}
	if got, want := f.nodes[1].runs(), f.keysOfGen(1); !slices.Equal(got, want) {
		t.Errorf("node-1 runs %v, want only %v", got, want)
	}
	for _, n := range f.nodes {
		if d := n.lastAsked(); d.Staged != nil {
			t.Errorf("%s is left with generation staged", n.name)
		}
	}
}

// TestFleetWindowReadsReports: the confirm window decides from what the
// nodes report: one node reporting the new version unhealthy switches
// every node back.
func TestFleetWindowReadsReports(t *testing.T) {
	f := newFleet(t, 2, Options{})
	if _, err := f.deploy(fakeSpec(map[string]string{"web": "1"}), 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.deploy(fakeSpec(map[string]string{"web": "2"}), time.Minute)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(f.log.String(), "confirming for") {
		if time.Now().After(deadline) {
			t.Fatalf("no window opened\n%s", f.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, n := range f.nodes {
		if d := n.lastAsked(); !slices.Equal(d.Keep, []uint64{1}) {
			t.Errorf("%s asked to keep %v in the window, want generation 1", n.name, d.Keep)
		}
	}
	key := f.keysOfGen(2)[0]
	f.nodes[1].report(node.Instance{Key: key, State: supervisor.StateUnhealthy, Error: "GET /: 500"})
	select {
	case err := <-done:
		if fs := Failures(err); len(fs) != 1 || fs[0].Step != StepConfirm || !strings.Contains(err.Error(), "rolled back to generation 1") {
			t.Fatalf("deploy whose version a node reports unhealthy: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the window did not switch back\n%s", f.log)
	}
	if got := f.current(); got != 1 {
		t.Errorf("current generation %d, want 1 again", got)
	}
}

// TestDeployWrites: a deploy writes to the store what the nodes must
// follow, and nothing more: without a window, the staged versions and
// the commit; with one, the window's end too — each one transaction
// whatever the number of nodes.
func TestDeployWrites(t *testing.T) {
	for _, tc := range []struct {
		confirm time.Duration
		writes  int
	}{{0, 2}, {500 * time.Millisecond, 3}} {
		f := newFleet(t, 3, Options{})
		counted := newCountingStore(f.st)
		f.engine.SetWriter(counted)
		if _, err := f.deploy(fakeSpec(map[string]string{"web": "1"}), 0); err != nil {
			t.Fatal(err)
		}
		before, _ := counted.snapshot()
		if _, err := f.deploy(fakeSpec(map[string]string{"web": "2"}), tc.confirm); err != nil {
			t.Fatalf("deploy: %v\n%s", err, f.log)
		}
		after, _ := counted.snapshot()
		if got := countsSince(before, after); got[tripWrite] != tc.writes {
			t.Errorf("confirm %s: %d writes (%s), want %d", tc.confirm, got[tripWrite], formatCounts(got), tc.writes)
		}
	}
}

// twoAPIs is a spec of api at id with two replicas.
func twoAPIs(id string) *spec.Spec {
	s := fakeSpec(map[string]string{"api": id})
	r := 2
	s.Services["api"].Replicas = &r
	return s
}

// TestFleetPlacement: replicas run on as many nodes, spread, and a
// redeploy keeps each where it runs; a spec that cannot be placed is
// refused before anything is asked of a node, naming the service.
func TestFleetPlacement(t *testing.T) {
	f := newFleet(t, 3, Options{})
	if _, err := f.deploy(twoAPIs("1"), 0); err != nil {
		t.Fatal(err)
	}
	where := func() []string {
		var on []string
		for _, n := range f.nodes {
			if len(n.runs()) > 0 {
				on = append(on, n.name)
			}
		}
		return on
	}
	first := where()
	if len(first) != 2 {
		t.Fatalf("api with 2 replicas runs on %v, want two nodes", first)
	}
	if _, err := f.deploy(twoAPIs("2"), 0); err != nil {
		t.Fatal(err)
	}
	if got := where(); !slices.Equal(got, first) {
		t.Errorf("the new version runs on %v, want where the old one ran, %v", got, first)
	}

	asked := make([]int, len(f.nodes))
	for i, n := range f.nodes {
		asked[i] = n.askedCount()
	}
	s := fakeSpec(map[string]string{"api": "3"})
	r := 4
	s.Services["api"].Replicas = &r
	_, err := f.deploy(s, 0)
	if err == nil || !strings.Contains(err.Error(), `service "api": replicas 4 need 4 nodes`) {
		t.Fatalf("deploy of 4 replicas on 3 nodes: %v, want refused naming the service", err)
	}
	if got := f.current(); got != 2 {
		t.Errorf("current generation %d, want 2", got)
	}
	for i, n := range f.nodes {
		if n.askedCount() != asked[i] {
			t.Errorf("%s was asked something for a spec that could not be placed", n.name)
		}
	}
}

// TestFleetRestartOnItsNode: a restart asks only the node that runs the
// instance; the other, which has nothing to restart, is not asked (it
// would answer that the instance does not run there).
func TestFleetRestartOnItsNode(t *testing.T) {
	f := newFleet(t, 2, Options{})
	if _, err := f.deploy(pinned(fakeSpec(map[string]string{"web": "1"}), "node-0"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.engine.Restart(t.Context(), "web"); err != nil {
		t.Fatal(err)
	}
	key := f.keysOfGen(f.current())[0]
	for _, n := range f.nodes {
		n.mu.Lock()
		asked := 0
		for _, d := range n.asked {
			asked = max(asked, d.Restarts[key])
		}
		n.mu.Unlock()
		if want := map[string]int{"node-0": 1}[n.name]; asked != want {
			t.Errorf("%s was asked to restart %s %d times, want %d", n.name, key, asked, want)
		}
	}
}

// TestDeployWhileItsOwnNodeUnreported: a deploy made while the engine's
// own node has not reported itself (its report lost a moment) cannot
// place its new versions — that node's labels and capacity are unknown —
// and the placement in force names none of them: it is refused before
// anything started, nothing changed, rather than switched to versions no
// node runs. Once the node reported itself, it goes through.
func TestDeployWhileItsOwnNodeUnreported(t *testing.T) {
	f := newFleet(t, 3, Options{})
	if _, err := f.deploy(fakeSpec(map[string]string{"api": "1", "web": "1", "jobs": "1"}), 0); err != nil {
		t.Fatal(err)
	}
	before := f.current()
	e := New(f.st, Options{Node: "node-0", Logf: f.log.add})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Txn(t.Context(), store.Write{Kind: node.KindNode, Key: "node-0", Rev: store.AnyRevision, Delete: true}); err != nil {
		t.Fatal(err)
	}
	next := fakeSpec(map[string]string{"api": "2", "web": "2", "jobs": "2"})
	_, err := e.Deploy(t.Context(), Request{Source: "test.json", Spec: next}, f.log.add)
	if err == nil || !strings.Contains(err.Error(), "nothing changed") || !strings.Contains(err.Error(), "node-0 has not reported itself") {
		t.Errorf("a deploy while node-0 has not reported itself: %v, want refused, nothing changed, naming it", err)
	}
	if got := f.current(); got != before {
		t.Errorf("the current generation is %d, want %d unchanged", got, before)
	}
	for _, k := range f.keysOfGen(before) {
		if on := f.runners(k); len(on) != 1 {
			t.Errorf("%s runs on %v after the refused deploy, want one node", k, on)
		}
	}

	snap, err := f.st.Read(t.Context(), node.KindDesired)
	if err != nil {
		t.Fatal(err)
	}
	f.nodes[0].apply(t.Context(), snap) // its report, made again
	if _, err := e.Deploy(t.Context(), Request{Source: "test.json", Spec: next}, f.log.add); err != nil {
		t.Fatalf("the deploy once node-0 reported itself: %v", err)
	}
	for _, k := range f.keysOfGen(f.current()) {
		if on := f.runners(k); len(on) != 1 {
			t.Errorf("%s runs on %v, want one node", k, on)
		}
	}
}
