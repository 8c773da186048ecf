package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"hostel/internal/postgres"
	"hostel/internal/postgres/pgtest"
)

// cluster is one real PostgreSQL 15 shared by the package's tests; each
// test uses its own database and role names.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	c, err := pgtest.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	c.Stop()
	if tlsCluster != nil {
		tlsCluster.Stop()
	}
	os.Exit(code)
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func open(t testing.TB, admin string) *postgres.Server {
	t.Helper()
	s, err := postgres.Open(admin)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func provision(t testing.TB, s *postgres.Server, d postgres.Database) {
	t.Helper()
	if err := s.Provision(ctx(t), d); err != nil {
		t.Fatalf("provision %s: %v", d.Name, err)
	}
}

// systemUser makes sure a system user exists, as the supervisor makes it
// for a service: peer authentication maps it to the role of its name.
func systemUser(t testing.TB, name string) {
	t.Helper()
	if _, err := user.Lookup(name); err == nil {
		return
	}
	out, err := exec.Command("useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already exists") {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	if err == nil {
		t.Cleanup(func() { exec.Command("userdel", name).Run() })
	}
}

// psqlAs runs one SQL command through psql as a system user over the unix
// socket (peer authentication), the way a service connects.
func psqlAs(t testing.TB, osUser, database, sql string) (string, error) {
	t.Helper()
	psql, err := postgres.Tool("psql")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("runuser", "-u", osUser, "--", psql, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "PGHOST=" + cluster.SocketDir, fmt.Sprint("PGPORT=", cluster.Port), "PGDATABASE=" + database, "PGUSER=" + osUser}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// connectAs connects over TCP with a password, as a service does when the
// daemon does not run as root.
func connectAs(t testing.TB, role, password, database string) (*pgx.Conn, error) {
	t.Helper()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d sslmode=disable", cluster.Port))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Password, cfg.Database = role, password, database
	c, err := pgx.ConnectConfig(ctx(t), cfg)
	if err == nil {
		t.Cleanup(func() { c.Close(context.Background()) })
	}
	return c, err
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// TestTwoServicesPeer provisions two services the way a root daemon does
// (peer authentication) and checks, with real connections as their system
// users, that each reaches its own database and not the other's.
func TestTwoServicesPeer(t *testing.T) {
	s := open(t, cluster.Admin())
	a := postgres.Database{Name: "peer_a", Role: "hostel-pgt-peer-a"}
	b := postgres.Database{Name: "peer_b", Role: "hostel-pgt-peer-b"}
	for _, d := range []postgres.Database{a, b} {
		systemUser(t, d.Role)
		provision(t, s, d)
	}
	if out, err := psqlAs(t, b.Role, b.Name, "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('b only'); SELECT current_user"); err != nil || !strings.HasSuffix(out, b.Role) {
		t.Fatalf("b in its own database: %v: %s", err, out)
	}
	if out, err := psqlAs(t, a.Role, a.Name, "SELECT current_database()"); err != nil || out != a.Name {
		t.Fatalf("a in its own database: %v: %q", err, out)
	}
	out, err := psqlAs(t, a.Role, b.Name, "SELECT v FROM secrets")
	if err == nil || !strings.Contains(out, "permission denied for database") {
		t.Fatalf("a connecting to b's database: err %v, output %q; want permission denied", err, out)
	}
	// Claiming another role fails too: peer maps a system user to its own name only.
	out, err = psqlAs(t, a.Role, a.Name, "SELECT 1")
	if err != nil {
		t.Fatal(out)
	}
	cmd := exec.Command("runuser", "-u", a.Role, "--", mustTool(t, "psql"), "-X", "-c", "SELECT 1")
	cmd.Dir = "/"
	cmd.Env = []string{"PGHOST=" + cluster.SocketDir, fmt.Sprint("PGPORT=", cluster.Port), "PGDATABASE=" + b.Name, "PGUSER=" + b.Role}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "Peer authentication failed") {
		t.Fatalf("a claiming b's role: err %v, output %q", err, out)
	}
}

func mustTool(t testing.TB, name string) string {
	t.Helper()
	p, err := postgres.Tool(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestIsolationPassword provisions two services with passwords (a daemon
// not running as root) and checks isolation over TCP: a cannot connect to
// b's database, and even when let in, cannot read b's tables.
func TestIsolationPassword(t *testing.T) {
	s := open(t, cluster.AdminTCP())
	a := postgres.Database{Name: "pw_a", Role: "hostel-pgt-pw-a", Password: "secret-a-0123456789"}
	b := postgres.Database{Name: "pw_b", Role: "hostel-pgt-pw-b", Password: "secret-b-0123456789"}
	provision(t, s, a)
	provision(t, s, b)
	cb, err := connectAs(t, b.Role, b.Password, b.Name)
	if err != nil {
		t.Fatalf("b connecting to its database: %v", err)
	}
	if _, err := cb.Exec(ctx(t), "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('b only')"); err != nil {
		t.Fatal(err)
	}
	if _, err := connectAs(t, a.Role, a.Password, a.Name); err != nil {
		t.Fatalf("a connecting to its database: %v", err)
	}
	_, err = connectAs(t, a.Role, a.Password, b.Name)
	if sqlState(err) != "42501" {
		t.Fatalf("a connecting to b's database: %v; want permission denied (42501)", err)
	}
	if _, err := connectAs(t, a.Role, b.Password, b.Name); err == nil {
		t.Fatal("a wrong password was accepted")
	}

	// Defence in depth: let a in for a moment; b's tables stay closed.
	admin, err := pgx.Connect(ctx(t), cluster.AdminTCP())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	grant := "GRANT CONNECT ON DATABASE " + pgx.Identifier{b.Name}.Sanitize() + " TO " + pgx.Identifier{a.Role}.Sanitize()
	if _, err := admin.Exec(ctx(t), grant); err != nil {
		t.Fatal(err)
	}
	defer admin.Exec(context.Background(), strings.Replace(strings.Replace(grant, "GRANT", "REVOKE", 1), " TO ", " FROM ", 1))
	ca, err := connectAs(t, a.Role, a.Password, b.Name)
	if err != nil {
		t.Fatal(err)
	}
	var v string
	err = ca.QueryRow(ctx(t), "SELECT v FROM secrets").Scan(&v)
	if sqlState(err) != "42501" {
		t.Fatalf("a reading b's table: %q, %v; want permission denied (42501)", v, err)
	}
}

func TestRoleIsNotSuperuser(t *testing.T) {
	s := open(t, cluster.Admin())
	d := postgres.Database{Name: "nosuper", Role: "hostel-pgt-nosuper"}
	provision(t, s, d)
	r, ok, err := s.RoleInfo(ctx(t), d.Role)
	if err != nil || !ok {
		t.Fatalf("role info: %v %v", ok, err)
	}
	if want := (postgres.Role{Login: true}); r != want {
		t.Errorf("role %s: %+v, want %+v", d.Role, r, want)
	}
	// A role that was given too much (by hand) is brought back into line.
	admin, err := pgx.Connect(ctx(t), cluster.Admin())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx(t), "ALTER ROLE "+pgx.Identifier{d.Role}.Sanitize()+" SUPERUSER CREATEDB"); err != nil {
		t.Fatal(err)
	}
	provision(t, s, d)
	if r, _, _ := s.RoleInfo(ctx(t), d.Role); r != (postgres.Role{Login: true}) {
		t.Errorf("after re-provisioning: %+v", r)
	}
}

// catalog is what provisioning may touch, with each row's xmin: a row
// rewritten by an UPDATE (even to equal values) gets a new xmin.
func catalog(t testing.TB, d postgres.Database) string {
	t.Helper()
	c, err := pgx.Connect(ctx(t), cluster.Admin())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var role, db string
	if err := c.QueryRow(ctx(t), `SELECT row(xmin::text, rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolpassword)::text FROM pg_authid WHERE rolname = $1`, d.Role).Scan(&role); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx(t), `SELECT row(xmin::text, oid, datname, datdba, datacl)::text FROM pg_database WHERE datname = $1`, d.Name).Scan(&db); err != nil {
		t.Fatal(err)
	}
	return role + "\n" + db
}

func TestProvisionTwiceChangesNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		admin func() string
		d     postgres.Database
	}{
		{"peer", cluster.Admin, postgres.Database{Name: "twice", Role: "hostel-pgt-twice"}},
		{"password", cluster.AdminTCP, postgres.Database{Name: "twice_pw", Role: "hostel-pgt-twice-pw", Password: "pw-0123456789abcdef"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, tc.admin())
			provision(t, s, tc.d)
			before := catalog(t, tc.d)
			provision(t, s, tc.d)
			if after := catalog(t, tc.d); after != before {
				t.Errorf("second provisioning changed the catalog:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestProvisionConcurrently: daemons sharing a deployment provision the
// same database and role at once, from sessions of their own: every one
// succeeds, and the role works with the password.
func TestProvisionConcurrently(t *testing.T) {
	d := postgres.Database{Name: "together", Role: "hostel-pgt-together", Password: "pw-together-0123456789"}
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() { errs <- open(t, cluster.AdminTCP()).Provision(ctx(t), d) }()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("provisioning at the same time as others: %v", err)
		}
	}
	c, err := connectAs(t, d.Role, d.Password, d.Name)
	if err != nil {
		t.Fatalf("connecting after: %v", err)
	}
	c.Close(context.Background())
}

// TestCrashedHalfway: a database created by an earlier attempt that died
// before the grants (or a role without its database) is completed, and
// data in it is kept.
func TestCrashedHalfway(t *testing.T) {
	s := open(t, cluster.AdminTCP())
	d := postgres.Database{Name: "halfway", Role: "hostel-pgt-halfway", Password: "pw-halfway-0123456789"}
	admin, err := pgx.Connect(ctx(t), cluster.AdminTCP())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	for _, q := range []string{
		"CREATE ROLE " + pgx.Identifier{d.Role}.Sanitize() + " LOGIN",
		"CREATE DATABASE " + pgx.Identifier{d.Name}.Sanitize() + " OWNER " + pgx.Identifier{d.Role}.Sanitize(),
	} {
		if _, err := admin.Exec(ctx(t), q); err != nil {
			t.Fatal(err)
		}
	}
	// The password was lost with the crash: provisioning sets the new one.
	provision(t, s, d)
	c, err := connectAs(t, d.Role, d.Password, d.Name)
	if err != nil {
		t.Fatalf("after completing: %v", err)
	}
	if _, err := c.Exec(ctx(t), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	provision(t, s, d)
	var v int
	if err := c.QueryRow(ctx(t), "SELECT v FROM kept").Scan(&v); err != nil || v != 42 {
		t.Fatalf("data after re-provisioning: %v %v", v, err)
	}
}

func TestForeignDatabaseIsNotTakenOver(t *testing.T) {
	s := open(t, cluster.Admin())
	admin, err := pgx.Connect(ctx(t), cluster.Admin())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx(t), "CREATE DATABASE someone_elses"); err != nil {
		t.Fatal(err)
	}
	err = s.Provision(ctx(t), postgres.Database{Name: "someone_elses", Role: "hostel-pgt-thief"})
	if err == nil || !strings.Contains(err.Error(), "belongs to role postgres") {
		t.Fatalf("provisioning over a foreign database: %v", err)
	}
}

// TestNameNeedingQuotes: a service "a-b" gets role hostel-a-b and database
// "a-b", both of which must be quoted in SQL.
func TestNameNeedingQuotes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		admin func() string
		d     postgres.Database
	}{
		{"peer", cluster.Admin, postgres.Database{Name: "a-b", Role: "hostel-a-b"}},
		{"password", cluster.AdminTCP, postgres.Database{Name: "a-b-pw", Role: "hostel-a-b-pw", Password: "pw-'quote\"-0123"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, tc.admin())
			provision(t, s, tc.d)
			provision(t, s, tc.d)
			if tc.d.Password == "" {
				systemUser(t, tc.d.Role)
				if out, err := psqlAs(t, tc.d.Role, tc.d.Name, "CREATE TABLE t (v int); INSERT INTO t VALUES (1); SELECT current_database()"); err != nil || !strings.HasSuffix(out, tc.d.Name) {
					t.Fatalf("%v: %s", err, out)
				}
				return
			}
			// The URL a service gets works as it is.
			c, err := pgx.Connect(ctx(t), s.URL(tc.d))
			if err != nil {
				t.Fatalf("DATABASE_URL %s: %v", s.URL(tc.d), err)
			}
			defer c.Close(context.Background())
			var db, who string
			if err := c.QueryRow(ctx(t), "SELECT current_database(), current_user").Scan(&db, &who); err != nil || db != tc.d.Name || who != tc.d.Role {
				t.Fatalf("connected to %q as %q (%v)", db, who, err)
			}
		})
	}
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	s := open(t, cluster.AdminTCP())
	d := postgres.Database{Name: "roundtrip", Role: "hostel-pgt-roundtrip", Password: "pw-roundtrip-0123456"}
	provision(t, s, d)
	c, err := connectAs(t, d.Role, d.Password, d.Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx(t), "CREATE TABLE messages (id serial PRIMARY KEY, body text NOT NULL); INSERT INTO messages (body) VALUES ('one'), ('two'), ('three')"); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(t.TempDir(), "b.dump")
	n, err := s.DumpFile(ctx(t), d.Name, dump)
	if err != nil || n == 0 {
		t.Fatalf("dump: %d bytes, %v", n, err)
	}
	if b, _ := os.ReadFile(dump); !bytes.HasPrefix(b, []byte("PGDMP")) {
		t.Fatalf("dump is not a custom-format archive")
	}
	if _, err := c.Exec(ctx(t), "DELETE FROM messages WHERE body <> 'one'; INSERT INTO messages (body) VALUES ('after the backup')"); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	if err := s.Restore(ctx(t), d.Name, d.Role, dump); err != nil {
		t.Fatal(err)
	}
	c, err = connectAs(t, d.Role, d.Password, d.Name)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := c.Query(ctx(t), "SELECT body FROM messages ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"one", "two", "three"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("after restore: %q, want %q", got, want)
	}
	// The restored table belongs to the service's role: it can still write.
	if _, err := c.Exec(ctx(t), "INSERT INTO messages (body) VALUES ('four')"); err != nil {
		t.Errorf("writing after restore: %v", err)
	}

	// A broken dump changes nothing.
	bad := filepath.Join(t.TempDir(), "bad.dump")
	os.WriteFile(bad, []byte("PGDMP not really"), 0o600)
	if err := s.Restore(ctx(t), d.Name, d.Role, bad); err == nil {
		t.Error("restoring garbage succeeded")
	}
	var count int
	if err := c.QueryRow(ctx(t), "SELECT count(*) FROM messages").Scan(&count); err != nil || count != 4 {
		t.Errorf("after a failed restore: %d rows, %v", count, err)
	}
}

func TestDropAndSizes(t *testing.T) {
	s := open(t, cluster.Admin())
	d := postgres.Database{Name: "dropme", Role: "hostel-pgt-dropme"}
	provision(t, s, d)
	sizes, err := s.Sizes(ctx(t), []string{d.Name, "nonexistent"})
	if err != nil || sizes[d.Name] <= 0 || len(sizes) != 1 {
		t.Fatalf("sizes: %v %v", sizes, err)
	}
	if err := s.Drop(ctx(t), d); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.Exists(ctx(t), d.Name); ok || err != nil {
		t.Errorf("database still exists after drop (%v)", err)
	}
	if _, ok, _ := s.RoleInfo(ctx(t), d.Role); ok {
		t.Error("role still exists after drop")
	}
	if err := s.Drop(ctx(t), d); err != nil {
		t.Errorf("dropping twice: %v", err)
	}
}

func TestEnv(t *testing.T) {
	for _, tc := range []struct {
		admin string
		d     postgres.Database
		want  map[string]string
	}{
		{"host=/run/postgresql user=postgres", postgres.Database{Name: "shop", Role: "hostel-shop"}, map[string]string{
			"DATABASE_URL": "postgres://hostel-shop@/shop?host=%2Frun%2Fpostgresql&sslmode=disable",
			"PGHOST":       "/run/postgresql", "PGDATABASE": "shop", "PGUSER": "hostel-shop", "PGSSLMODE": "disable"}},
		{"host=/tmp/pg port=5433 user=postgres sslmode=require", postgres.Database{Name: "a-b", Role: "hostel-a-b"}, map[string]string{
			"DATABASE_URL": "postgres://hostel-a-b@/a-b?host=%2Ftmp%2Fpg&port=5433&sslmode=disable",
			"PGHOST":       "/tmp/pg", "PGPORT": "5433", "PGDATABASE": "a-b", "PGUSER": "hostel-a-b", "PGSSLMODE": "disable"}},
		{"postgres://admin:x@db.internal:6432/postgres?sslmode=disable", postgres.Database{Name: "api", Role: "hostel-api", Password: "p@ss"}, map[string]string{
			"DATABASE_URL": "postgres://hostel-api:p%40ss@db.internal:6432/api?sslmode=disable",
			"PGHOST":       "db.internal", "PGPORT": "6432", "PGDATABASE": "api", "PGUSER": "hostel-api", "PGSSLMODE": "disable"}},
		{"host=127.0.0.1 port=5432 user=postgres password=x", postgres.Database{Name: "web", Role: "hostel-web", Password: "pw"}, map[string]string{
			"DATABASE_URL": "postgres://hostel-web:pw@127.0.0.1/web?sslmode=prefer",
			"PGHOST":       "127.0.0.1", "PGDATABASE": "web", "PGUSER": "hostel-web", "PGSSLMODE": "prefer"}},
	} {
		t.Run(tc.d.Name, func(t *testing.T) {
			got := open(t, tc.admin).Env(tc.d)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}
