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
// (ErrConflict), once, and stops what it started; the routes stay.
func TestDeployConflictChangesNothing(t *testing.T) {
	w := newWorld(t)
	racing := &racingStore{Store: w.store}
	w.engine = New(racing, w.sup, w.router) // the world's own has run nothing
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("one", domains("web.test"))}))
	racing.mu.Lock()
	racing.armed = true
	racing.mu.Unlock()
	res, err := w.deploy(mkSpec(map[string]*spec.Service{"web": app("two", domains("web.test"))}), 0)
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "nothing switched") {
		t.Fatalf("deploy against a moved current generation: %v, want nothing switched, ErrConflict", err)
	}
	if res == nil || res.Generation != 1 || res.Confirmation != "" {
		t.Errorf("result = %+v, want generation 1 still live", res)
	}
	if got := w.current(); got != 2 {
		t.Errorf("current generation %d, want the other writer's 2", got)
	}
	g1, err := w.store.Get(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := w.engine.Running(), []spec.VersionKey{spec.Key("web", g1.Versions["web"])}; !slices.Equal(got, want) {
		t.Errorf("running after a refused deploy: %v, want only %v", got, want)
	}
	if _, id, _ := w.get("web.test", "/"); id != "one" {
		t.Errorf("web.test served by %q after a refused deploy, want one", id)
	}
}

// TestSwitchBackConflict: a window that fails after another writer made a
// generation current does not switch back over it: the deploy fails with
// ErrConflict, its generation is recorded failed, and what the other
// writer made current stays current.
func TestSwitchBackConflict(t *testing.T) {
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
		t.Fatalf("the deploy did not end after its version crashed:\n%s", strings.Join(w.lines, "\n"))
	}
	if !errors.Is(o.err, store.ErrConflict) {
		t.Errorf("deploy error %v, want ErrConflict", o.err)
	}
	if fs := Failures(o.err); len(fs) != 1 || fs[0].Service != "web" || fs[0].Step != StepConfirm {
		t.Errorf("failures = %v, want web failing its confirmation", fs)
	}
	if o.res.RolledBack || o.res.Confirmation != spec.ConfirmFailed {
		t.Errorf("result = %+v, want not rolled back, confirmation failed", o.res)
	}
	if got := w.current(); got != 3 {
		t.Errorf("current generation %d, want the other writer's 3", got)
	}
	if got := w.confirmState(2); got != spec.ConfirmFailed {
		t.Errorf("generation 2 confirmation %q, want failed", got)
	}
}
