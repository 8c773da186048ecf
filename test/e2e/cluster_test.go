package e2e

import (
	"flag"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/store/etcd"
	"hostel/internal/store/etcd/etcdtest"
)

// cluster is three daemons on three loopback addresses, each with an
// etcd member of its own (--etcd-embed --etcd-peers over https://, one
// CA) and a node-to-node port (--advertise): a cluster with nothing else
// to run.
type cluster struct {
	names []string
	envs  []*Env
	// etcd is a client's configuration for the members: their client
	// URLs, a certificate of the cluster's CA.
	etcd etcd.Config
}

// startCluster starts the cluster; the daemons run on first's roots (a
// machine that ran alone before), the first ones, when given.
func startCluster(t *testing.T, first ...*Env) *cluster {
	t.Helper()
	ips := []net.IP{net.IPv4(127, 0, 0, 21), net.IPv4(127, 0, 0, 22), net.IPv4(127, 0, 0, 23)}
	return startClusterOn(t, ips, etcdtest.PeerURLs(t, "https", ips...), nil, first...)
}

// startClusterOn starts the cluster's nodes on ips, their etcd members'
// peers at urls, each daemon run under wrap[i] when given (a network
// namespace of its own: netns_test.go).
func startClusterOn(t *testing.T, ips []net.IP, urls []url.URL, wrap [][]string, first ...*Env) *cluster {
	t.Helper()
	dir := t.TempDir()
	ca := etcdtest.NewCA(t, dir, "cluster-ca")
	c := &cluster{names: []string{"n1", "n2", "n3"}}
	var peers []string
	for i, name := range c.names {
		peers = append(peers, name+"="+urls[i].String())
		u := etcd.ClientURL(urls[i])
		c.etcd.Endpoints = append(c.etcd.Endpoints, u.String())
	}
	clientCert, clientKey := ca.Node(t, "test-client", etcdtest.Loopback)
	tc, err := etcd.TLSConfig(clientCert, clientKey, ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	c.etcd.TLS = tc
	args := make([][]string, len(c.names))
	for i, name := range c.names {
		cert, key := ca.Node(t, name, ips[i], etcdtest.Loopback)
		if i < len(first) {
			c.envs = append(c.envs, first[i])
		} else {
			c.envs = append(c.envs, NewEnv(t))
		}
		if wrap != nil {
			c.envs[i].Wrap = wrap[i]
		}
		args[i] = []string{"--http", ips[i].String() + ":0", "--https", "", "--node", name,
			"--etcd-embed", "--etcd-peers", strings.Join(peers, ","),
			"--etcd-cert", cert, "--etcd-key", key, "--etcd-ca", ca.CertFile,
			"--advertise", ips[i].String() + ":0"}
	}
	// Each member waits for a quorum before its daemon answers: they
	// start together.
	start := time.Now()
	var wg sync.WaitGroup
	for i, e := range c.envs {
		e.t = goTB{t}
		wg.Go(func() { e.StartDaemonArgs(args[i]...) })
	}
	wg.Wait()
	for _, e := range c.envs {
		e.t = t
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("the cluster started in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		stop := time.Now()
		for _, e := range slices.Backward(c.envs) {
			if e.daemon != nil {
				e.Shutdown()
			}
		}
		t.Logf("the cluster stopped in %s", time.Since(stop).Round(time.Millisecond))
	})
	return c
}

// leader is the daemon that leads the engine, as the first says.
func (c *cluster) leader(t *testing.T) *Env {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if name := leader(c.envs[0].nodes()); name != "" {
			return c.envs[slices.Index(c.names, name)]
		}
		if time.Now().After(deadline) {
			t.Fatal("no daemon leads the engine")
		}
	}
}

// tenServices is a spec of ten services over three nodes: shop with a
// replica on each and two more shops, quotes on two nodes, three blogs
// that need it (their QUOTES_URL reaching it wherever it runs), and three
// wikis pinned one to a node (their state is a node's).
func tenServices(e *Env, shopTitle string) map[string]any {
	health := map[string]any{"path": "/healthz"}
	svcs := map[string]any{
		"shop": e.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": shopTitle}, "domains": []string{"shop.example"},
			"replicas": 3, "stop_grace": "3s"}),
		"shopa":  e.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": "Shop A"}, "domains": []string{"shopa.example"}}),
		"shopb":  e.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": "Shop B"}, "domains": []string{"shopb.example"}}),
		"quotes": e.App("quotes", map[string]any{"env": map[string]string{"GREETING": "Hi"}, "domains": []string{"quotes.example"}, "health": health, "replicas": 2}),
	}
	for i := 1; i <= 3; i++ {
		svcs[fmt.Sprintf("blog%d", i)] = e.App("blog", map[string]any{"needs": []string{"quotes"},
			"domains": []string{fmt.Sprintf("blog%d.example", i)}, "health": health})
		svcs[fmt.Sprintf("wiki%d", i)] = e.App("wiki", map[string]any{"domains": []string{fmt.Sprintf("wiki%d.example", i)},
			"health": health, "placement": map[string]any{"node": fmt.Sprintf("n%d", i)}})
	}
	return map[string]any{"services": svcs}
}

