package deploy

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"hostel/internal/spec"
)

// switches records what the engine's switch hook is told.
type switches struct {
	mu  sync.Mutex
	got []uint64
}

func (s *switches) hook(g *spec.Generation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, g.Number)
}

func (s *switches) numbers() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// TestSwitchHook: the switch hook is told every generation the routes go
// to — a deploy, a rollback, a switch back after a failed confirmation, a
// resume after a daemon start — and nothing for a deploy that fails before
// its switch.
func TestSwitchHook(t *testing.T) {
	root := t.TempDir()
	w := newWorldAt(t, root)
	var sw switches
	w.engine.OnSwitch(sw.hook)
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
	if got := sw.numbers(); !slices.Equal(got, want) {
		t.Fatalf("switch hook told %v, want %v", got, want)
	}

	w.engine.Detach()
	w.engine.Shutdown(context.Background())
	w.router.Close()
	w.store.Close()
	next := newWorldAt(t, root)
	var resumed switches
	next.engine.OnSwitch(resumed.hook)
	if err := next.engine.Resume(t.Context(), next.progress); err != nil {
		t.Fatal(err)
	}
	if got := resumed.numbers(); !slices.Equal(got, []uint64{1}) {
		t.Errorf("after a resume the switch hook was told %v, want [1]", got)
	}
}
