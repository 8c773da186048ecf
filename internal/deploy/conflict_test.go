package deploy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/spec"
	"hostel/internal/store"
)

// racingStore is a store on which another writer commits a generation just
// before the engine's next Commit (once armed).
type racingStore struct {
	store.Store
	mu    sync.Mutex
	armed bool
}

func (s *racingStore) Commit(ctx context.Context, g *spec.Generation, from uint64, also ...store.Write) (uint64, error) {
	s.mu.Lock()
	armed := s.armed
	s.armed = false
	s.mu.Unlock()
	if armed {
		other := *g
		other.Confirm = nil
		if _, err := s.Store.Commit(ctx, &other, from); err != nil {
			return 0, err
		}
	}
	return s.Store.Commit(ctx, g, from, also...)
}

// TestDeployConflictChangesNothing: a deploy whose commit finds that
// another writer made a generation current since the deploy planned fails
// (ErrConflict), once: its own generation is never stored, and the nodes
// follow what the other writer made current.
func TestDeployConflictChangesNothing(t *testing.T) {
	w := newWorld(t)
	racing := &racingStore{Store: w.store}
	w.engine.SetWriter(racing)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("one", domains("web.test"))}))
	racing.mu.Lock()
	racing.armed = true
	racing.mu.Unlock()
	_, err := w.deploy(mkSpec(map[string]*spec.Service{"web": app("two", domains("web.test"))}), 0)
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "nothing switched") {
		t.Fatalf("deploy against a moved current generation: %v, want nothing switched, ErrConflict", err)
	}
	if got := w.current(); got != 2 {
		t.Errorf("current generation %d, want the other writer's 2", got)
	}
	if n := w.generations(); n != 2 {
		t.Errorf("%d generations stored, want 2: the refused deploy's is not", n)
	}
	g2, err := w.store.Get(t.Context(), 2)
	if err != nil {
		t.Fatal(err)
	}
	want := []spec.VersionKey{g2.Instance("web")}
	waitFor(t, 10*time.Second, "the node to follow the other writer's generation", func() bool {
		return slices.Equal(w.node.Agent.Running(), want)
	})
	if code, _, _ := w.get("web.test", "/"); code != 200 {
		t.Errorf("web.test: %d after a refused deploy", code)
	}
}

// TestWindowSupersededByAnotherWriter: a window in which another writer
// makes a generation current ends: the deploy fails with ErrConflict, its
// generation is recorded superseded, and it does not switch back over the
// other writer's generation, even if its version crashes.
func TestWindowSupersededByAnotherWriter(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("good", domains("web.test"))}))
	trigger := filepath.Join(t.TempDir(), "crash")
	deployed := w.deployInWindow(mkSpec(map[string]*spec.Service{"web": app("bad", domains("web.test"), env("CRASH_FILE", trigger))}), 30*time.Second)
	// Another writer, not this engine, moves the current generation.
	g1, err := w.store.Get(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	g1.Confirm = nil
	if _, err := w.store.Commit(t.Context(), g1, 2); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var o deployOutcome
	select {
	case o = <-deployed:
	case <-time.After(30 * time.Second):
		t.Fatalf("the deploy did not end once another writer switched:\n%s", strings.Join(w.lines, "\n"))
	}
	if !errors.Is(o.err, store.ErrConflict) {
		t.Errorf("deploy error %v, want ErrConflict", o.err)
	}
	if o.res.RolledBack || o.res.Confirmation != spec.ConfirmSuperseded {
		t.Errorf("result = %+v, want not rolled back, confirmation superseded", o.res)
	}
	if got := w.current(); got != 3 {
		t.Errorf("current generation %d, want the other writer's 3", got)
	}
	if got := w.confirmState(2); got != spec.ConfirmSuperseded {
		t.Errorf("generation 2 confirmation %q, want superseded", got)
	}
}
