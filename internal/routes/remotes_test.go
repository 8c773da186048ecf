package routes

import (
	"context"
	"encoding/json"
	"reflect"
	"sync"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

func nodeRecord(t *testing.T, name, addr string) store.Record {
	t.Helper()
	v, err := json.Marshal(node.Info{Name: name, Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	return store.Record{Kind: node.KindNode, Key: name, Value: v}
}

func instanceRecord(t *testing.T, in node.Instance) store.Record {
	t.Helper()
	v, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return store.Record{Kind: node.KindInstance, Key: node.InstanceKey(in.Node, in.Key), Value: v}
}

// TestRemotes: what a node's router reaches on the other nodes is every
// instance the others report, on those that advertise an address and
// still report themselves; ready as they say, asleep counting as ready,
// draining not.
func TestRemotes(t *testing.T) {
	const api, web = spec.VersionKey("api-111111111111"), spec.VersionKey("web-222222222222")
	running := func(n string, k spec.VersionKey) node.Instance {
		return node.Instance{Node: n, Key: k, State: supervisor.StateRunning, Ready: true, Addr: "127.0.0.1:9"}
	}
	nodes := []store.Record{nodeRecord(t, "a", "10.0.0.1:7946"), nodeRecord(t, "b", "10.0.0.2:7946"),
		nodeRecord(t, "self", "10.0.0.3:7946"), nodeRecord(t, "hidden", "")}
	for _, tc := range []struct {
		name      string
		instances []node.Instance
		want      map[spec.VersionKey][]router.Remote
	}{
		{"none", nil, map[spec.VersionKey][]router.Remote{}},
		{"replicas by node", []node.Instance{running("b", api), running("a", api), running("a", web)},
			map[spec.VersionKey][]router.Remote{
				api: {{Node: "a", Addr: "10.0.0.1:7946", Ready: true}, {Node: "b", Addr: "10.0.0.2:7946", Ready: true}},
				web: {{Node: "a", Addr: "10.0.0.1:7946", Ready: true}},
			}},
		{"this node's own are local", []node.Instance{running("self", api), running("a", api)},
			map[spec.VersionKey][]router.Remote{api: {{Node: "a", Addr: "10.0.0.1:7946", Ready: true}}}},
		{"a node without an address, or gone", []node.Instance{running("hidden", api), running("gone", api)},
			map[spec.VersionKey][]router.Remote{}},
		{"starting, failed, draining, asleep", []node.Instance{
			{Node: "a", Key: api, State: supervisor.StateStarting},
			{Node: "b", Key: api, State: supervisor.StateFailed, Error: "exit 1"},
			{Node: "a", Key: web, State: supervisor.StateRunning, Ready: true, Draining: true},
			{Node: "b", Key: web, State: node.StateIdle},
		}, map[spec.VersionKey][]router.Remote{
			api: {{Node: "a", Addr: "10.0.0.1:7946"}, {Node: "b", Addr: "10.0.0.2:7946"}},
			web: {{Node: "a", Addr: "10.0.0.1:7946"}, {Node: "b", Addr: "10.0.0.2:7946", Ready: true}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var recs []store.Record
			for _, in := range tc.instances {
				recs = append(recs, instanceRecord(t, in))
			}
			if got := Remotes("self", nodes, recs); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// remotesSeen records what a Follower gives the router of the other
// nodes, and every table it swaps in.
type remotesSeen struct {
	swaps
	mu   sync.Mutex
	sets []map[spec.VersionKey][]router.Remote
}

func (r *remotesSeen) SetRemotes(m map[spec.VersionKey][]router.Remote) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, m)
}

func (r *remotesSeen) last() (map[spec.VersionKey][]router.Remote, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return nil, 0
	}
	return r.sets[len(r.sets)-1], len(r.sets)
}

// TestFollowerRemotes: with Options.Remotes, the router learns what the
// other nodes run as they report it — an instance that comes, becomes
// ready, and goes with its node's lease — without a swap of its table;
// the first Sync gives it before the table.
func TestFollowerRemotes(t *testing.T) {
	st := openStore(t)
	ctx := t.Context()
	const api = spec.VersionKey("api-111111111111")
	other, err := st.Grant(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	put := func(r store.Record, lease store.LeaseID) {
		t.Helper()
		if _, err := st.Txn(ctx, store.Write{Kind: r.Kind, Key: r.Key, Value: r.Value, Rev: store.AnyRevision, Lease: lease}); err != nil {
			t.Fatal(err)
		}
	}
	put(nodeRecord(t, "a", "127.0.0.1:7946"), other.ID())
	put(instanceRecord(t, node.Instance{Node: "a", Key: api, State: supervisor.StateStarting}), other.ID())

	rs := &remotesSeen{}
	lease, err := st.Grant(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f := NewFollower(st, rs, Options{Node: "n", Lease: lease.ID(), Remotes: rs, Logf: t.Logf})
	rev, err := f.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := rs.last(); !reflect.DeepEqual(got[api], []router.Remote{{Node: "a", Addr: "127.0.0.1:7946"}}) {
		t.Errorf("after Sync: %v, want api on a, not ready", got)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(runCtx, rev) }()
	t.Cleanup(func() { cancel(); <-done })

	put(instanceRecord(t, node.Instance{Node: "a", Key: api, State: supervisor.StateRunning, Ready: true}), other.ID())
	waitFor(t, "api ready on a", func() bool {
		got, _ := rs.last()
		return reflect.DeepEqual(got[api], []router.Remote{{Node: "a", Addr: "127.0.0.1:7946", Ready: true}})
	})
	if _, n := rs.swaps.last(); n != 1 {
		t.Errorf("%d tables swapped in for reports alone, want the Sync's only", n)
	}
	if err := st.Revoke(ctx, other.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a gone with its lease", func() bool { got, _ := rs.last(); return got != nil && len(got) == 0 })
}

// TestFollowerNoRemotes: without Options.Remotes the nodes' reports are
// not read at all.
func TestFollowerNoRemotes(t *testing.T) {
	st := openStore(t)
	rs := &remotesSeen{}
	follow(t, st, rs, 0)
	if _, err := st.Txn(t.Context(), store.Write{Kind: node.KindInstance, Key: node.InstanceKey("a", "api-111111111111"), Value: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Commit(t.Context(), web("111111111111"), 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the commit's table", func() bool { tab, _ := rs.swaps.last(); return tab.Domains["web.test"] != "" })
	if _, n := rs.last(); n != 0 {
		t.Errorf("%d sets of remotes without Options.Remotes", n)
	}
}
