package etcd_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/etcd"
	"hostel/internal/store/storetest"
)

// TestLoadFromBolt: a bbolt store's content moves to etcd exactly —
// generation numbers and the sequence, currents per environment, confirm
// records, secret ciphertexts, records — and a second Load is refused.
func TestLoadFromBolt(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.db")
	b, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	g1 := storetest.Gen("v1")
	g1.Secrets = map[string][]byte{"stripe": []byte("age ciphertext 1"), "db": []byte("age ciphertext 2")}
	g1.Confirm = &spec.Confirm{State: spec.ConfirmPending, Deadline: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	n1, _ := b.Commit(ctx, g1, 0)
	n2, _ := b.Commit(ctx, storetest.Gen("v2"), n1)
	n3, _ := b.Commit(ctx, storetest.Gen("v3"), n2)
	if err := b.SetConfirm(ctx, n3, &spec.Confirm{State: spec.ConfirmFailed, Previous: n1, Reason: "crashed"}, n3, n1); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, n2); err != nil {
		t.Fatal(err)
	}
	e1, _ := b.Commit(ctx, storetest.InEnv("pr-7", "e1"), 0)
	n5, _ := b.Commit(ctx, storetest.Gen("v5"), n1)
	if err := b.SetCurrent(ctx, n5, n1); err != nil {
		t.Fatal(err)
	}
	b.PutRecord(ctx, store.KindRelease, "api/abc", []byte("ran"), 0)
	b.PutRecord(ctx, store.KindDatabase, "api", []byte(`{"db":"api"}`), 0)
	l, _ := b.Grant(ctx, time.Minute)
	b.Txn(ctx, store.Write{Kind: "node", Key: "n1", Value: []byte("up"), Lease: l.ID()})
	dump, err := b.Dump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := read(t, b)

	m := startMember(t)
	s2, err := etcd.Open(ctx, m.config())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	// A Load cut short left a generation and a record it listed: they
	// go. A record another daemon wrote meanwhile (a cluster's node
	// starting beside this one: its machine key) stays.
	if _, err := s2.PutRecord(ctx, "stale", "x", nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.PutRecord(ctx, "machinekey", "age1other", []byte("other node"), 0); err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: m.config().Endpoints, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, etcd.DefaultPrefix+"gen/00000000000000000099", string(want.gens[0])); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, etcd.DefaultPrefix+"migrating", `["`+etcd.DefaultPrefix+`record/stale/x"]`); err != nil {
		t.Fatal(err)
	}
	if err := s2.Load(ctx, dump, path); err != nil {
		t.Fatalf("Load: %v", err)
	}
	got := read(t, s2)
	if got.summary != want.summary {
		t.Errorf("after Load:\n%s\nbolt:\n%s", got.summary, want.summary)
	}
	for i, g := range want.gens {
		if i >= len(got.gens) || !bytes.Equal(got.gens[i], g) {
			t.Errorf("generation %d differs after Load", i)
		}
	}
	if _, err := s2.Record(ctx, "node", "n1"); err == nil {
		t.Error("a record bound to a lease was moved")
	}
	if _, err := s2.Record(ctx, "stale", "x"); err == nil {
		t.Error("a record left by a Load cut short is kept")
	}
	if r, err := s2.Record(ctx, "machinekey", "age1other"); err != nil || string(r.Value) != "other node" {
		t.Errorf("another daemon's record after Load: %v %q; want it kept", err, r.Value)
	}
	if got, err := cli.Get(ctx, etcd.DefaultPrefix+"migrating"); err != nil || len(got.Kvs) != 0 {
		t.Errorf("the list of a Load's records outlives it: %v %v", got, err)
	}
	if n, err := s2.Commit(ctx, storetest.Gen("v6"), n1); err != nil || n != n5+1 {
		t.Errorf("first commit after Load = %d, %v; want %d: numbers continue", n, err, n5+1)
	}
	if m, err := s2.Migrated(ctx); err != nil || m == nil || m.Source != path || m.Generations != 4 {
		t.Errorf("Migrated = %+v, %v; want from %s, 4 generations", m, err, path)
	}
	if err := s2.Load(ctx, dump, path); err == nil {
		t.Error("a second Load into a deployment: no error")
	}
	if deployed, err := s2.Deployed(ctx); err != nil || !deployed {
		t.Errorf("Deployed = %v, %v after a Load", deployed, err)
	}
	if g, err := s2.Current(ctx, "pr-7"); err != nil || g == nil || g.Number != e1 {
		t.Errorf("pr-7's current after Load: %v, %v; want %d", g, err, e1)
	}
}

// content is what a store holds, to compare across stores.
type content struct {
	summary string
	gens    [][]byte
}

func read(t *testing.T, s store.Store) content {
	t.Helper()
	snap, err := s.Read(t.Context(), store.KindRelease, store.KindDatabase)
	if err != nil {
		t.Fatal(err)
	}
	var c content
	var lines []string
	for env, g := range snap.Currents {
		lines = append(lines, fmt.Sprintf("current %s %d", env, g.Number))
	}
	for _, g := range snap.Generations {
		data, _ := json.Marshal(g)
		c.gens = append(c.gens, data)
		for name, ct := range g.Secrets {
			d := store.SecretDigest(ct)
			kept, err := s.Secret(t.Context(), d)
			lines = append(lines, "secret "+name+" "+d+" "+string(kept)+" "+errString(err))
		}
	}
	for kind, recs := range snap.Records {
		for _, r := range recs {
			lines = append(lines, "record "+kind+" "+r.Key+" "+string(r.Value))
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		c.summary += l + "\n"
	}
	return c
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
