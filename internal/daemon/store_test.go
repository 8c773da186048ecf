package daemon

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hostel/internal/store"
	"hostel/internal/store/etcd"
	"hostel/internal/store/storetest"
)

// TestMoveBolt: ROOT/state.db moves into an etcd that holds no
// deployment and is renamed; found again beside the etcd it moved to (a
// start that died before the rename), it is only renamed; beside an etcd
// that holds another deployment, it stops the start.
func TestMoveBolt(t *testing.T) {
	ctx := t.Context()
	root := t.TempDir()
	path := filepath.Join(root, "state.db")
	b, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	n1, _ := b.Commit(ctx, storetest.Gen("v1"), 0)
	b.Commit(ctx, storetest.Gen("v2"), n1)
	b.Close()
	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	m, err := etcd.StartMember(filepath.Join(root, "etcd"), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	st, err := etcd.Open(ctx, etcd.Config{Endpoints: m.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var logged []string
	logf := func(f string, a ...any) { logged = append(logged, f) }
	if err := moveBolt(ctx, path, st, logf); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state.db after the move: %v, want it renamed", err)
	}
	if _, err := os.Stat(path + movedSuffix); err != nil {
		t.Errorf("state.db%s: %v", movedSuffix, err)
	}
	if cur, err := st.Current(ctx, "production"); err != nil || cur == nil || cur.Number != 2 {
		t.Fatalf("current on etcd after the move: %v, %v; want generation 2", cur, err)
	}
	// The daemon died before the rename: the file is found again.
	st.Commit(ctx, storetest.Gen("v3"), 2)
	if err := os.WriteFile(path, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := moveBolt(ctx, path, st, logf); err != nil {
		t.Fatalf("state.db found again beside the etcd it moved to: %v", err)
	}
	if cur, _ := st.Current(ctx, "production"); cur == nil || cur.Number != 3 {
		t.Errorf("current after finding state.db again: %v, want 3: nothing moved again", cur)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state.db found again: %v, want it renamed", err)
	}
	if len(logged) != 1 {
		t.Errorf("logged %q, want one move", logged)
	}
	// Another machine's state.db beside an etcd holding a deployment.
	other := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(other, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := moveBolt(ctx, other, st, logf); err == nil || !strings.Contains(err.Error(), "etcd already holds a deployment") {
		t.Errorf("moving state.db into an etcd with a deployment: %v, want it refused", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a refused move touched state.db: %v", err)
	}
}
