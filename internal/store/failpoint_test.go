//go:build failpoints

package store_test

import (
	"path/filepath"
	"testing"

	"hostel/internal/store/storetest"
)

func TestBoltFailpoints(t *testing.T) {
	storetest.RunFailpoints(t, func(t *testing.T) storetest.Backend {
		return &boltBackend{path: filepath.Join(t.TempDir(), "state.db")}
	})
}
