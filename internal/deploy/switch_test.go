package deploy

import (
	"slices"
	"testing"
	"time"

	"hostel/internal/spec"
)

// TestSwitchHook: the routes' switch hook is told every generation the
// routes go to — a deploy, a rollback, a switch back after a failed
// confirmation, a daemon's start — and nothing for a deploy that fails
// before its switch.
func TestSwitchHook(t *testing.T) {
	root := t.TempDir()
	w := newWorldAt(t, root)
	good := mkSpec(map[string]*spec.Service{"web": app("good", domains("web.test"))})
	w.mustDeploy(good)                                                                     // 1
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("two", domains("web.test"))})) // 2
	if _, err := w.deploy(mkSpec(map[string]*spec.Service{"web": app("never", domains("web.test"), env("CRASH", "1"))}), 0); err == nil {
		t.Fatal("a deploy of a crashing version went through")
	}
	if _, err := w.engine.Rollback(t.Context(), "", 1, w.progress); err != nil { // to 1
		t.Fatal(err)
	}
	if _, err := w.deploy(mkSpec(map[string]*spec.Service{"web": app("sick", domains("web.test"), env("UNHEALTHY_AFTER", "300ms"), healthEvery(100*time.Millisecond, 3))}), 3*time.Second); err == nil {
		t.Fatal("a version that turns sick was confirmed") // 3, then back to 1
	}
	want := []uint64{1, 2, 1, 3, 1}
	if got := w.switchedTo(); !slices.Equal(got, want) {
		t.Fatalf("switch hook told %v, want %v", got, want)
	}

	w.shutdown()
	next := newWorldAt(t, root)
	if got := next.switchedTo(); !slices.Equal(got, []uint64{1}) {
		t.Errorf("after a start the switch hook was told %v, want [1]", got)
	}
}

// switchedTo returns the production generations the routes switched to.
func (w *world) switchedTo() []uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.switched)
}
