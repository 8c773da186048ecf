package acme

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/keyring"
	"hostel/internal/secrets"
	"hostel/internal/store"
	"hostel/internal/store/storetest"
	"hostel/internal/store/storetest/backends"
)

// testStorage is a daemon's certificate storage on a new handle of b,
// with a root of its own (its machine key) and a lease of its own.
func testStorage(t *testing.T, b storetest.Backend) *storage {
	t.Helper()
	st := b.Open(t)
	hk, err := secrets.EnsureHostKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	k := keyring.New(st, hk)
	if err := k.Join(t.Context()); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var l store.Lease
	var lerr error
	return &storage{st: st, keys: k, owner: t.Name(), lease: func(ctx context.Context) (store.Lease, error) {
		once.Do(func() { l, lerr = st.Grant(ctx, storetest.LeaseTTL) })
		return l, lerr
	}}
}

// TestStorage: the store as certmagic's Storage, as FileStorage behaves:
// files and the directories they imply, List at one level or all, Stat,
// Delete of a file or of a directory and all under it; private keys are
// sealed, and another daemon of the deployment reads them.
func TestStorage(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ctx := t.Context()
		s, other := testStorage(t, b), testStorage(t, b)
		files := map[string]string{
			"certificates/ca/a.example/a.example.crt":  "cert a",
			"certificates/ca/a.example/a.example.key":  "-----BEGIN EC PRIVATE KEY----- a",
			"certificates/ca/a.example/a.example.json": "{}",
			"certificates/ca/b.example/b.example.crt":  "cert b",
			"acme/ca/challenge_tokens/a.example.json":  `{"token":"t"}`,
		}
		t0 := time.Now().Add(-time.Second)
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range files {
				if !yield(k) {
					return
				}
			}
		}) {
			if err := s.Store(ctx, k, []byte(files[k])); err != nil {
				t.Fatal(err)
			}
		}
		for k, v := range files {
			if got, err := other.Load(ctx, k); err != nil || string(got) != v {
				t.Errorf("Load(%s) from another daemon = %q, %v; want %q", k, got, err, v)
			}
		}
		r, err := s.st.Record(ctx, store.KindCertKey, "certificates/ca/a.example/a.example.key")
		if err != nil || bytes.Contains(r.Value, []byte("PRIVATE KEY")) {
			t.Errorf("the private key's record: %.40s… (%v), want it sealed", r.Value, err)
		}
		if _, err := s.Load(ctx, "certificates/ca/c.example/c.example.crt"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load of a missing key: %v, want fs.ErrNotExist", err)
		}

		for _, tc := range []struct {
			prefix    string
			recursive bool
			want      []string
		}{
			{"certificates", false, []string{"certificates/ca"}},
			{"certificates/ca", false, []string{"certificates/ca/a.example", "certificates/ca/b.example"}},
			{"certificates/ca/a.example", false, []string{"certificates/ca/a.example/a.example.crt", "certificates/ca/a.example/a.example.json", "certificates/ca/a.example/a.example.key"}},
			{"acme", true, []string{"acme/ca", "acme/ca/challenge_tokens", "acme/ca/challenge_tokens/a.example.json"}},
			{"", false, []string{"acme", "certificates"}},
		} {
			got, err := other.List(ctx, tc.prefix, tc.recursive)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("List(%q, %v) = %q, %v; want %q", tc.prefix, tc.recursive, got, err, tc.want)
			}
		}
		if _, err := s.List(ctx, "ocsp", false); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("List of nothing: %v, want fs.ErrNotExist", err)
		}
		for _, tc := range []struct {
			key      string
			terminal bool
			size     int64
		}{
			{"certificates/ca/b.example/b.example.crt", true, 6},
			{"certificates/ca/a.example/a.example.key", true, 0},
			{"certificates/ca/b.example", false, 0},
			{"acme", false, 0},
		} {
			info, err := other.Stat(ctx, tc.key)
			if err != nil || info.Key != tc.key || info.IsTerminal != tc.terminal || info.Size != tc.size || info.Modified.Before(t0) {
				t.Errorf("Stat(%s) = %+v, %v; want terminal %v, size %d, modified since the test began", tc.key, info, err, tc.terminal, tc.size)
			}
			if !other.Exists(ctx, tc.key) {
				t.Errorf("Exists(%s) = false", tc.key)
			}
		}
		if other.Exists(ctx, "certificates/ca/a") || other.Exists(ctx, "certificates/ca/c.example") {
			t.Error("Exists of a prefix that is no path component, or of nothing, is true")
		}

		if err := other.Delete(ctx, "acme/ca/challenge_tokens/a.example.json"); err != nil {
			t.Fatal(err)
		}
		if s.Exists(ctx, "acme/ca/challenge_tokens/a.example.json") {
			t.Error("a deleted file exists")
		}
		if err := other.Delete(ctx, "certificates/ca/a.example"); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"certificates/ca/a.example", "certificates/ca/a.example/a.example.key"} {
			if s.Exists(ctx, k) {
				t.Errorf("%s exists after its directory was deleted", k)
			}
		}
		if got, err := s.List(ctx, "certificates/ca", false); err != nil || !slices.Equal(got, []string{"certificates/ca/b.example"}) {
			t.Errorf("after deleting a directory, List = %q, %v", got, err)
		}
		if err := s.Delete(ctx, "certificates/ca/none.example"); err != nil {
			t.Errorf("Delete of a missing key: %v, want nil", err)
		}
		if err := s.Store(ctx, "certificates/big", make([]byte, maxValue+1)); err == nil {
			t.Error("a value over maxValue was stored")
		}
	})
}

