//go:build failpoints

package nix

import (
	"errors"
	"strings"
	"testing"

	"hostel/internal/failpoint"
)

// GC roots under faults: a pin that fails before makes no root; one that
// fails after made it (the caller not told, and a Prune takes it like any
// other); a prune that fails removes none.
func TestFailpointRoots(t *testing.T) {
	requireNix(t)
	pkg := buildScript(t, "pinned")[0]
	r := RootsFor(t.TempDir())
	t.Cleanup(func() { r.RemoveAll() })
	arm := func(name string) {
		t.Helper()
		if err := failpoint.Enable(name, "1*error"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { failpoint.Disable(name) })
	}
	names := func() string {
		t.Helper()
		n, err := r.Names()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(n, ",")
	}

	arm("gcroots-before-pin")
	if err := r.Pin("a-111", []string{pkg}); !errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("Pin: %v, want the injected error", err)
	}
	if got := names(); got != "" {
		t.Errorf("after a pin failed before: roots %q, want none", got)
	}
	arm("gcroots-after-pin")
	if err := r.Pin("a-111", []string{pkg}); !errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("Pin: %v, want the injected error", err)
	}
	if got := names(); got != "a-111" {
		t.Errorf("after a pin failed after: roots %q, want a-111", got)
	}
	if err := r.Pin("a-222", []string{pkg}); err != nil {
		t.Fatal(err)
	}
	arm("gcroots-before-prune")
	if _, err := r.Prune(keeping("a-222")); !errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("Prune: %v, want the injected error", err)
	}
	if got := names(); got != "a-111,a-222" {
		t.Errorf("after a prune failed: roots %q, want both", got)
	}
	if removed, err := r.Prune(keeping("a-222")); err != nil || strings.Join(removed, ",") != "a-111" {
		t.Errorf("the next prune: removed %v, %v; want a-111", removed, err)
	}
}
