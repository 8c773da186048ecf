package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPlacementOnOneNode: on a single machine the node offers what
// hostel serve says (--labels, --capacity) and placement holds to it: a
// spec that asks more replicas than there are nodes, a label the node
// lacks, or more memory than it gives is refused before anything starts,
// naming the service (exit 1, nothing changed); one that fits runs, and
// `hostel nodes` shows the node, its use and what it runs.
func TestPlacementOnOneNode(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--node", "n1", "--labels", "zone=eu", "--capacity", "cpu=2,memory=1G")
	spec := func(extra map[string]any) map[string]any {
		web := e.App("shop", map[string]any{"domains": []string{"shop.example"}, "memory": "256M"})
		for k, v := range extra {
			web[k] = v
		}
		return map[string]any{"services": map[string]any{"shop": web}}
	}
	for _, tc := range []struct {
		name  string
		extra map[string]any
		want  string
	}{
		{"replicas", map[string]any{"replicas": 2}, `service "shop": replicas 2 need 2 nodes`},
		{"label", map[string]any{"placement": map[string]any{"labels": map[string]string{"zone": "us"}}}, `service "shop": needs a node with label zone=us`},
		{"memory", map[string]any{"memory": "2G"}, `service "shop": needs a node with 2G memory free; none has it; too full: n1`},
		{"pin", map[string]any{"placement": map[string]any{"node": "n2"}}, `service "shop": placement.node "n2" is not a node of the cluster (nodes: n1)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.WriteSpec(spec(tc.extra))
			_, errOut, code := e.Run("deploy", "--no-confirm")
			if code != 1 || !strings.Contains(errOut, "nothing changed") || !strings.Contains(errOut, tc.want) {
				t.Errorf("deploy: exit %d %q, want 1 saying %q, nothing changed", code, errOut, tc.want)
			}
			if gen, _ := e.Status(); gen != 0 {
				t.Errorf("generation %d after a refused deploy", gen)
			}
		})
	}
	e.WriteSpec(spec(map[string]any{"placement": map[string]any{"labels": map[string]string{"zone": "eu"}, "node": "n1"}}))
	e.MustRun("deploy", "--no-confirm")
	if code, _, _ := e.Get("shop.example", "/"); code != 200 {
		t.Errorf("shop.example: %d", code)
	}
	var ns struct {
		Nodes []struct {
			Name     string
			Labels   map[string]string
			Capacity struct {
				CPU    float64
				Memory int64 `json:"memory_bytes"`
			}
			Use struct {
				CPU    float64
				Memory int64 `json:"memory_bytes"`
			}
			Leader    bool
			Instances []string
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("nodes", "--json")), &ns); err != nil {
		t.Fatal(err)
	}
	if len(ns.Nodes) != 1 {
		t.Fatalf("nodes: %+v, want n1 alone", ns.Nodes)
	}
	n := ns.Nodes[0]
	if n.Name != "n1" || n.Labels["zone"] != "eu" || n.Capacity.CPU != 2 || n.Capacity.Memory != 1<<30 || n.Use.Memory != 256<<20 || !n.Leader || len(n.Instances) != 1 || !strings.HasPrefix(n.Instances[0], "shop-") {
		t.Errorf("node %+v, want n1, zone=eu, 2 cpu and 1G, 256M used by shop, leading", n)
	}
	_, st := e.fullStatus()
	if st["shop"]["node"] != "n1" {
		t.Errorf("status of shop: node %v, want n1", st["shop"]["node"])
	}
	for _, args := range [][]string{{"--labels", "zone"}, {"--capacity", "cpu=0"}, {"--capacity", "disk=1G"}, {"--node", "a/b"}} {
		_, errOut, code := e.Run(append([]string{"serve", "--http", "127.0.0.1:0", "--https", ""}, args...)...)
		if code != 2 || !strings.Contains(errOut, args[0]) {
			t.Errorf("hostel serve %v: exit %d %q, want 2 naming %s", args, code, errOut, args[0])
		}
	}
}
