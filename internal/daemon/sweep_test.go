package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"hostel/internal/agent"
	"hostel/internal/keyring"
	"hostel/internal/nix"
	"hostel/internal/router"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// blockingPreparer holds every preparation until release is closed, then
// fails it.
type blockingPreparer struct{ entered, release chan struct{} }

func (p blockingPreparer) Prepare(context.Context, *spec.Generation, string, *supervisor.Config) error {
	close(p.entered)
	<-p.release
	return errors.New("released")
}

// TestSweepKeepsDataBeingPrepared: the sweep of what gone previews kept
// (at a start, after an env rm) leaves the data of a preview version that
// is being prepared — its state directory made, no generation stored
// yet, no process — which a deploy served right after a start may be
// doing while the sweep runs.
func TestSweepKeepsDataBeingPrepared(t *testing.T) {
	old := nix.GCRootsDir
	nix.GCRootsDir = t.TempDir()
	t.Cleanup(func() { nix.GCRootsDir = old })
	root := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(root, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	hk, err := secrets.EnsureHostKey(root)
	if err != nil {
		t.Fatal(err)
	}
	keys := keyring.New(st, hk)
	if err := keys.Join(t.Context()); err != nil {
		t.Fatal(err)
	}
	sup := supervisor.New(supervisor.Options{Root: root, Logf: t.Logf})
	rt := router.New(router.Options{})
	t.Cleanup(func() { rt.Close() })
	d := &Daemon{opts: Options{Root: root}, store: st, sup: sup, agent: agent.New(sup, rt), logf: t.Logf}
	d.db = newDatabases(root, st, keys, sup, false, t.Logf)

	state := supervisor.StateDir(root, "web", "pr-1")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	p := blockingPreparer{entered: make(chan struct{}), release: make(chan struct{})}
	d.agent.Use(p)
	g := &spec.Generation{Env: "pr-1", Spec: &spec.Spec{Services: map[string]*spec.Service{"web": {Exec: []string{"/bin/true"}}}},
		Versions: map[string]spec.Version{"web": "aaaaaaaaaaaa"}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.agent.Reconcile(context.Background(), agent.Desired{Generations: []*spec.Generation{g}}, agent.Options{}, t.Logf)
	}()
	<-p.entered
	d.sweepPreviewData(t.Context())
	close(p.release)
	<-done
	if _, err := os.Stat(state); err != nil {
		t.Errorf("the state directory of the version being prepared was swept: %v", err)
	}
}

// TestUnpinKeepsVersionsBeingPrepared: a version being prepared — its
// roots made, its process not started, its generation not committed —
// keeps its roots through a removal of the roots nothing holds that runs
// meanwhile (a start's sweep, env rm, gc). TestCrashAnyTime found it: a
// deploy the next daemon served right after its start lost its new
// version's roots to the start's sweep.
func TestUnpinKeepsVersionsBeingPrepared(t *testing.T) {
	old := nix.GCRootsDir
	nix.GCRootsDir = t.TempDir()
	t.Cleanup(func() { nix.GCRootsDir = old })
	sup := supervisor.New(supervisor.Options{Root: t.TempDir(), Logf: t.Logf})
	rt := router.New(router.Options{})
	t.Cleanup(func() { rt.Close() })
	d := &Daemon{opts: Options{Root: t.TempDir()}, sup: sup, agent: agent.New(sup, rt), logf: t.Logf}
	roots := nix.RootsFor(d.opts.Root)
	for _, name := range []string{"shop-111111111111", "shop-222222222222"} {
		if err := os.MkdirAll(filepath.Join(roots.Dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := blockingPreparer{entered: make(chan struct{}), release: make(chan struct{})}
	d.agent.Use(p)
	g := &spec.Generation{Spec: &spec.Spec{Services: map[string]*spec.Service{"shop": {Exec: []string{"/bin/true"}}}},
		Versions: map[string]spec.Version{"shop": "222222222222"}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.agent.Reconcile(context.Background(), agent.Desired{Generations: []*spec.Generation{g}}, agent.Options{}, t.Logf)
	}()
	<-p.entered
	removed, err := d.unpin(nil)
	close(p.release)
	<-done
	if err != nil || len(removed) != 1 || removed[0] != "shop-111111111111" {
		t.Errorf("unpin removed %v (%v), want only shop-111111111111", removed, err)
	}
	if !roots.Pinned("shop-222222222222") {
		t.Error("the version being prepared lost its roots")
	}
}