// TestClusterOfThree: three machines' daemons (network addresses of their
// own, three etcd members) run a ten-service spec with replicas deployed
// through the daemon that leads; every node's router answers every
// domain, forwarding to another node what does not run on it; shop,
// redeployed under load through all three routers, fails no request; the
// commit switches every router, within a skew the test reports.
func TestClusterOfThree(t *testing.T) {
	c := startCluster(t)
	lead := c.leader(t)
	lead.WriteSpec(tenServices(lead, "Shop one"))
	lead.MustRun("deploy", "--no-confirm")

	// Placed: every instance somewhere, replicas on distinct nodes, the
	// wikis where they are pinned; every daemon says the same.
	view := lead.nodes()
	count := map[string]int{}
	for name, n := range view {
		for _, in := range n.Instances {
			svc, _, _ := strings.Cut(in, "-")
			count[svc]++
			if strings.HasPrefix(svc, "wiki") && "n"+strings.TrimPrefix(svc, "wiki") != name {
				t.Errorf("%s runs on %s, pinned elsewhere", in, name)
			}
		}
	}
	for svc, want := range map[string]int{"shop": 3, "shopa": 1, "shopb": 1, "quotes": 2, "blog1": 1, "blog2": 1, "blog3": 1, "wiki1": 1, "wiki2": 1, "wiki3": 1} {
		if count[svc] != want {
			t.Errorf("%s has %d instances, want %d (placed: %+v)", svc, count[svc], want, view)
		}
	}
	for _, e := range c.envs {
		if gen, _ := e.Status(); gen != 1 {
			t.Errorf("generation %d through %s, want 1", gen, e.Root)
		}
	}

	// Every domain through every node's router.
	for i, e := range c.envs {
		for _, tc := range []struct{ host, path, want string }{
			{"shop.example", "/", "Shop one"}, {"shopa.example", "/", "Shop A"}, {"shopb.example", "/", "Shop B"},
			{"quotes.example", "/quote", `"greeting":"Hi"`},
			{"blog1.example", "/", "Hi! Quote of the day"}, {"blog2.example", "/", "Hi! Quote of the day"}, {"blog3.example", "/", "Hi! Quote of the day"},
			{"wiki1.example", "/healthz", "ok"}, {"wiki2.example", "/healthz", "ok"}, {"wiki3.example", "/healthz", "ok"},
		} {
			if code, _, body := e.Get(tc.host, tc.path); code != 200 || !strings.Contains(body, tc.want) {
				t.Errorf("%s%s through %s: %d %q, want 200 with %q", tc.host, tc.path, c.names[i], code, body, tc.want)
			}
		}
	}

	// shop redeployed under load through the three routers, -redeploys
	// times; each router's first answer from the new version is when it
	// switched.
	var skews []time.Duration
	for round := range *redeploys {
		title := []string{"Shop two", "Shop one"}[round%2]
		skew, ok := redeployUnderLoad(t, c, lead, title)
		if !ok {
			break
		}
		skews = append(skews, skew)
	}
	if len(skews) > 0 {
		slices.Sort(skews)
		t.Logf("the routers' switch skew over %d redeploys: min %s, median %s, max %s (target ≤ 100ms)", len(skews),
			skews[0].Round(100*time.Microsecond), skews[len(skews)/2].Round(100*time.Microsecond), skews[len(skews)-1].Round(100*time.Microsecond))
	}
	for _, e := range c.envs {
		if gen, _ := e.Status(); gen != 1+uint64(*redeploys) {
			t.Errorf("generation %d through %s after %d redeploys, want %d", gen, e.Root, *redeploys, 1+*redeploys)
		}
	}
}

var redeploys = flag.Int("redeploys", 1, "TestClusterOfThree: how many times shop is redeployed under load (make bench: 20)")

