package place

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"hostel/internal/spec"
)

// checkPlacement fails t unless p places exactly the instances of want,
// each on its replicas' number of distinct nodes of nodes that take
// instances, have its labels and are the node it is pinned to, and no
// node is asked for more memory or cpu than it has.
func checkPlacement(t testing.TB, want []Instance, nodes []Node, p Placement) {
	t.Helper()
	byName := map[string]Node{}
	for _, n := range nodes {
		byName[n.Name] = n
	}
	mem := map[string]int64{}
	cpu := map[string]int64{}
	if len(p) != len(want) {
		t.Fatalf("%d instances placed, want %d", len(p), len(want))
	}
	for _, in := range want {
		on, ok := p[in.Key]
		if !ok {
			t.Fatalf("instance %s not placed", in.Key)
		}
		if len(on) != in.Replicas {
			t.Fatalf("instance %s on %d nodes %v, want its %d replicas", in.Key, len(on), on, in.Replicas)
		}
		if !slices.IsSorted(on) || len(slices.Compact(slices.Clone(on))) != len(on) {
			t.Fatalf("instance %s on %v: want distinct nodes, sorted", in.Key, on)
		}
		for _, name := range on {
			n, ok := byName[name]
			switch {
			case !ok:
				t.Fatalf("instance %s on %q, which is not a node", in.Key, name)
			case n.Unschedulable:
				t.Fatalf("instance %s on drained node %s", in.Key, name)
			case in.Node != "" && in.Node != name:
				t.Fatalf("instance %s on %s, pinned to %s", in.Key, name, in.Node)
			}
			for k, v := range in.Labels {
				if got, ok := n.Labels[k]; !ok || got != v {
					t.Fatalf("instance %s on %s, which has no label %s=%s", in.Key, name, k, v)
				}
			}
			mem[name] += in.Memory
			cpu[name] += cpuUnits(in.CPU)
		}
	}
	for name, m := range mem {
		if n := byName[name]; m > n.Memory || cpu[name] > cpuUnits(n.CPU) {
			t.Fatalf("node %s asked for %d bytes, %d cpu units; it has %d, %d", name, m, cpu[name], n.Memory, cpuUnits(n.CPU))
		}
	}
}

// nodesN makes n nodes node-00…, each with cpu cores and mem bytes.
func nodesN(n int, cpu float64, mem int64) []Node {
	var out []Node
	for i := range n {
		out = append(out, Node{Name: fmt.Sprintf("node-%02d", i), CPU: cpu, Memory: mem})
	}
	return out
}

