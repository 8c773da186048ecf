package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"hostel/internal/keyring"
	"hostel/internal/secrets"
	"hostel/internal/store"
)

// testKeys is the keyring of a machine whose root is root, joined to the
// deployment st holds.
func testKeys(t testing.TB, root string, st store.Store) *keyring.Keyring {
	t.Helper()
	hk, err := secrets.EnsureHostKey(root)
	if err != nil {
		t.Fatal(err)
	}
	k := keyring.New(st, hk)
	if err := k.Join(t.Context()); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestOthersCanRead(t *testing.T) {
	base := t.TempDir()
	// t.TempDir and its parent are 0700; open them as a system's /etc is.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(rel string, dirMode, fileMode os.FileMode) string {
		p := filepath.Join(base, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("cert"), fileMode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, fileMode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Dir(p), dirMode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name    string
		path    string
		wantErr bool
	}{
		{"readable", mk("open/ca.crt", 0o755, 0o644), false},
		{"traversable only", mk("through/ca.crt", 0o711, 0o644), false},
		{"private file", mk("private/ca.crt", 0o755, 0o600), true},
		{"private directory", mk("closed/ca.crt", 0o700, 0o644), true},
		{"missing", filepath.Join(base, "none.crt"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := othersCanRead(tc.path); (err != nil) != tc.wantErr {
				t.Errorf("othersCanRead(%s) = %v, want error %v", tc.path, err, tc.wantErr)
			}
		})
	}
}
