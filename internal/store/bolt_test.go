package store_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"hostel/internal/spec"
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

// boltBackend is a bbolt file for the conformance suite: its first
// handle opens the file, the next ones share it.
type boltBackend struct {
	path    string
	handles []*store.Bolt
}

func (b *boltBackend) Open(t *testing.T) store.Store {
	t.Helper()
	var (
		s   *store.Bolt
		err error
	)
	for _, h := range b.handles {
		if s, err = h.Handle(); err == nil {
			break
		}
	}
	if s == nil {
		s = openTest(t, b.path)
	}
	t.Cleanup(func() { s.Close() })
	b.handles = append(b.handles, s)
	return s
}

func (b *boltBackend) Reopen(t *testing.T) {
	for _, h := range b.handles {
		h.Close()
	}
	b.handles = nil
}

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		return &boltBackend{path: filepath.Join(t.TempDir(), "state.db")}
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
	cur, err := s2.Current(ctx, spec.DefaultEnv)
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
	// Generations from before environments are production's, and so is
	// the one current generation.
	cs, err := s.Currents(t.Context())
	if err != nil || len(cs) != 1 || cs[spec.DefaultEnv] == nil || cs[spec.DefaultEnv].Number != 3 || cs[spec.DefaultEnv].Env != spec.DefaultEnv {
		t.Fatalf("current generations of an older store = %v (%v), want production's 3", cs, err)
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

// TestBoltSetConfirm: the outcome of a confirm window is stored with its
// generation, with the switch back it made, outlives a reopen, and is
// refused whole for a missing generation.
func TestBoltSetConfirm(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTest(t, path)
	prevGen := storetest.Gen("0")
	prevGen.Secrets = map[string][]byte{"k": []byte("ct")}
	prev, err := s.Commit(ctx, prevGen, 0)
	if err != nil {
		t.Fatal(err)
	}
	g := storetest.Gen("1")
	g.Secrets = map[string][]byte{"k": []byte("ct")}
	g.Confirm = &spec.Confirm{State: spec.ConfirmPending, Previous: prev}
	n, err := s.Commit(ctx, g, prev)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetConfirm(ctx, n, &spec.Confirm{State: spec.ConfirmFailed, Previous: 7, Reason: "crashed"}, n, prev); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTest(t, path)
	got, err := s.Get(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if c := got.Confirm; c == nil || c.State != spec.ConfirmFailed || c.Previous != 7 || c.Reason != "crashed" || got.Versions["a"] != "1" || string(got.Secrets["k"]) != "ct" {
		t.Errorf("after reopen: confirm %+v, versions %v, secrets %q", got.Confirm, got.Versions, got.Secrets)
	}
	if cur, err := s.Current(ctx, spec.DefaultEnv); err != nil || cur.Number != prev {
		t.Errorf("current after the switch back: %v, %v; want %d", cur, err, prev)
	}
	if err := s.SetConfirm(ctx, n+1, &spec.Confirm{State: spec.ConfirmConfirmed}, 0, 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetConfirm of a missing generation: %v, want ErrNotFound", err)
	}
	if err := s.SetConfirm(ctx, prev, &spec.Confirm{State: spec.ConfirmConfirmed}, prev, n+1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetConfirm making a missing generation current: %v, want ErrNotFound", err)
	}
	if got, _ := s.Get(ctx, prev); got.Confirm != nil {
		t.Errorf("a refused SetConfirm changed generation %d: %+v", prev, got.Confirm)
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

// TestBoltLeaseAfterReopen: a lease found when the file is opened again
// gets a fresh TTL — its records are still there — and, renewed by no
// one, expires.
func TestBoltLeaseAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTest(t, path)
	l, err := s.Grant(t.Context(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Txn(t.Context(), store.Write{Kind: "node", Key: "n1", Value: []byte("up"), Lease: l.ID()}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	time.Sleep(1500 * time.Millisecond) // past the TTL, while no one holds the file
	s = openTest(t, path)
	if _, err := s.Record(t.Context(), "node", "n1"); err != nil {
		t.Fatalf("record of a lease right after the reopen: %v, want it kept (a fresh TTL)", err)
	}
	events, err := s.Watch(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Type != store.EventRecordDeleted || ev.Key != "n1" {
			t.Errorf("event %+v, want n1 deleted", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lease found at reopen did not expire")
	}
}