// redeployUnderLoad deploys shop with title through lead while two
// clients per router ask for it, and returns the skew between the first
// and the last router's switch to it; false if a request failed or a
// router did not switch.
func redeployUnderLoad(t *testing.T, c *cluster, lead *Env, title string) (time.Duration, bool) {
	t.Helper()
	switched := make([]atomic.Int64, len(c.envs)) // unix nanoseconds
	var addrs []string
	for _, e := range c.envs {
		addrs = append(addrs, e.HTTP)
	}
	failures, n := trafficOn(addrs, 2, "shop.example", func() {
		time.Sleep(300 * time.Millisecond)
		lead.WriteSpec(tenServices(lead, title))
		lead.MustRun("deploy", "--no-confirm")
	}, func(i int, body string) {
		if strings.HasPrefix(body, title+" ") {
			switched[i].CompareAndSwap(0, time.Now().UnixNano())
		}
	})
	good := true
	if len(failures) != 0 {
		t.Errorf("%d of %d requests failed during the redeploy to %q; first: %v", len(failures), n, title, failures[0])
		good = false
	}
	var first, last int64
	for i := range switched {
		at := switched[i].Load()
		if at == 0 {
			t.Errorf("router of %s never answered from %q", c.names[i], title)
			good = false
			continue
		}
		if first == 0 || at < first {
			first = at
		}
		last = max(last, at)
	}
	skew := time.Duration(last - first)
	t.Logf("%d requests through three routers during the redeploy to %q, %d failed; the routers switched within %s of each other",
		n, title, len(failures), skew.Round(100*time.Microsecond))
	return skew, good
}

// TestOneMachineToThree: the README's "From one machine to three". A
// machine runs alone (bbolt) as node n1; its daemon stops (SIGTERM: the
// services run on) and starts again as a member of a three-member
// cluster, beside two new machines. Its generations carry over (moved
// into etcd at that first start), its service keeps its process, and
// every node's router answers its domain; the next deploy spreads it.
func TestOneMachineToThree(t *testing.T) {
	alone := NewEnv(t)
	alone.StartDaemonArgs("--http", "127.0.0.21:0", "--https", "", "--node", "n1")
	alone.WriteSpec(map[string]any{"services": map[string]any{
		"shop": alone.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": "Shop one"}, "domains": []string{"shop.example"}}),
	}})
	alone.MustRun("deploy", "--no-confirm")
	_, before := alone.Status()
	alone.StopDaemon()

	c := startCluster(t, alone)
	gen, after := alone.Status()
	if gen != 1 || after["shop"].PID != before["shop"].PID || after["shop"].PID == 0 {
		t.Fatalf("after the move: generation %d, shop %+v; want generation 1 and shop's process kept (pid %d)", gen, after["shop"], before["shop"].PID)
	}
	for i, e := range c.envs {
		if code, _, body := e.Get("shop.example", "/"); code != 200 || !strings.HasPrefix(body, "Shop one") {
			t.Errorf("shop through %s: %d %q", c.names[i], code, body)
		}
		if gen, _ := e.Status(); gen != 1 {
			t.Errorf("generation %d through %s, want 1", gen, c.names[i])
		}
	}
	// A deploy through the leader, with a replica on each node.
	lead := c.leader(t)
	lead.WriteSpec(map[string]any{"services": map[string]any{
		"shop": lead.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": "Shop one"}, "domains": []string{"shop.example"}, "replicas": 3}),
	}})
	lead.MustRun("deploy", "--no-confirm")
	for name, n := range lead.nodes() {
		if len(n.Instances) != 1 {
			t.Errorf("node %s runs %v, want one replica of shop", name, n.Instances)
		}
	}
	if _, st := alone.Status(); st["shop"].PID != before["shop"].PID {
		t.Errorf("shop's process on n1 changed with a change of replicas alone: pid %d, was %d", st["shop"].PID, before["shop"].PID)
	}
}

