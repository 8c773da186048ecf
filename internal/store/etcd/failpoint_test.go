//go:build failpoints

package etcd_test

import (
	"errors"
	"path/filepath"
	"testing"

	"hostel/internal/failpoint"
	"hostel/internal/store"
	"hostel/internal/store/etcd"
	"hostel/internal/store/storetest"
)

// TestMemberFailpoints checks the store's failpoints against an etcd
// member in this process.
func TestMemberFailpoints(t *testing.T) {
	storetest.RunFailpoints(t, fresh(startMember(t)))
}

// TestFailpointLoadCutShort: a Load that fails before its last
// transaction (the sequence) leaves no deployment: the next Load clears
// what it wrote and moves everything, exactly.
func TestFailpointLoadCutShort(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.db")
	b, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n1, _ := b.Commit(ctx, storetest.Gen("v1"), 0)
	b.Commit(ctx, storetest.Gen("v2"), n1)
	b.PutRecord(ctx, store.KindRelease, "api/abc", []byte("ran"), 0)
	dump, err := b.Dump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := read(t, b)

	s, err := etcd.Open(ctx, startMember(t).config())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The clearing and the one batch pass; the sequence's transaction fails.
	if err := failpoint.Enable("store-before-load-batch", "2*off->1*error"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { failpoint.Disable("store-before-load-batch") })
	if err := s.Load(ctx, dump, path); !errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("Load: %v, want the injected error", err)
	}
	if deployed, err := s.Deployed(ctx); err != nil || deployed {
		t.Fatalf("Deployed = %v, %v after a Load cut short; want false", deployed, err)
	}
	if err := s.Load(ctx, dump, path); err != nil {
		t.Fatalf("Load again: %v", err)
	}
	if got := read(t, s); got.summary != want.summary || len(got.gens) != len(want.gens) {
		t.Errorf("after a Load cut short and another:\n%s\nbolt:\n%s", got.summary, want.summary)
	}
}
