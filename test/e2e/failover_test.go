package e2e

import (
	"encoding/json"
	"flag"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var kills = flag.Int("kills", 1, "TestClusterFailover: how many times a node dies (make bench: 20)")

// failoverSpec is shop with a replica on two nodes, and solo and extra
// with one each: placed, solo shares a node with one of shop's.
func failoverSpec(e *Env) map[string]any {
	return map[string]any{"services": map[string]any{
		"shop":  e.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": "Shop"}, "domains": []string{"shop.example"}, "replicas": 2}),
		"solo":  e.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": "Solo"}, "domains": []string{"solo.example"}}),
		"extra": e.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": "Extra"}, "domains": []string{"extra.example"}}),
	}}
}

// drainedNodes returns what `hostel nodes --json` says of each node:
// whether it is drained, and what is placed on it.
func (e *Env) drainedNodes() map[string]struct {
	Drained   bool
	Instances []string
} {
	e.t.Helper()
	var ns struct {
		Nodes []struct {
			Name      string
			Drained   bool
			Instances []string
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("nodes", "--json")), &ns); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]struct {
		Drained   bool
		Instances []string
	}{}
	for _, n := range ns.Nodes {
		out[n.Name] = struct {
			Drained   bool
			Instances []string
		}{n.Drained, n.Instances}
	}
	return out
}

// runsOn returns the node whose instances include service's, other than
// not; "" if none.
func runsOn(view nodesView, service, not string) string {
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range view {
			if !yield(n) {
				return
			}
		}
	}) {
		if name == not {
			continue
		}
		if slices.ContainsFunc(view[name].Instances, func(in string) bool { return strings.HasPrefix(in, service+"-") }) {
			return name
		}
	}
	return ""
}

