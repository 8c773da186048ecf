// Package keyringtest makes the machines of a deployment's keyring for the
// tests of the packages that seal values in the store.
package keyringtest

import (
	"testing"

	"hostel/internal/keyring"
	"hostel/internal/secrets"
	"hostel/internal/store"
	"hostel/internal/store/storetest"
)

// Machine is one daemon's keyring on b's shared store: its own root (host
// key) and its own handle, joined.
func Machine(t *testing.T, b storetest.Backend) (*keyring.Keyring, store.Store) {
	t.Helper()
	hk, err := secrets.EnsureHostKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := b.Open(t)
	k := keyring.New(st, hk)
	if err := k.Join(t.Context()); err != nil {
		t.Fatal(err)
	}
	return k, st
}
