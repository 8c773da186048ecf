package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"hostel/internal/node"
	"hostel/internal/store"
	"hostel/internal/store/storetest/backends"
)

// TestReporter: a report whose write fails is made again until it goes
// through, and it is the latest asked that lands, never an older one
// after it; a report under a lease that is gone is not tried again (the
// node rejoins and reports anew).
func TestReporter(t *testing.T) {
	st := reportsFailing(backends.OpenRoot(t, t.TempDir()), node.KindRoutes)
	lease, err := st.Grant(t.Context(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := node.NewReporter(st, node.KindRoutes, "n", t.Logf)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	value := func() string {
		t.Helper()
		rec, err := st.Record(t.Context(), node.KindRoutes, "n")
		if err != nil {
			return ""
		}
		return string(rec.Value)
	}

	st.Fail.Store(2)
	if err := r.Report(t.Context(), []byte(`{"applied":1}`), lease.ID()); err == nil {
		t.Fatal("the first report went through; want it failed")
	}
	waitFor(t, "the failed report made again", func() bool { return value() == `{"applied":1}` })

	st.Fail.Store(1)
	if err := r.Report(t.Context(), []byte(`{"applied":2}`), lease.ID()); err == nil {
		t.Fatal("the report of 2 went through; want it failed")
	}
	if err := r.Report(t.Context(), []byte(`{"applied":3}`), lease.ID()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * node.ReportRetry)
	if got := value(); got != `{"applied":3}` {
		t.Errorf("the record says %s after a failed report and a newer one, want the newer", got)
	}

	if err := lease.Revoke(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Report(t.Context(), []byte(`{"applied":4}`), lease.ID()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a report under a lease that is gone: %v, want %v", err, store.ErrNotFound)
	}
	if r.Pending() {
		t.Error("a report under a lease that is gone is to be made again")
	}
}
