package e2e

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/store/etcd/etcdtest"
)

// goTB is a test's testing.TB in a goroutine of the test's own: a Fatal
// there fails the test and ends that goroutine (t.FailNow may only end
// the test's).
type goTB struct{ testing.TB }

func (g goTB) Fatal(args ...any) { g.Helper(); g.Error(args...); runtime.Goexit() }
func (g goTB) Fatalf(format string, args ...any) {
	g.Helper()
	g.Errorf(format, args...)
	runtime.Goexit()
}
func (g goTB) FailNow() { g.Fail(); runtime.Goexit() }

// nodesView is what `hostel nodes --json` says a test compares between
// daemons: each node, whether it leads, what is placed on it.
type nodesView map[string]struct {
	Leader    bool
	Instances []string
}

// leader is the node v says leads the engine: "" if none or several.
func leader(v nodesView) string {
	var leaders []string
	for name, n := range v {
		if n.Leader {
			leaders = append(leaders, name)
		}
	}
	if len(leaders) != 1 {
		return ""
	}
	return leaders[0]
}

func (e *Env) nodes() nodesView {
	e.t.Helper()
	var ns struct {
		Nodes []struct {
			Name      string
			Leader    bool
			Instances []string
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("nodes", "--json")), &ns); err != nil {
		e.t.Fatal(err)
	}
	v := nodesView{}
	for _, n := range ns.Nodes {
		slices.Sort(n.Instances)
		v[n.Name] = struct {
			Leader    bool
			Instances []string
		}{n.Leader, n.Instances}
	}
	return v
}

// TestEtcdPeers: three daemons, each with its own root and an etcd member
// of its own (--etcd-embed), on three loopback addresses, started with
// the same --etcd-peers over https:// with certificates of one CA, are
// one cluster with nothing else run: a spec deployed through the one
// that leads runs an
// instance on each node, and every daemon says the same of the nodes and
// of the generation. With one daemon (its member) stopped the others go
// on answering from the store, and it rejoins on its data when started
// again, agreeing with them. They all stop, the last one too.
func TestEtcdPeers(t *testing.T) {
	dir := t.TempDir()
	ca := etcdtest.NewCA(t, dir, "cluster-ca")
	names := []string{"n1", "n2", "n3"}
	ips := []net.IP{net.IPv4(127, 0, 0, 11), net.IPv4(127, 0, 0, 12), net.IPv4(127, 0, 0, 13)}
	urls := etcdtest.PeerURLs(t, "https", ips...)
	var peers []string
	for i, name := range names {
		peers = append(peers, name+"="+urls[i].String())
	}
	envs := make([]*Env, len(names))
	args := make([][]string, len(names))
	for i, name := range names {
		// etcd checks a peer's certificate against the address its
		// connection comes from, which on loopback is 127.0.0.1
		// whatever address it is made to: the certificates name it too.
		cert, key := ca.Node(t, name, ips[i], etcdtest.Loopback)
		envs[i] = NewEnv(t)
		args[i] = []string{"--http", "127.0.0.1:0", "--https", "", "--node", name,
			"--etcd-embed", "--etcd-peers", strings.Join(peers, ","),
			"--etcd-cert", cert, "--etcd-key", key, "--etcd-ca", ca.CertFile}
	}
	// Each member waits for a quorum before its daemon answers: they
	// start together.
	var wg sync.WaitGroup
	for i, e := range envs {
		e.t = goTB{t}
		wg.Go(func() { e.StartDaemonArgs(args[i]...) })
	}
	wg.Wait()
	for _, e := range envs {
		e.t = t
	}
	if t.Failed() {
		t.FailNow()
	}

	// Changes go through the daemon that leads the engine, whichever
	// won the election.
	first := envs[0]
	for name, n := range envs[0].nodes() {
		if n.Leader {
			first = envs[slices.Index(names, name)]
		}
	}
	first.WriteSpec(map[string]any{"services": map[string]any{
		"shop": first.App("shop", map[string]any{"domains": []string{"shop.example"}, "replicas": 3}),
	}})
	first.MustRun("deploy", "--no-confirm")

	placed := map[string][]string{}
	for name, n := range first.nodes() {
		placed[name] = n.Instances
	}
	for _, name := range names {
		if is := placed[name]; len(is) != 1 || !strings.HasPrefix(is[0], "shop-") {
			t.Errorf("node %s runs %v, want one instance of shop", name, is)
		}
	}
	// agree checks that the daemons es say the same: the nodes, what is
	// placed on each, one leader, generation 1. The engine's leadership
	// may be moving (its leader stopped): they are given a few seconds
	// to say the same of it.
	agree := func(es []*Env, when string) {
		t.Helper()
		var views []nodesView
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			views = views[:0]
			for _, e := range es {
				views = append(views, e.nodes())
			}
			if leader(views[0]) != "" && !slices.ContainsFunc(views, func(v nodesView) bool { return !reflect.DeepEqual(v, views[0]) }) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: the daemons do not agree on the nodes and one leader: %+v", when, views)
				return
			}
		}
		for name, n := range views[0] {
			if !reflect.DeepEqual(n.Instances, placed[name]) {
				t.Errorf("%s: node %s runs %v, want %v as placed", when, name, n.Instances, placed[name])
			}
		}
		for _, e := range es {
			if gen, _ := e.Status(); gen != 1 {
				t.Errorf("%s: generation %d through %s, want 1", when, gen, e.Root)
			}
		}
	}
	agree(envs, "after the deploy")

	// n3's daemon stops (its services keep running); the others go on
	// with two members of three.
	last := envs[2]
	last.StopDaemon()
	agree(envs[:2], "without n3's member")
	if _, err := os.Stat(filepath.Join(last.Root, "etcd", "member", "wal")); err != nil {
		t.Fatalf("n3's member data: %v", err)
	}
	// And rejoins on its data.
	last.StartDaemonArgs(args[2]...)
	agree(envs, "n3 back")
	if code, _, body := last.Get("shop.example", "/"); code != 200 {
		t.Errorf("shop through n3 back: %d %q", code, body)
	}
	// One after the other, each daemon stops — the last without a
	// quorum of members, which a stopping daemon does not wait for.
	for _, e := range slices.Backward(envs) {
		e.Shutdown()
	}
}
