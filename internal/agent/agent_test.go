package agent

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

var appBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hostel-agent-app-")
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

// node is an agent over a real supervisor and router on root.
type node struct {
	agent  *Agent
	sup    *supervisor.Supervisor
	router *router.Router
}

func newNode(t *testing.T, root string) *node {
	t.Helper()
	n := &node{sup: supervisor.New(supervisor.Options{Root: root}), router: router.New(router.Options{})}
	n.agent = New(n.sup, n.router)
	t.Cleanup(func() {
		n.agent.StopAll(context.Background())
		n.router.Close()
	})
	return n
}

func (n *node) reconcile(t *testing.T, d Desired, opts Options) *Report {
	t.Helper()
	rep, err := n.agent.Reconcile(t.Context(), d, opts, t.Logf)
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	return rep
}

// pids returns the pid of every process the supervisor runs, by key.
func (n *node) pids() map[spec.VersionKey]int {
	out := map[spec.VersionKey]int{}
	for _, st := range n.sup.List() {
		out[st.Key] = st.PID
	}
	return out
}

func svc(id string, needs ...string) *spec.Service {
	return &spec.Service{Exec: []string{appBin}, Env: map[string]string{"APP_ID": id}, Needs: needs,
		Health: &spec.Health{Path: "/healthz", Timeout: spec.Duration(5 * time.Second)}, StopGrace: spec.Duration(spec.MinGrace)}
}

// generation makes a generation of services, with their versions.
func generation(t *testing.T, env string, svcs map[string]*spec.Service) *spec.Generation {
	t.Helper()
	s := &spec.Spec{Services: svcs}
	vs, err := spec.Versions(s, spec.Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	return &spec.Generation{Env: env, Spec: s, Versions: vs}
}

func keys(m map[spec.VersionKey]int) []spec.VersionKey {
	return slices.Sorted(maps.Keys(m))
}

// TestReconcile: from empty the agent starts every desired version,
// dependencies first; reconciling again changes nothing; versions no
// longer desired stop, the topmost first, and an instance two desired
// generations use (one shares it) runs once.
func TestReconcile(t *testing.T) {
	n := newNode(t, t.TempDir())
	g1 := generation(t, spec.DefaultEnv, map[string]*spec.Service{"db": svc("db-1"), "api": svc("api-1", "db")})
	rep := n.reconcile(t, Desired{Generations: []*spec.Generation{g1}}, Options{})
	want := []spec.VersionKey{spec.Key("api", g1.Versions["api"]), spec.Key("db", g1.Versions["db"])}
	if got := keys(n.pids()); !slices.Equal(got, want) {
		t.Fatalf("running %v, want %v", got, want)
	}
	if len(rep.Started) != 2 || len(rep.Stopped) != 0 {
		t.Errorf("from empty: started %v, stopped %v", rep.Started, rep.Stopped)
	}

	// Idempotence: the same desired set again starts and stops nothing.
	before := n.pids()
	rep = n.reconcile(t, Desired{Generations: []*spec.Generation{g1}}, Options{})
	if len(rep.Started) != 0 || len(rep.Stopped) != 0 || !maps.Equal(n.pids(), before) {
		t.Errorf("reconciling twice: started %v, stopped %v, pids %v then %v", rep.Started, rep.Stopped, before, n.pids())
	}

	// A preview sharing db with a new api: one process more, db's the same.
	// (The decide half said so: g2.Shares.)
	g2 := generation(t, "pr-1", map[string]*spec.Service{"db": svc("db-1"), "api": svc("api-2", "db")})
	g2.Shares = map[string]string{"db": spec.DefaultEnv}
	rep = n.reconcile(t, Desired{Generations: []*spec.Generation{g1, g2}}, Options{})
	if len(rep.Started) != 1 || rep.Started[0] != string(g2.Instance("api")) {
		t.Errorf("with the preview: started %v, want only its api", rep.Started)
	}
	if got := n.pids()[spec.Key("db", g1.Versions["db"])]; got != before[spec.Key("db", g1.Versions["db"])] {
		t.Errorf("the shared db changed pid: %d, was %d", got, before[spec.Key("db", g1.Versions["db"])])
	}

	// Without g1: its api stops; db stays, g2 holds it.
	rep = n.reconcile(t, Desired{Generations: []*spec.Generation{g2}}, Options{})
	if want := []string{string(spec.Key("api", g1.Versions["api"]))}; !slices.Equal(rep.Stopped, want) {
		t.Errorf("stopped %v, want %v", rep.Stopped, want)
	}
	// Nothing desired: everything stops, api before the db it needs.
	rep = n.reconcile(t, Desired{}, Options{})
	if len(rep.Stopped) != 2 || len(n.pids()) != 0 {
		t.Errorf("to nothing: stopped %v, running %v", rep.Stopped, n.pids())
	}
}

// TestReconcileFailedStart: a desired version that does not get ready
// stops what that Reconcile started and nothing else.
func TestReconcileFailedStart(t *testing.T) {
	n := newNode(t, t.TempDir())
	g1 := generation(t, spec.DefaultEnv, map[string]*spec.Service{"api": svc("api-1")})
	n.reconcile(t, Desired{Generations: []*spec.Generation{g1}}, Options{})
	before := n.pids()
	crash := svc("web-1", "db")
	crash.Env["CRASH"] = "1"
	g2 := generation(t, spec.DefaultEnv, map[string]*spec.Service{"db": svc("db-2"), "web": crash})
	// g2 alone is desired: g1's api would stop if the start went through.
	rep, err := n.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g2}}, Options{}, t.Logf)
	if err == nil {
		t.Fatal("a version that crashes reconciled")
	}
	if len(rep.Stopped) != 0 || !maps.Equal(n.pids(), before) {
		t.Errorf("after a failed start: stopped %v, running %v, want %v as before", rep.Stopped, n.pids(), before)
	}
}

