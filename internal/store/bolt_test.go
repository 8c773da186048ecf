package store_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"hostel/internal/store"
	"hostel/internal/store/storetest"
)

func openTest(t testing.TB, path string) *store.Bolt {
	t.Helper()
	s, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openTest(t, filepath.Join(t.TempDir(), "state.db"))
	})
}

// TestBoltReopen checks that everything survives a reopen: generations,
// the current one, numbering, secrets and records.
func TestBoltReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTest(t, path)
	g := storetest.Gen("v1")
	g.Secrets = map[string][]byte{"k": []byte("ct")}
	if _, err := s.Commit(ctx, g, 0); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i < 3; i++ {
		if _, err := s.Commit(ctx, storetest.Gen("v"), i); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetCurrent(ctx, 3, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, 3); err != nil {
		t.Fatal(err)
	}
	rev, err := s.PutRecord(ctx, store.KindRelease, "a/v1", []byte("ran"), 0)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2 := openTest(t, path)
	cur, err := s2.Current(ctx)
	if err != nil || cur.Number != 1 || string(cur.Secrets["k"]) != "ct" {
		t.Fatalf("current after reopen = %+v, %v; want generation 1 with its secret", cur, err)
	}
	if n, err := s2.Commit(ctx, storetest.Gen("v4"), 1); err != nil || n != 4 {
		t.Fatalf("commit after reopen = %d, %v; want 4", n, err)
	}
	if r, err := s2.Record(ctx, store.KindRelease, "a/v1"); err != nil || r.Revision != rev || string(r.Value) != "ran" {
		t.Fatalf("record after reopen = %+v, %v", r, err)
	}
	// Revisions keep growing across a reopen.
	if r2, err := s2.PutRecord(ctx, store.KindRelease, "a/v1", []byte("again"), rev); err != nil || r2 <= rev {
		t.Fatalf("update after reopen = %d, %v; want a revision after %d", r2, err, rev)
	}
}

// TestBoltMigratesInlineSecrets opens a store written before secrets were
// kept by digest: each generation carried its ciphertexts. They are moved
// out, once, and read back the same.
func TestBoltMigratesInlineSecrets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	shared := bytes.Repeat([]byte("age-ciphertext "), 100)
	err = db.Update(func(tx *bolt.Tx) error {
		gens, _ := tx.CreateBucket([]byte("generations"))
		meta, _ := tx.CreateBucket([]byte("meta"))
		for n := uint64(1); n <= 3; n++ {
			g := storetest.Gen("v")
			g.Number = n
			g.Secrets = map[string][]byte{"k": shared}
			data, _ := json.Marshal(g)
			if err := gens.Put(itob(n), data); err != nil {
				return err
			}
			gens.SetSequence(n)
		}
		return meta.Put([]byte("current"), itob(3))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s := openTest(t, path)
	for n := uint64(1); n <= 3; n++ {
		g, err := s.Get(t.Context(), n)
		if err != nil || !bytes.Equal(g.Secrets["k"], shared) {
			t.Fatalf("generation %d after migration: %v, secrets %q", n, err, g.Secrets)
		}
	}
	if n, err := s.Commit(t.Context(), storetest.Gen("v4"), 3); err != nil || n != 4 {
		t.Fatalf("commit after migration = %d, %v", n, err)
	}
	s.Close()

	db, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("generations")).ForEach(func(k, v []byte) error {
			if bytes.Contains(v, []byte(`"secrets"`)) || strings.Contains(string(v), "YWdlLWNpcGhlcnRleHQg") {
				t.Errorf("generation %d still holds its ciphertext: %s", binary.BigEndian.Uint64(k), v)
			}
			return nil
		})
	})
	if n := countKeys(t, db, "secrets"); n != 1 {
		t.Errorf("%d ciphertexts kept, want 1 (by digest, once)", n)
	}
}

func TestBoltRefusesSecondOpener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	openTest(t, path)
	if s, err := store.OpenBolt(path); err == nil {
		s.Close()
		t.Fatal("a second daemon could open the same state store")
	}
}

func itob(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func countKeys(t *testing.T, db *bolt.DB, bucket string) int {
	t.Helper()
	n := 0
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucket)).ForEach(func(_, _ []byte) error { n++; return nil })
	})
	return n
}