// TestAcrossNodes: scale to zero, previews, exclusive services and
// callable old versions in a cluster. A service that sleeps after idle
// runs on n1; a request that reaches n2's router once it sleeps wakes it
// on n1 — where it is placed — and nothing starts on n2. A preview shares
// production's instances wherever they run (its request through n3 wakes
// production's on n1). An exclusive service redeployed under traffic
// through another node's router moves to no other node and fails no
// request. A kept callable version, called through n3, wakes on n2,
// where it is placed.
func TestAcrossNodes(t *testing.T) {
	c := startCluster(t)
	lead := c.leader(t)
	n1, n2, n3 := c.envs[0], c.envs[1], c.envs[2]
	lock := lockApp(t)
	write := func(env *Env, lockV, apiTitle string) {
		env.WriteSpec(map[string]any{"services": map[string]any{
			"quiet": env.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": "Quiet"}, "domains": []string{"quiet.example"},
				"idle": "1s", "placement": map[string]any{"node": "n1"}}),
			"lock": map[string]any{"package": lock, "exec": []string{"bin/lockapp"}, "env": map[string]string{"V": lockV}, "exclusive": true,
				"health": map[string]any{"path": "/healthz"}, "domains": []string{"lock.test"}},
			"api": env.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": apiTitle}, "domains": []string{"api.example"},
				"old_versions": "callable", "placement": map[string]any{"node": "n2"}}),
		}})
	}
	write(lead, "1", "API one")
	lead.MustRun("deploy", "--no-confirm")
	v1 := lead.currentVersions()
	asleep := func(what string) {
		t.Helper()
		waitUntil(t, what, func() bool {
			_, st := n1.Status()
			return st["quiet"].State == "idle"
		})
	}
	asleep("quiet asleep on n1")
	t0 := time.Now()
	code, _, body := n2.Get("quiet.example", "/")
	if code != 200 || !strings.HasPrefix(body, "Quiet") {
		t.Fatalf("quiet through n2 while it sleeps on n1: %d %q, want it woken on n1 and answering", code, body)
	}
	t.Logf("woken on n1 through n2 in %s", time.Since(t0).Round(100*time.Microsecond))
	_, st := n1.Status()
	if st["quiet"].State != "running" || st["quiet"].PID == 0 {
		t.Errorf("quiet on n1 after the request through n2: %+v, want it running", st["quiet"])
	}
	onlyOn := func(prefix, node string) {
		t.Helper()
		for name, n := range lead.nodes() {
			for _, in := range n.Instances {
				if strings.HasPrefix(in, prefix) && name != node {
					t.Errorf("%s placed on %s: %s, want it on %s alone", prefix, name, in, node)
				}
			}
		}
	}
	onlyOn("quiet-", "n1")

	t.Run("a preview shares production's instances", func(t *testing.T) {
		asleep("quiet asleep on n1 again")
		write(lead, "1", "API preview")
		lead.MustRun("deploy", "--env", "pr-1", "--no-confirm")
		if code, _, body := n3.Get("quiet.pr-1.hostel.internal", "/"); code != 200 || !strings.HasPrefix(body, "Quiet") {
			t.Errorf("the preview's quiet through n3: %d %q, want production's, woken on n1", code, body)
		}
		if code, _, body := n3.Get("api.pr-1.hostel.internal", "/"); code != 200 || !strings.HasPrefix(body, "API preview") {
			t.Errorf("the preview's api through n3: %d %q", code, body)
		}
		for name, n := range lead.nodes() {
			for _, in := range n.Instances {
				if strings.HasPrefix(in, "quiet-") && strings.Contains(in, "@") {
					t.Errorf("the preview runs its own quiet on %s: %s, want production's shared", name, in)
				}
			}
		}
		onlyOn("quiet-", "n1")
		lead.MustRun("env", "rm", "pr-1")
	})

	t.Run("an exclusive service moves to no other node", func(t *testing.T) {
		var where string
		for name, n := range lead.nodes() {
			for _, in := range n.Instances {
				if strings.HasPrefix(in, "lock-") {
					where = name
				}
			}
		}
		stop := make(chan struct{})
		router := n1
		if where == "n1" {
			router = n3
		}
		tr := router.startTraffic("lock.test", stop)
		for _, v := range []string{"2", "3"} {
			write(lead, v, "API one")
			lead.MustRun("deploy", "--no-confirm")
			if code, _, body := router.Get("lock.test", "/"); code != 200 || strings.TrimSpace(body) != "v"+v {
				t.Errorf("lock after the deploy of v%s: %d %q", v, code, body)
			}
			onlyOn("lock-", where)
		}
		close(stop)
		<-tr.done
		if tr.bad.Load() != 0 || tr.ok.Load() == 0 {
			t.Errorf("traffic through the handovers: %d ok, %d failed %v", tr.ok.Load(), tr.bad.Load(), tr.errs)
		}
	})

	t.Run("a callable old version wakes where it is placed", func(t *testing.T) {
		write(lead, "3", "API two")
		lead.MustRun("deploy", "--no-confirm")
		old := "api-" + v1["api"]
		code, _, body := n3.Get(old+".hostel.internal", "/")
		if code != 200 || !strings.HasPrefix(body, "API one") {
			t.Fatalf("%s through n3: %d %q, want the old api, woken on n2", old, code, body)
		}
		for i, e := range c.envs {
			runs := slices.Contains(slices.Collect(maps.Values(e.processes())), old)
			if want := e == n2; runs != want {
				t.Errorf("%s runs %s: %v, want %v", c.names[i], old, runs, want)
			}
		}
	})
}
