package node_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/node/nodetest"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest/backends"
)

// TestDrainOrderAcrossNodes: api needs db; api runs on node a, db on node
// b. A change of db replaces both: b stops the old db only once a has
// drained the old api — a request it was still finishing — and stopped
// it, not at the commit.
func TestDrainOrderAcrossNodes(t *testing.T) {
	root := t.TempDir()
	st := backends.OpenRoot(t, root)
	t.Cleanup(func() { st.Close() })
	a := nodetest.New(t, st, t.TempDir(), nodetest.Options{Name: "a"})
	b := nodetest.New(t, st, t.TempDir(), nodetest.Options{Name: "b"})
	for _, n := range []*nodetest.Node{a, b} {
		n.Start(t)
		t.Cleanup(n.Shutdown)
	}

	gen := func(id string) *spec.Generation {
		health := &spec.Health{Path: "/healthz", Timeout: spec.Duration(5 * time.Second)}
		s := &spec.Spec{Services: map[string]*spec.Service{
			"db":  {Exec: []string{appBin}, Env: map[string]string{"APP_ID": "db-" + id}, Health: health, StopGrace: spec.Duration(spec.MinGrace)},
			"api": {Exec: []string{appBin}, Env: map[string]string{"APP_ID": "api"}, Needs: []string{"db"}, Domains: []string{"api.test"}, Health: health, StopGrace: spec.Duration(10 * time.Second)},
		}}
		vs, err := spec.Versions(s, spec.Inputs{})
		if err != nil {
			t.Fatal(err)
		}
		return &spec.Generation{Spec: s, Versions: vs}
	}
	// commit makes g current with api placed on a and db on b, and
	// returns the revision of the change.
	commit := func(g *spec.Generation, from uint64) uint64 {
		t.Helper()
		// api's endpoint for db on a: a route to b's db stands in for
		// the one node-to-node routing makes (api never calls it here).
		a.Router.AddBackend(g.Instance("db"), "127.0.0.1:9")
		var also []store.Write
		for name, k := range map[string]spec.VersionKey{"a": g.Instance("api"), "b": g.Instance("db")} {
			v, _ := json.Marshal(node.Desired{Node: name, Placed: true, Instances: []spec.VersionKey{k}})
			also = append(also, store.Write{Kind: node.KindDesired, Key: name, Value: v, Rev: store.AnyRevision})
		}
		if _, err := st.Commit(t.Context(), g, from, also...); err != nil {
			t.Fatal(err)
		}
		r, err := st.Record(t.Context(), node.KindDesired, "a")
		if err != nil {
			t.Fatal(err)
		}
		return r.Revision
	}
	pid := func(n *nodetest.Node, k spec.VersionKey) int {
		s, ok := n.Sup.Status(k)
		if !ok {
			return 0
		}
		return s.PID
	}

	g1 := gen("1")
	rev := commit(g1, 0)
	api1, db1 := g1.Instance("api"), g1.Instance("db")
	instance := func(n string, k spec.VersionKey) node.Instance {
		r, err := st.Record(t.Context(), node.KindInstance, node.InstanceKey(n, k))
		if err != nil {
			return node.Instance{}
		}
		in, _ := node.DecodeInstance(r.Key, r.Value)
		return in
	}
	waitFor(t, "api ready on a and db on b", func() bool { return instance("a", api1).Ready && instance("b", db1).Ready })
	if pid(a, db1) != 0 || pid(b, api1) != 0 {
		t.Fatal("a node runs what is placed on the other")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := node.RoutesAt(ctx, st, rev); err != nil {
		t.Fatal(err)
	}

	// A request the old api is finishing, 1.5 s long.
	var wg sync.WaitGroup
	wg.Go(func() {
		req, _ := http.NewRequest("GET", a.Front.URL+"/slow?d=1500ms", nil)
		req.Host = "api.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("the request api was finishing: %v", err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "slow done" {
			t.Errorf("the request api was finishing: %q", body)
		}
	})
	time.Sleep(100 * time.Millisecond)

	g2 := gen("2")
	commit(g2, g1.Number)
	var apiGone, dbGone time.Time
	waitFor(t, "the old api and the old db stopped", func() bool {
		now := time.Now()
		if apiGone.IsZero() && pid(a, api1) == 0 {
			apiGone = now
		}
		if dbGone.IsZero() && pid(b, db1) == 0 {
			dbGone = now
		}
		return !apiGone.IsZero() && !dbGone.IsZero()
	})
	wg.Wait()
	if dbGone.Before(apiGone) {
		t.Errorf("b stopped the old db %s before a stopped the old api, which needs it", apiGone.Sub(dbGone).Round(time.Millisecond))
	}
	if pid(a, g2.Instance("api")) == 0 || pid(b, g2.Instance("db")) == 0 {
		t.Error("the new api and db do not run where they are placed")
	}
}