// TestReconcileAdopts: a new agent on the same root (the next daemon)
// adopts what the previous one left running — same pids — and stops what
// it left running that is not desired.
func TestReconcileAdopts(t *testing.T) {
	root := t.TempDir()
	first := newNode(t, root)
	g1 := generation(t, spec.DefaultEnv, map[string]*spec.Service{"db": svc("db-1"), "api": svc("api-1", "db")})
	extra := generation(t, "pr-1", map[string]*spec.Service{"db": svc("db-1"), "api": svc("api-9", "db")})
	first.reconcile(t, Desired{Generations: []*spec.Generation{g1, extra}}, Options{})
	left := first.pids()
	first.sup.Detach() // the daemon goes; its services stay
	first.router.Close()
	first.agent = New(first.sup, first.router)

	next := newNode(t, root)
	rep := next.reconcile(t, Desired{Generations: []*spec.Generation{g1}}, Options{Adopt: true})
	got := next.pids()
	for _, name := range []string{"db", "api"} {
		k := spec.Key(name, g1.Versions[name])
		if got[k] == 0 || got[k] != left[k] {
			t.Errorf("%s: pid %d after the restart, %d before: not adopted", k, got[k], left[k])
		}
	}
	if len(rep.Started) != 2 {
		t.Errorf("adopted %v, want both of g1's versions", rep.Started)
	}
	stale := spec.Key("api", extra.Versions["api"])
	if _, ok := got[stale]; ok {
		t.Errorf("%s, left running but not desired, still runs", stale)
	}
}

// TestPreparing: a version is being prepared from its first preparer on
// until it is kept (a commit) or, its start failed, abandoned — so that
// what its preparers made is known to be held while no stored generation
// names it and before its process runs.
func TestPreparing(t *testing.T) {
	n := newNode(t, t.TempDir())
	g := generation(t, spec.DefaultEnv, map[string]*spec.Service{"api": svc("api-1")})
	key := g.Instance("api")
	var during []spec.VersionKey
	n.agent.Use(probePreparer{at: func(spec.VersionKey) { during = n.agent.Preparing() }})
	n.reconcile(t, Desired{Generations: []*spec.Generation{g}}, Options{})
	if !slices.Equal(during, []spec.VersionKey{key}) {
		t.Errorf("Preparing while its preparer runs: %v, want [%s]", during, key)
	}
	if got := n.agent.Preparing(); !slices.Equal(got, []spec.VersionKey{key}) {
		t.Errorf("Preparing once started, not kept: %v, want [%s]", got, key)
	}
	n.agent.Keep(t.Context(), []string{string(key)}, t.Logf)
	if got := n.agent.Preparing(); len(got) != 0 {
		t.Errorf("Preparing once kept: %v, want none", got)
	}

	g2 := generation(t, spec.DefaultEnv, map[string]*spec.Service{"api": {Exec: []string{"/bin/false"}, StopGrace: spec.Duration(spec.MinGrace)}})
	if _, err := n.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g, g2}}, Options{}, t.Logf); err == nil {
		t.Fatal("a version that exits at once started")
	}
	if got := n.agent.Preparing(); len(got) != 0 {
		t.Errorf("Preparing once its start failed: %v, want none", got)
	}
}
