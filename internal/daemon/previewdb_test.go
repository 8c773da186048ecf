package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"hostel/internal/postgres"
	"hostel/internal/postgres/pgtest"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// TestPreviewDatabaseRole: with passwords (a server over TCP), a preview's
// own database has a role and a password of its own; neither credential
// reaches the other's database; dropping the preview's database drops its
// role and password and leaves production's. A preview whose database a
// hostel of old made for production's role is refused, never taken over.
func TestPreviewDatabaseRole(t *testing.T) {
	pg := pgtest.Start(t)
	root := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(root, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	db := newDatabases(root, st, testKeys(t, root, st), nil, false, t.Logf)
	ctx := t.Context()
	s := &spec.Spec{Postgres: &spec.PostgresAdmin{Admin: pg.AdminTCP()},
		Services: map[string]*spec.Service{"api": {Exec: []string{"/bin/true"}, Postgres: &spec.Database{}}}}
	ensure := func(env string) (*postgres.Server, postgres.Database) {
		t.Helper()
		srv, d, _, err := db.ensure(ctx, &spec.Generation{Env: env, Spec: s}, "api")
		if err != nil {
			t.Fatalf("provisioning api for %s: %v", env, err)
		}
		return srv, d
	}
	srv, prod := ensure(spec.DefaultEnv)
	_, preview := ensure("pr-1")
	if preview.Role == prod.Role || preview.Password == "" || preview.Password == prod.Password {
		t.Fatalf("the preview's role %s (same password as production's: %v), production's %s: want its own role and password", preview.Role, preview.Password == prod.Password, prod.Role)
	}
	for _, tc := range []struct {
		name   string
		as     postgres.Database
		db     string
		wantOK bool
	}{
		{"production its own", prod, prod.Name, true},
		{"the preview its own", preview, preview.Name, true},
		{"the preview production's", preview, prod.Name, false},
		{"production the preview's", prod, preview.Name, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			as := tc.as
			as.Name = tc.db
			c, err := pgx.Connect(ctx, srv.URL(as))
			if err == nil {
				c.Close(context.WithoutCancel(ctx))
			}
			if got := err == nil; got != tc.wantOK {
				t.Errorf("%s connects to %s: %v (%v), want %v", as.Role, tc.db, got, err, tc.wantOK)
			}
		})
	}

	if err := db.forget(ctx, "api@pr-1"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := srv.RoleInfo(ctx, preview.Role); err != nil || ok {
		t.Errorf("the preview's role %s after its database was dropped: exists %v (%v)", preview.Role, ok, err)
	}
	if _, err := st.Record(ctx, store.KindPassword, "api@pr-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the preview's password after its database was dropped: %v", err)
	}
	if _, err := st.Record(ctx, store.KindPassword, "api"); err != nil {
		t.Errorf("production's password after the preview's database was dropped: %v", err)
	}
	if _, ok, err := srv.Exists(ctx, prod.Name); err != nil || !ok {
		t.Errorf("production's database after the preview's was dropped: exists %v (%v)", ok, err)
	}
	if _, ok, err := srv.RoleInfo(ctx, prod.Role); err != nil || !ok {
		t.Errorf("production's role after the preview's was dropped: exists %v (%v)", ok, err)
	}

	legacy := record{Admin: pg.AdminTCP(), Database: "api_pr_2", Role: prod.Role, Password: true}
	if err := srv.Provision(ctx, postgres.Database{Name: legacy.Database, Role: prod.Role, Password: prod.Password}); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(legacy)
	if _, err := st.PutRecord(ctx, store.KindDatabase, "api@pr-2", b, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := db.ensure(ctx, &spec.Generation{Env: "pr-2", Spec: s}, "api"); err == nil {
		t.Error("a preview database of production's role was provisioned again, want it refused")
	}
	if r, _, err := db.readRecord(ctx, "api@pr-2"); err != nil || r == nil || *r != legacy {
		t.Errorf("the old preview's record after the refusal: %+v (%v), want it as it was", r, err)
	}
	if err := db.forget(ctx, "api@pr-2"); err != nil {
		t.Fatalf("dropping the old preview's database: %v", err)
	}
	if _, ok, err := srv.RoleInfo(ctx, prod.Role); err != nil || !ok {
		t.Errorf("production's role after the old preview's database was dropped: exists %v (%v)", ok, err)
	}
}
