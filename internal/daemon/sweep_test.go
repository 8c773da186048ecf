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
