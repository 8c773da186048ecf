//go:build failpoints

package router

import (
	"errors"
	"testing"

	"hostel/internal/failpoint"
	"hostel/internal/spec"
)

// A swap that fails at its failpoint changes nothing: the old table
// still routes.
func TestFailpointSwap(t *testing.T) {
	r := New(Options{Zone: zone, Logf: t.Logf})
	t.Cleanup(func() { r.Close() })
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1}})
	if err := failpoint.Enable("router-before-swap", "1*error"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { failpoint.Disable("router-before-swap") })
	if err := r.Swap(Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV2}}); !errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("Swap: %v, want the injected error", err)
	}
	if got := r.Table().Domains["api.example.org"]; got != apiV1 {
		t.Errorf("after a failed swap api.example.org goes to %s, want %s", got, apiV1)
	}
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV2}})
	if got := r.Table().Domains["api.example.org"]; got != apiV2 {
		t.Errorf("after the next swap api.example.org goes to %s, want %s", got, apiV2)
	}
}
