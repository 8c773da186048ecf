package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"hostel/internal/store"
)

// TestMigrateRecords: a root written by an older daemon keeps its database
// records, role passwords and release markers in files; the first start
// moves them into the store (the passwords sealed to the machine keys) and
// removes them, and a start cut short in between is finished.
func TestMigrateRecords(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"postgres/api.json":          "{\n  \"admin\": \"host=/run/postgresql user=postgres\",\n  \"database\": \"api_prod\",\n  \"role\": \"hostel-api\",\n  \"password\": true\n}",
		"postgres/api.password":      "secret\n",
		"postgres/shop.json":         `{"admin":"host=db","database":"shop","role":"hostel-shop","password":false}`,
		"postgres/web@pr-1.password": "cut-short-file\n",
		"releases/api/3f2a9c1b7d04":  "2026-01-02T03:04:05Z\nmigrated 3 tables\n",
		"releases/api/.tmp-123":      "half",
		"releases/shop/0123456789ab": "2026-01-03T00:00:00Z\n",
	}
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st, err := store.OpenBolt(filepath.Join(root, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := t.Context()
	// A migration cut short: shop's record is in the store, its file not yet removed.
	shopRev, err := st.PutRecord(ctx, store.KindDatabase, "shop", []byte(files["postgres/shop.json"]), 0)
	if err != nil {
		t.Fatal(err)
	}

	keys := testKeys(t, root, st)
	// A move cut short: web@pr-1's password is in the store, its file not
	// yet removed. The store's is kept.
	sealed, err := keys.Seal(ctx, []byte("in-the-store"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutRecord(ctx, store.KindPassword, "web@pr-1", sealed, 0); err != nil {
		t.Fatal(err)
	}

	for range 2 { // the second run finds nothing left to do
		if err := migrateRecords(ctx, root, st); err != nil {
			t.Fatal(err)
		}
		if err := migratePasswords(ctx, root, st, keys); err != nil {
			t.Fatal(err)
		}
	}

	db := &databases{store: st, keys: keys}
	api, _, err := db.readRecord(ctx, "api")
	if err != nil || api == nil || *api != (record{Admin: "host=/run/postgresql user=postgres", Database: "api_prod", Role: "hostel-api", Password: true}) {
		t.Errorf("api's database record = %+v, %v", api, err)
	}
	if r, err := st.Record(ctx, store.KindDatabase, "shop"); err != nil || r.Revision != shopRev {
		t.Errorf("shop's record = %+v, %v; want the one already in the store, unchanged", r, err)
	}
	r, err := st.Record(ctx, store.KindRelease, "api/3f2a9c1b7d04")
	if err != nil {
		t.Fatalf("api's release record: %v", err)
	}
	var rr releaseRecord
	if err := json.Unmarshal(r.Value, &rr); err != nil || rr.Time.Format("2006-01-02T15:04:05Z") != "2026-01-02T03:04:05Z" || rr.Output != "migrated 3 tables\n" {
		t.Errorf("api's release record = %s, %v", r.Value, err)
	}
	if _, err := st.Record(ctx, store.KindRelease, "shop/0123456789ab"); err != nil {
		t.Errorf("shop's release record: %v", err)
	}
	for _, gone := range []string{"postgres", "releases"} {
		if _, err := os.Stat(filepath.Join(root, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there after the migration (%v)", gone, err)
		}
	}
	for name, want := range map[string]string{"api": "secret", "web@pr-1": "in-the-store"} {
		r, err := st.Record(ctx, store.KindPassword, name)
		if err != nil {
			t.Fatalf("%s's password record: %v", name, err)
		}
		if bytes.Contains(r.Value, []byte(want)) {
			t.Errorf("%s's password is in the store in plaintext: %s", name, r.Value)
		}
		if got, err := db.password(ctx, name); err != nil || got != want {
			t.Errorf("%s's password = %q, %v; want %q", name, got, err, want)
		}
	}
}