// TestRules: each rule of placement on its own.
func TestRules(t *testing.T) {
	const G = 1 << 30
	eu := map[string]string{"zone": "eu"}
	tests := []struct {
		name  string
		want  []Instance
		nodes []Node
		cur   Placement
		place Placement // nil: only that the rules hold
		err   string
	}{
		{
			name:  "replicas on distinct nodes",
			want:  []Instance{{Key: "api-1", Replicas: 3}},
			nodes: nodesN(3, 0, 0),
			place: Placement{"api-1": {"node-00", "node-01", "node-02"}},
		},
		{
			name:  "replicas never share a node",
			want:  []Instance{{Key: "api-1", Replicas: 3}},
			nodes: nodesN(2, 0, 0),
			err:   `service "api": replicas 3 need 3 nodes; 2 have it: node-00, node-01`,
		},
		{
			name:  "nothing requested fits a node with no capacity",
			want:  []Instance{{Key: "api-1", Replicas: 1}},
			nodes: nodesN(1, 0, 0),
			place: Placement{"api-1": {"node-00"}},
		},
		{
			name:  "a request does not fit a node with no capacity",
			want:  []Instance{{Key: "api-1", Replicas: 1, CPU: 0.01}},
			nodes: nodesN(1, 0, 0),
			err:   `service "api": needs a node with 0.01 cpu free; none has it; too full: node-00 (0 cpu free)`,
		},
		{
			name:  "requests add up to exactly the capacity",
			want:  []Instance{{Key: "a-1", Replicas: 1, CPU: 0.1, Memory: G / 2}, {Key: "b-1", Replicas: 1, CPU: 0.2, Memory: G / 2}, {Key: "c-1", Replicas: 1, CPU: 0.7}},
			nodes: nodesN(1, 1, G),
			place: Placement{"a-1": {"node-00"}, "b-1": {"node-00"}, "c-1": {"node-00"}},
		},
		{
			name:  "one cpu step over",
			want:  []Instance{{Key: "a-1", Replicas: 1, CPU: 0.5}, {Key: "b-1", Replicas: 1, CPU: 0.50001}},
			nodes: nodesN(1, 1, 0),
			err:   `service "a": needs a node with 0.5 cpu free; none has it; too full: node-00 (0.49999 cpu free)`,
		},
		{
			name:  "labels must all match",
			want:  []Instance{{Key: "api-1", Replicas: 1, Labels: map[string]string{"zone": "eu", "disk": "ssd"}}},
			nodes: []Node{{Name: "a", Labels: eu}, {Name: "b", Labels: map[string]string{"zone": "eu", "disk": "ssd", "gpu": "no"}}, {Name: "c", Labels: map[string]string{"disk": "ssd"}}},
			place: Placement{"api-1": {"b"}},
		},
		{
			name:  "pinned, though another node is empty",
			want:  []Instance{{Key: "a-1", Replicas: 1}, {Key: "db-1", Replicas: 1, Node: "node-00"}},
			nodes: nodesN(2, 0, 0),
			place: Placement{"a-1": {"node-01"}, "db-1": {"node-00"}},
		},
		{
			name:  "kept where it runs, though another node is empty",
			want:  []Instance{{Key: "a-1", Replicas: 1}, {Key: "b-1", Replicas: 1}},
			nodes: nodesN(3, 0, 0),
			cur:   Placement{"a-1": {"node-02"}, "b-1": {"node-02"}},
			place: Placement{"a-1": {"node-02"}, "b-1": {"node-02"}},
		},
		{
			name:  "a new version goes where the old one runs",
			want:  []Instance{{Key: "a-2", Replicas: 2}},
			nodes: nodesN(4, 0, 0),
			cur:   Placement{"a-1": {"node-01", "node-03"}},
			place: Placement{"a-2": {"node-01", "node-03"}},
		},
		{
			name:  "a preview's new version goes where its old one runs, not production's",
			want:  []Instance{{Key: "a-3@pr-1", Replicas: 1}},
			nodes: nodesN(3, 0, 0),
			cur:   Placement{"a-1": {"node-00"}, "a-2@pr-1": {"node-02"}},
			place: Placement{"a-3@pr-1": {"node-02"}},
		},
		{
			name:  "another service's nodes are not preferred",
			want:  []Instance{{Key: "ab-2", Replicas: 1}},
			nodes: nodesN(2, 0, 0),
			cur:   Placement{"a-1": {"node-01"}, "b-ab-1": {"node-01"}},
			place: Placement{"ab-2": {"node-00"}},
		},
		{
			name:  "the old version's node is full: the next least loaded",
			want:  []Instance{{Key: "a-1", Replicas: 1, Memory: G}, {Key: "a-2", Replicas: 1, Memory: G}},
			nodes: nodesN(3, 0, G),
			cur:   Placement{"a-1": {"node-01"}},
			place: Placement{"a-1": {"node-01"}, "a-2": {"node-00"}},
		},
		{
			name:  "what the current placement says of unknown nodes and instances is ignored",
			want:  []Instance{{Key: "a-1", Replicas: 1}},
			nodes: nodesN(2, 0, 0),
			cur:   Placement{"a-1": {"gone", "gone"}, "b-1": {"node-00"}},
			place: Placement{"a-1": {"node-00"}},
		},
		{
			name:  "a current placement on too many nodes keeps the replicas' number",
			want:  []Instance{{Key: "a-1", Replicas: 1}},
			nodes: nodesN(2, 0, 0),
			cur:   Placement{"a-1": {"node-01", "node-00", "node-01"}},
			place: Placement{"a-1": {"node-00"}},
		},
		{
			name:  "a drained node keeps nothing",
			want:  []Instance{{Key: "a-1", Replicas: 1}},
			nodes: []Node{{Name: "a", Unschedulable: true}, {Name: "b"}},
			cur:   Placement{"a-1": {"a"}},
			place: Placement{"a-1": {"b"}},
		},
		{
			name:  "least loaded by the share requested, not the count",
			want:  []Instance{{Key: "big-1", Replicas: 1, Memory: 4 * G}, {Key: "s-1", Replicas: 1}, {Key: "s-2", Replicas: 1}, {Key: "t-1", Replicas: 1, Memory: G}},
			nodes: []Node{{Name: "a", Memory: 8 * G}, {Name: "b", Memory: 16 * G}},
			cur:   Placement{"big-1": {"a"}, "s-1": {"b"}, "s-2": {"b"}},
			place: Placement{"big-1": {"a"}, "s-1": {"b"}, "s-2": {"b"}, "t-1": {"b"}},
		},
		{
			name:  "a preview's instance is named with its environment",
			want:  []Instance{{Key: "api-1@pr-7", Replicas: 2}},
			nodes: nodesN(1, 0, 0),
			err:   `service "api" (environment pr-7): replicas 2 need 2 nodes; 1 has it: node-00`,
		},
		{
			name:  "a long list is cut",
			want:  []Instance{{Key: "api-1", Replicas: 9}},
			nodes: nodesN(8, 0, 0),
			err:   `service "api": replicas 9 need 9 nodes; 8 have it: node-00, node-01, node-02, node-03, node-04 and 3 more`,
		},
		{
			name:  "sizes are rounded down",
			want:  []Instance{{Key: "a-1", Replicas: 1, Memory: G + 1}, {Key: "b-1", Replicas: 1, Memory: 1 << 20}},
			nodes: []Node{{Name: "n", Memory: G + 1<<20}},
			err:   `service "b": needs a node with 1M memory free; none has it; too full: n (1023.9K memory free)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Make(tt.want, tt.nodes, tt.cur)
			if tt.err != "" {
				var pe *Error
				if !errors.As(err, &pe) || err.Error() != tt.err {
					t.Fatalf("got %v, %v; want the error %q", got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkPlacement(t, tt.want, tt.nodes, got)
			if tt.place != nil && !reflect.DeepEqual(got, tt.place) {
				t.Fatalf("got %v, want %v", got, tt.place)
			}
		})
	}
}

// TestBadInput: what no spec makes is an error, not an *Error.
func TestBadInput(t *testing.T) {
	tests := []struct {
		name  string
		want  []Instance
		nodes []Node
	}{
		{"instance twice", []Instance{{Key: "a-1", Replicas: 1}, {Key: "a-1", Replicas: 1}}, nodesN(1, 0, 0)},
		{"node twice", nil, []Node{{Name: "a"}, {Name: "a"}}},
		{"no replicas", []Instance{{Key: "a-1"}}, nodesN(1, 0, 0)},
		{"negative memory", []Instance{{Key: "a-1", Replicas: 1, Memory: -1}}, nodesN(1, 0, 0)},
		{"NaN cpu", []Instance{{Key: "a-1", Replicas: 1, CPU: nan()}}, nodesN(1, 0, 0)},
		{"negative capacity", nil, []Node{{Name: "a", CPU: -1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Make(tt.want, tt.nodes, nil)
			var pe *Error
			if err == nil || errors.As(err, &pe) {
				t.Fatalf("got %v, %v; want an error that is not a placement error", p, err)
			}
		})
	}
}

func nan() float64 { z := 0.0; return z / z }

// TestInstances: the instances generations hold, each once, asking what
// the generation of the environment that owns it says.
func TestInstances(t *testing.T) {
	prod := generation(t, 1, `{"services":{
		"api":{"exec":["/a"],"replicas":3,"memory":"512M","cpu":0.5,"placement":{"labels":{"zone":"eu"}}},
		"db":{"exec":["/d"],"exclusive":true,"placement":{"node":"node-a"}}}}`)
	// The preview runs production's api (shared) and db at a version of its own.
	pr := generation(t, 2, `{"services":{
		"api":{"exec":["/a"],"replicas":1,"memory":"512M","cpu":0.5},
		"db":{"exec":["/d2"],"exclusive":true}}}`)
	pr.Env, pr.Shares = "pr-1", map[string]string{"api": spec.DefaultEnv}
	api := prod.Instance("api")
	if pr.Instance("api") != api {
		t.Fatalf("the preview's api is %s, want production's %s", pr.Instance("api"), api)
	}
	want := []Instance{
		{Key: api, Replicas: 3, Memory: 512 << 20, CPU: 0.5, Labels: map[string]string{"zone": "eu"}},
		{Key: prod.Instance("db"), Replicas: 1, Node: "node-a", Exclusive: true},
		{Key: pr.Instance("db"), Replicas: 1, Exclusive: true},
	}
	slices.SortFunc(want, func(a, b Instance) int { return strings.Compare(string(a.Key), string(b.Key)) })
	// Production's api asks what production says, whichever comes first.
	for _, gens := range [][]*spec.Generation{{pr, prod}, {prod, pr}, {nil, pr, nil, prod}} {
		got, err := Instances(gens...)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	}
	// Alone, the preview asks for what it says of production's instance.
	got, err := Instances(pr)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Key != api || got[0].Replicas != 1 || got[0].Labels != nil {
		t.Fatalf("preview alone: %+v", got)
	}
}

// TestMakeIsOrderFree: the order of instances, nodes and a current
// placement's lists changes nothing.
func TestMakeIsOrderFree(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	want, nodes, cur := randomInput(rng, 200, 40)
	first, err := Make(want, nodes, cur)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		w, n := slices.Clone(want), slices.Clone(nodes)
		rng.Shuffle(len(w), func(i, j int) { w[i], w[j] = w[j], w[i] })
		rng.Shuffle(len(n), func(i, j int) { n[i], n[j] = n[j], n[i] })
		c := Placement{}
		for k, on := range cur {
			on = slices.Clone(on)
			rng.Shuffle(len(on), func(i, j int) { on[i], on[j] = on[j], on[i] })
			c[k] = on
		}
		got, err := Make(w, n, c)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, first) {
			t.Fatal("the input's order changed the placement")
		}
	}
}

// TestStable: placing again what a placement placed moves nothing.
func TestStable(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	want, nodes, _ := randomInput(rng, 300, 30)
	p, err := Make(want, nodes, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Make(want, nodes, p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, p) {
		t.Fatal("placing a placement again moved instances")
	}
}

// randomInput makes n instances of services s0… (some with a second
// version, replicas, labels, pins and requests) on m nodes (some drained,
// some labelled), and a current placement of some of them, that fit.
func randomInput(rng *rand.Rand, n, m int) ([]Instance, []Node, Placement) {
	zones := []string{"eu", "us"}
	var nodes []Node
	for i := range m {
		nd := Node{Name: fmt.Sprintf("n%03d", i), CPU: 16, Memory: 64 << 30, Labels: map[string]string{"zone": zones[i%2]}}
		if i%7 == 3 {
			nd.Unschedulable = true
		}
		nodes = append(nodes, nd)
	}
	var want []Instance
	cur := Placement{}
	for i := range n {
		in := Instance{Key: spec.VersionKey(fmt.Sprintf("s%d-%d", i, rng.IntN(2))), Replicas: 1 + rng.IntN(3)*rng.IntN(2),
			Memory: int64(rng.IntN(4)) << 28, CPU: float64(rng.IntN(5)) / 4}
		switch rng.IntN(10) {
		case 0:
			in.Labels = map[string]string{"zone": zones[rng.IntN(2)]}
		case 1:
			in.Replicas, in.Node = 1, nodes[rng.IntN(m)].Name
			for nodes[index(nodes, in.Node)].Unschedulable {
				in.Node = nodes[rng.IntN(m)].Name
			}
		}
		if rng.IntN(2) == 0 {
			cur[spec.VersionKey(fmt.Sprintf("s%d-%d", i, rng.IntN(2)))] = []string{nodes[rng.IntN(m)].Name, nodes[rng.IntN(m)].Name}
		}
		want = append(want, in)
	}
	return want, nodes, cur
}

func index(nodes []Node, name string) int {
	return slices.IndexFunc(nodes, func(n Node) bool { return n.Name == name })
}

// FuzzMake checks that placement is total and deterministic, and that
// what it places respects every rule: for any instances, nodes and
// current placement, Make returns a placement or an error without
// panicking, twice the same, and a placement passes checkPlacement; a
// placement error is one line that names a service.
func FuzzMake(f *testing.F) {
	f.Add([]byte(`{"want":[{"key":"api-1","replicas":2,"memory":512,"cpu":0.5,"labels":{"z":"eu"}}],"nodes":[{"name":"a","cpu":1,"memory":1024,"labels":{"z":"eu"}},{"name":"b","cpu":1,"memory":1024,"labels":{"z":"eu"}}]}`))
	f.Add([]byte(`{"want":[{"key":"a-2","replicas":1,"node":"b"},{"key":"a-1","replicas":1}],"nodes":[{"name":"a"},{"name":"b","unschedulable":true}],"cur":{"a-1":["b"]}}`))
	f.Add([]byte(`{"want":[{"key":"a-1@pr","replicas":3,"cpu":2}],"nodes":[{"name":"a","cpu":2},{"name":"b","cpu":1.5}],"cur":{"a-0@pr":["b","x"]}}`))
	f.Add([]byte(`{"want":[{"key":"a-1","replicas":1,"memory":9223372036854775807}],"nodes":[{"name":"a","cpu":1e300,"memory":9223372036854775807}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var in struct {
			Want  []Instance `json:"want"`
			Nodes []Node     `json:"nodes"`
			Cur   Placement  `json:"cur"`
		}
		if json.Unmarshal(data, &in) != nil {
			return
		}
		p1, err1 := Make(in.Want, in.Nodes, in.Cur)
		p2, err2 := Make(in.Want, in.Nodes, in.Cur)
		if fmt.Sprint(err1) != fmt.Sprint(err2) || !reflect.DeepEqual(p1, p2) {
			t.Fatalf("not deterministic: %v, %v; then %v, %v", p1, err1, p2, err2)
		}
		var pe *Error
		switch {
		case errors.As(err1, &pe):
			if msg := err1.Error(); strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "service ") || len(pe.Unplaced) == 0 {
				t.Fatalf("placement error %q (%+v)", msg, pe)
			}
		case err1 == nil:
			checkPlacement(t, in.Want, in.Nodes, p1)
		}
	})
}