// TestLock: of daemons on one store, one holds a lock at a time; the
// others wait for it to be unlocked, or for its holder to be gone for its
// lease's TTL.
func TestLock(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ctx := t.Context()
		const n = 4
		var holders, most atomic.Int32
		var wg sync.WaitGroup
		for range n {
			s := testStorage(t, b)
			wg.Go(func() {
				if err := s.Lock(ctx, "issue_cert_a.example"); err != nil {
					t.Error(err)
					return
				}
				h := holders.Add(1)
				for m := most.Load(); h > m && !most.CompareAndSwap(m, h); m = most.Load() {
				}
				time.Sleep(50 * time.Millisecond)
				holders.Add(-1)
				if err := s.Unlock(ctx, "issue_cert_a.example"); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if most.Load() != 1 {
			t.Errorf("%d daemons held the lock at once, want 1", most.Load())
		}

		// A holder that dies: its lock ends with its lease.
		dying, waiter := testStorage(t, b), testStorage(t, b)
		if err := dying.Lock(ctx, "issue_cert_b.example"); err != nil {
			t.Fatal(err)
		}
		locked := make(chan error, 1)
		go func() { locked <- waiter.Lock(ctx, "issue_cert_b.example") }()
		select {
		case err := <-locked:
			t.Fatalf("a held lock was taken: %v", err)
		case <-time.After(300 * time.Millisecond):
		}
		died := time.Now()
		dying.st.Close()
		if err := <-locked; err != nil {
			t.Fatal(err)
		}
		t.Logf("the lock of a daemon gone was taken %s later (lease TTL %s)", time.Since(died).Round(10*time.Millisecond), storetest.LeaseTTL)
		wctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := testStorage(t, b).Lock(wctx, "issue_cert_b.example"); !errors.Is(err, context.Canceled) {
			t.Errorf("Lock with its context done: %v", err)
		}
	})
}

// TestMoveFromFiles: what an older daemon kept under ROOT/certs —
// certmagic's files and the internal CA — moves into the store at New and
// leaves the disk; lock files stay behind. A second daemon with an
// internal CA of its own on disk takes the deployment's.
func TestMoveFromFiles(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		root := t.TempDir()
		files := map[string]string{
			"certs/acme/certificates/ca/a.example/a.example.crt": "cert a",
			"certs/acme/certificates/ca/a.example/a.example.key": "-----BEGIN EC PRIVATE KEY----- a",
			"certs/acme/acme/ca/users/ops/ops.json":              "{}",
			"certs/acme/locks/issue_cert_a.example.lock":         "{}",
		}
		caCert, caKey, err := oldOrNewCA(t.TempDir()) // a CA as an older daemon made it
		if err != nil {
			t.Fatal(err)
		}
		files["certs/internal/ca.crt"], files["certs/internal/ca.key"] = string(caCert), string(caKey)
		writeFiles(t, root, files)

		m := testManager(t, b, root)
		if got := m.InternalCA(); got != string(caCert) {
			t.Errorf("internal CA after the move:\n%s\nwant the one on disk:\n%s", got, caCert)
		}
		for _, k := range []string{"certificates/ca/a.example/a.example.crt", "certificates/ca/a.example/a.example.key", "acme/ca/users/ops/ops.json"} {
			if got, err := m.storage.Load(t.Context(), k); err != nil || string(got) != files["certs/acme/"+k] {
				t.Errorf("%s after the move: %q, %v", k, got, err)
			}
		}
		if m.storage.Exists(t.Context(), "locks/issue_cert_a.example.lock") {
			t.Error("a lock file moved into the store")
		}
		for _, gone := range []string{"certs/acme", "certs/internal"} {
			if _, err := os.Stat(filepath.Join(root, gone)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s after the move: %v, want it gone", gone, err)
			}
		}

		other := t.TempDir()
		otherCert, otherKey, _ := oldOrNewCA(t.TempDir())
		writeFiles(t, other, map[string]string{"certs/internal/ca.crt": string(otherCert), "certs/internal/ca.key": string(otherKey)})
		if got := testManager(t, b, other, m).InternalCA(); got != string(caCert) {
			t.Errorf("a second daemon's internal CA is its own, want the deployment's")
		}
		if _, err := os.Stat(filepath.Join(other, "certs/internal")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the second daemon's CA files: %v, want them gone", err)
		}
	})
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// testManager is a Manager of a daemon on root, on a new handle of b.
// Once it joined, the keyrings of sealers (daemons that joined before)
// seal what they can open to it, as their Follow would.
func testManager(t *testing.T, b storetest.Backend, root string, sealers ...*Manager) *Manager {
	t.Helper()
	s := testStorage(t, b)
	hk, err := secrets.EnsureHostKey(root)
	if err != nil {
		t.Fatal(err)
	}
	keys := keyring.New(s.st, hk)
	if err := keys.Join(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, m := range sealers {
		if _, err := m.opts.Keys.Reseal(t.Context(), store.KindCertKey); err != nil {
			t.Fatal(err)
		}
	}
	m, err := New(t.Context(), Options{Store: s.st, Keys: keys, Lease: s.lease, Root: root, Owner: root,
		HTTPAddr: "127.0.0.1:80", HTTPSAddr: "127.0.0.1:443", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// TestInternalCALater: a daemon whose machine joined after the internal CA
// was sealed, with no daemon about to seal it to it, starts all the same,
// without the CA; once a daemon of the deployment seals it to this one,
// it signs with it.
func TestInternalCALater(t *testing.T) {
	b := backends.Bolt(t)
	first := testManager(t, b, t.TempDir())
	s := testStorage(t, b)
	keys := s.keys
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	m, err := New(ctx, Options{Store: s.st, Keys: keys, Lease: s.lease, Root: t.TempDir(), Owner: "late",
		HTTPAddr: "127.0.0.1:80", HTTPSAddr: "127.0.0.1:443", Logf: t.Logf})
	if err != nil {
		t.Fatalf("a daemon that cannot open the internal CA yet does not start: %v", err)
	}
	defer m.Close()
	if got := m.InternalCA(); got != "" {
		t.Fatalf("the internal CA before it was sealed to this machine: %.30s…", got)
	}
	if _, err := first.opts.Keys.Reseal(t.Context(), store.KindCertKey); err != nil {
		t.Fatal(err)
	}
	waitFor := time.Now().Add(10 * time.Second)
	for m.InternalCA() != first.InternalCA() {
		if time.Now().After(waitFor) {
			t.Fatal("the internal CA not used within 10s of being sealed to this machine")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
