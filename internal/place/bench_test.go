package place

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"hostel/internal/spec"
)

// bigCluster is 1,000 nodes of 8 cores and 32 GiB each, in three zones,
// one in four with disk=ssd, one in fifty drained.
func bigCluster() []Node {
	zones := []string{"eu", "us", "ap"}
	nodes := make([]Node, 1000)
	for i := range nodes {
		n := Node{Name: fmt.Sprintf("n%04d", i), CPU: 8, Memory: 32 << 30, Labels: map[string]string{"zone": zones[i%3]}}
		if i%4 == 0 {
			n.Labels["disk"] = "ssd"
		}
		n.Unschedulable = i%50 == 49
		nodes[i] = n
	}
	return nodes
}

// bigSpec is a spec of n services: one in ten with 3 replicas and one in
// 25 with 2; one in five asking for a zone and one in twenty for
// disk=ssd; one in a hundred pinned; all but one in ten requesting 64M to
// 512M of memory and 0.05 to 0.25 cpu. greeting is in every tenth
// service's env (a new version of those when it changes).
func bigSpec(n int, greeting string) []byte {
	zones := []string{"eu", "us", "ap"}
	svcs := map[string]any{}
	for i := range n {
		svc := map[string]any{"exec": []string{"/bin/app"}, "env": map[string]string{"N": fmt.Sprint(i)}}
		if i%10 == 5 {
			svc["env"].(map[string]string)["GREETING"] = greeting
		}
		switch {
		case i%10 == 0:
			svc["replicas"] = 3
		case i%25 == 1:
			svc["replicas"] = 2
		}
		labels := map[string]string{}
		if i%5 == 2 && i%100 != 7 { // pinned ones ask for no label
			labels["zone"] = zones[i/5%3]
		}
		if i%20 == 3 {
			labels["disk"] = "ssd"
		}
		p := map[string]any{}
		if len(labels) > 0 {
			p["labels"] = labels
		}
		if i%100 == 7 {
			node := i * 7 % 1000
			if node%50 == 49 {
				node++
			}
			p["node"] = fmt.Sprintf("n%04d", node)
		}
		if len(p) > 0 {
			svc["placement"] = p
		}
		if i%10 != 9 {
			svc["memory"] = fmt.Sprintf("%dM", 64<<(i%4))
			svc["cpu"] = float64(i%5+1) / 20
		}
		svcs[fmt.Sprintf("s%05d", i)] = svc
	}
	b, _ := json.Marshal(map[string]any{"services": svcs})
	return b
}

// BenchmarkPlace10kOn1k measures placing 10,000 services (12,400
// replicas) on 1,000 nodes, from the generation to the placement
// (Instances, then Make):
//   - first: nothing runs yet;
//   - redeploy: one service in ten has a new version, placed beside the
//     old one a confirm window keeps, from the first's placement ("moved":
//     instances of the current generation that moved, "beside": new
//     versions on exactly their old version's nodes);
//   - versions: the baseline, spec.Versions of the same spec (which
//     every deploy computes anyway), for a ratio that the machine's drift
//     does not move.
func BenchmarkPlace10kOn1k(b *testing.B) {
	nodes := bigCluster()
	gen := func(n uint64, greeting string) *spec.Generation {
		s, err := spec.Decode("big.json", bigSpec(10000, greeting))
		if err != nil {
			b.Fatal(err)
		}
		v, err := spec.Versions(s, spec.Inputs{})
		if err != nil {
			b.Fatal(err)
		}
		return &spec.Generation{Number: n, Spec: s, Versions: v}
	}
	cur, next := gen(1, "hello"), gen(2, "howdy")
	place := func(b *testing.B, cur Placement, gens ...*spec.Generation) Placement {
		want, err := Instances(gens...)
		if err != nil {
			b.Fatal(err)
		}
		p, err := Make(want, nodes, cur)
		if err != nil {
			b.Fatal(err)
		}
		replicas := 0
		for _, in := range want {
			replicas += in.Replicas
		}
		b.ReportMetric(float64(len(want)), "instances")
		b.ReportMetric(float64(replicas), "replicas")
		return p
	}
	first := place(b, nil, cur)
	want, _ := Instances(cur)
	checkPlacement(b, want, nodes, first)

	b.Run("first", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			place(b, nil, cur)
		}
	})
	b.Run("redeploy", func(b *testing.B) {
		b.ReportAllocs()
		var p Placement
		for b.Loop() {
			p = place(b, first, next, cur)
		}
		// What the current generation runs stays where it runs.
		moved := 0
		for k, on := range first {
			if !slices.Equal(p[k], on) {
				moved++
			}
		}
		// A new version goes where its old one runs.
		beside := 0
		for _, name := range next.Spec.Names() {
			if k := next.Instance(name); k != cur.Instance(name) && slices.Equal(p[k], first[cur.Instance(name)]) {
				beside++
			}
		}
		b.ReportMetric(float64(moved), "moved")
		b.ReportMetric(float64(beside), "beside")
	})
	b.Run("versions", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := spec.Versions(next.Spec, spec.Inputs{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
