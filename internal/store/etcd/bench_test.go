package etcd_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/etcd"
	"hostel/internal/store/etcd/etcdtest"
)

// BenchmarkPlacements: placements committed per second, as the engine
// commits them — a generation, and in the same transaction every node's
// Desired naming the instances placed on it (node.Desired.Instances),
// through a view fenced on the engine's leadership — one commit after the
// other, as the one engine makes them. A placement is one instance on
// one node; a commit carries services × replicas of them, spread over
// the nodes (at most ~120 a transaction: etcd's default --max-txn-ops,
// 128, less the commit's own operations).
//
// On a member of three (etcdtest.StartCluster: TLS, each member's data
// on this machine's disk, every commit replicated to a quorum and
// fsynced), against the baseline of one member alone on its unix socket
// (hostel serve --etcd-embed without peers) measured in the same run.
// Issue 21's target: ≥ 5,000 placements/s, batched.
func BenchmarkPlacements(b *testing.B) {
	servers := []struct {
		name  string
		start func(b *testing.B) etcd.Config
	}{
		{"one-member", func(b *testing.B) etcd.Config {
			m, err := etcd.StartMember(filepath.Join(b.TempDir(), "etcd"), b.Logf)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { m.Close() })
			return etcd.Config{Endpoints: m.Endpoints()}
		}},
		{"three-members", func(b *testing.B) etcd.Config { return etcdtest.StartCluster(b, 3).Config() }},
	}
	batches := []struct{ services, replicas, nodes int }{
		{1, 1, 1},      // one placement a commit: unbatched
		{10, 10, 10},   // 100
		{100, 10, 100}, // 1,000
		{500, 10, 100}, // 5,000
	}
	for _, srv := range servers {
		b.Run(srv.name, func(b *testing.B) {
			cfg := srv.start(b)
			st, err := etcd.Open(b.Context(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			lease, err := st.Grant(b.Context(), 10*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			lead, err := st.Campaign(b.Context(), "engine", lease)
			if err != nil {
				b.Fatal(err)
			}
			engine := st.Fenced(lead)
			var from uint64
			for _, size := range batches {
				placements := size.services * size.replicas
				b.Run(fmt.Sprintf("placements=%d", placements), func(b *testing.B) {
					g, desired := placed(b, size.services, size.replicas, size.nodes)
					for b.Loop() {
						n, err := engine.Commit(b.Context(), g, from, desired...)
						if err != nil {
							b.Fatal(err)
						}
						from = n
					}
					b.ReportMetric(float64(b.N*placements)/b.Elapsed().Seconds(), "placements/s")
				})
			}
		})
	}
}

// placed returns a generation of services, each with replicas instances,
// and the writes of nodes' Desired that place them, spread round robin.
func placed(b *testing.B, services, replicas, nodes int) (*spec.Generation, []store.Write) {
	b.Helper()
	g := &spec.Generation{SpecHash: "bench", Spec: &spec.Spec{Services: map[string]*spec.Service{}}, Versions: map[string]spec.Version{}}
	desired := make([]node.Desired, nodes)
	for i := range desired {
		desired[i] = node.Desired{Node: fmt.Sprintf("node-%03d", i), Placed: true}
	}
	k := 0
	for i := range services {
		name := fmt.Sprintf("svc-%04d", i)
		g.Spec.Services[name] = &spec.Service{Exec: []string{"bin/" + name}, Replicas: &replicas}
		g.Versions[name] = spec.Version(fmt.Sprintf("%012x", i))
		for range replicas {
			d := &desired[k%nodes]
			d.Instances = append(d.Instances, spec.Key(name, g.Versions[name]))
			k++
		}
	}
	var writes []store.Write
	for _, d := range desired {
		data, err := json.Marshal(d)
		if err != nil {
			b.Fatal(err)
		}
		writes = append(writes, store.Write{Kind: node.KindDesired, Key: d.Node, Value: data, Rev: store.AnyRevision})
	}
	return g, writes
}
