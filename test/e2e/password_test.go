package e2e

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hostel/internal/keyring"
	"hostel/internal/postgres/pgtest"
	"hostel/internal/secrets"
	"hostel/internal/store"
)

// TestPasswordMovesIntoStore: a role's password is kept in the store,
// sealed to the machine's key, never in plaintext there; the password file
// an older daemon kept (ROOT/postgres/SERVICE.password) moves into the
// store at the next start and is removed, and the service's database
// still answers with it.
func TestPasswordMovesIntoStore(t *testing.T) {
	pg := pgtest.Start(t)
	e := NewEnv(t)
	e.Store = "bbolt" // it reads the store's file for plaintext
	e.StartDaemon()
	defer func() {
		if e.daemon != nil {
			e.Shutdown()
		}
	}()
	e.WriteSpec(map[string]any{"postgres": map[string]any{"admin": pg.AdminTCP()},
		"services": map[string]any{"envapp": map[string]any{"package": envApp(t), "exec": []string{"bin/envapp"}, "postgres": true, "stop_grace": "2s"}}})
	e.MustRun("deploy", "--no-confirm")
	e.StopDaemon()

	// The store, as this daemon left it: the password sealed.
	dbPath := filepath.Join(e.Root, "state.db")
	st, err := store.OpenBolt(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	hk, err := secrets.ReadHostKey(filepath.Join(e.Root, secrets.HostKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	keys := keyring.New(st, hk)
	pw, err := keys.Load(t.Context(), store.KindPassword, "envapp")
	if err != nil {
		t.Fatalf("the password in the store: %v", err)
	}
	// As an older daemon kept it: in a file, not in the store.
	if err := st.DeleteRecord(t.Context(), store.KindPassword, "envapp", store.AnyRevision); err != nil {
		t.Fatal(err)
	}
	st.Close()
	file := filepath.Join(e.Root, "postgres", "envapp.password")
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, append(pw, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

	e.StartDaemon()
	if _, err := os.Stat(filepath.Dir(file)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ROOT/postgres after the start: %v, want it gone", err)
	}
	if out := e.MustRun("db", "shell", "envapp", "--", "-At", "-c", "SELECT current_user"); strings.TrimSpace(out) != "hostel-envapp" {
		t.Errorf("db shell with the moved password: %q", out)
	}
	e.StopDaemon()
	raw, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, pw) {
		t.Error("the store file holds the password in plaintext")
	}
	st, err = store.OpenBolt(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := keyring.New(st, hk).Load(t.Context(), store.KindPassword, "envapp")
	st.Close()
	if err != nil || !bytes.Equal(got, pw) {
		t.Errorf("the moved password: %v, want the file's", err)
	}
	e.StartDaemon()
}
