//go:build failpoints

package acme

import (
	"errors"
	"io/fs"
	"testing"

	"hostel/internal/failpoint"
	"hostel/internal/store/storetest"
	"hostel/internal/store/storetest/backends"
)

// A certificate's write that fails at acme-before-store stores nothing:
// certmagic is told, the old certificate stays, and the next write goes
// through.
func TestFailpointStoreCert(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ctx := t.Context()
		s := testStorage(t, b)
		const crt, key = "certificates/ca/a.example/a.example.crt", "certificates/ca/a.example/a.example.key"
		if err := s.Store(ctx, crt, []byte("cert 1")); err != nil {
			t.Fatal(err)
		}
		if err := failpoint.Enable("acme-before-store", "2*error"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { failpoint.Disable("acme-before-store") })
		for _, w := range []struct{ key, value string }{{crt, "cert 2"}, {key, "-----BEGIN EC PRIVATE KEY----- a"}} {
			if err := s.Store(ctx, w.key, []byte(w.value)); !errors.Is(err, failpoint.ErrInjected) {
				t.Fatalf("Store %s: %v, want the injected error", w.key, err)
			}
		}
		if got, err := s.Load(ctx, crt); err != nil || string(got) != "cert 1" {
			t.Errorf("after a failed write, %s holds %q (%v), want the old certificate", crt, got, err)
		}
		if _, err := s.Load(ctx, key); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after a failed write, %s: %v, want none", key, err)
		}
		if err := s.Store(ctx, crt, []byte("cert 2")); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Load(ctx, crt); string(got) != "cert 2" {
			t.Errorf("the next write: %s holds %q, want cert 2", crt, got)
		}
	})
}