// TestClusterFailover: in a cluster of three, the node that runs solo —
// and one of shop's two replicas — dies (its daemon and its services'
// processes killed with SIGKILL): shop, asked through the other two
// routers all along, fails no request; solo answers again through them
// once the engine placed it on a node left (the time is reported), and
// the node, started again, rejoins running nothing that moved. Then a
// node is drained under load — shop fails no request, the node runs
// nothing and says it is drained — and undrained; an unknown node is an
// input error.
func TestClusterFailover(t *testing.T) {
	c := startCluster(t)
	lead := c.leader(t)
	lead.WriteSpec(failoverSpec(lead))
	lead.MustRun("deploy", "--no-confirm")

	var recovered []time.Duration
	for round := range *kills {
		view := c.envs[0].nodes()
		if c.envs[0].daemon == nil {
			view = c.envs[1].nodes()
		}
		name := runsOn(view, "solo", "")
		if name == "" {
			t.Fatalf("round %d: solo runs nowhere: %+v", round, view)
		}
		victim := c.envs[slices.Index(c.names, name)]
		if !slices.ContainsFunc(view[name].Instances, func(in string) bool { return strings.HasPrefix(in, "shop-") }) {
			t.Logf("round %d: no replica of shop on %s, which dies", round, name)
		}
		var others []string
		var asker *Env
		for i, e := range c.envs {
			if e != victim {
				others = append(others, e.HTTP)
				asker = c.envs[i]
			}
		}
		var took time.Duration
		failures, n := trafficOn(others, 2, "shop.example", func() {
			pids := victim.processes()
			victim.killDaemon()
			for pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			died := time.Now()
			if d := firstAnswer(others[0], "solo.example", died, 60*time.Second); d < 60*time.Second {
				took = d
			}
		}, nil)
		if took == 0 {
			t.Fatalf("round %d: solo did not answer through %s within 60 s of %s's death", round, others[0], name)
		}
		recovered = append(recovered, took)
		led := ""
		if view[name].Leader {
			led = " (it led the engine)"
		}
		t.Logf("round %d: %s died%s; solo answered again after %s; %d requests to shop through the other routers, %d failed", round, name, led, took.Round(time.Millisecond), n, len(failures))
		// Only what was in flight to the dead node may fail — at most one
		// request per client, cut off (502) — never one sent after.
		inFlight := 0
		for _, f := range failures {
			if strings.Contains(f, ": 502 ") {
				inFlight++
			} else {
				t.Errorf("round %d: a request to shop failed while %s died: %s", round, name, f)
			}
		}
		if inFlight > 2*len(others) {
			t.Errorf("round %d: %d requests to shop were cut off while %s died, more than its %d clients had in flight; first: %v", round, inFlight, name, 2*len(others), failures[0])
		}
		after := asker.nodes()
		if got := runsOn(after, "solo", ""); got == "" || got == name {
			t.Errorf("round %d: solo is placed on %q, want a node left", round, got)
		}
		if l := leader(after); l == "" || l == name {
			t.Errorf("round %d: %q leads the engine once %s died, want a node left", round, l, name)
		}

		// It comes back: a node with nothing placed on it.
		victim.StartDaemonArgs(victim.args...)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			v := asker.nodes()
			if _, ok := v[name]; ok && len(v) == 3 {
				if in := v[name].Instances; len(in) != 0 && !slices.ContainsFunc(in, func(s string) bool { return strings.HasPrefix(s, "shop-") }) {
					t.Errorf("round %d: %s, back, is placed %v, want nothing but a replica of shop", round, name, in)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %s did not rejoin: %+v", round, name, v)
			}
		}
	}
	if len(recovered) > 0 {
		slices.Sort(recovered)
		t.Logf("failover over %d kills: p50 %s, p99 %s, max %s (target ≤ 10s)", len(recovered),
			recovered[len(recovered)/2].Round(time.Millisecond), recovered[(len(recovered)*99)/100].Round(time.Millisecond), recovered[len(recovered)-1].Round(time.Millisecond))
	}

	// Drain a node of shop's under load, through all three routers.
	lead = c.leader(t)
	view := lead.nodes()
	drainee := runsOn(view, "shop", "")
	var addrs []string
	for _, e := range c.envs {
		addrs = append(addrs, e.HTTP)
	}
	var out string
	failures, n := trafficOn(addrs, 2, "shop.example", func() {
		time.Sleep(300 * time.Millisecond)
		out = c.envs[2].MustRun("nodes", "drain", drainee)
	}, nil)
	t.Logf("drain of %s: %q; %d requests to shop through three routers, %d failed", drainee, out, n, len(failures))
	if len(failures) != 0 {
		t.Errorf("%d of %d requests to shop failed during the drain of %s; first: %v", len(failures), n, drainee, failures[0])
	}
	if !strings.Contains(out, "moved shop-") || !strings.Contains(out, "drained "+drainee) {
		t.Errorf("hostel nodes drain %s said %q, want what moved", drainee, out)
	}
	for _, e := range c.envs {
		if got := e.drainedNodes()[drainee]; !got.Drained || len(got.Instances) != 0 {
			t.Errorf("through %s, drained %s is %+v, want drained with nothing placed", e.Root, drainee, got)
		}
	}
	for _, tc := range []struct{ host, want string }{{"shop.example", "Shop"}, {"solo.example", "Solo"}, {"extra.example", "Extra"}} {
		if code, _, body := c.envs[0].Get(tc.host, "/"); code != 200 || !strings.Contains(body, tc.want) {
			t.Errorf("%s after the drain: %d %q", tc.host, code, body)
		}
	}
	var undrained struct {
		Node       string
		WasDrained bool `json:"was_drained"`
	}
	if out := c.envs[1].MustRun("nodes", "undrain", drainee, "--json"); json.Unmarshal([]byte(out), &undrained) != nil || undrained.Node != drainee || !undrained.WasDrained {
		t.Errorf("hostel nodes undrain %s --json said %q", drainee, out)
	}
	if out := c.envs[1].MustRun("nodes", "undrain", drainee); !strings.Contains(out, drainee+" was not drained") {
		t.Errorf("hostel nodes undrain %s, again, said %q", drainee, out)
	}
	if got := lead.drainedNodes()[drainee]; got.Drained {
		t.Errorf("%s is still drained after undrain", drainee)
	}
	for _, args := range [][]string{{"nodes", "drain", "nope"}, {"nodes", "undrain", "nope"}} {
		if _, errOut, code := lead.Run(args...); code != 2 || !strings.Contains(errOut, `no node "nope"`) {
			t.Errorf("hostel %s: exit %d, %q; want 2 naming the node", strings.Join(args, " "), code, errOut)
		}
	}
}
