package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"hostel/internal/postgres/pgtest"
)

// pgRows returns the bodies in table messages of database db, as the
// administrator sees them.
func pgRows(t *testing.T, pg *pgtest.Cluster, db string) []string {
	t.Helper()
	c, err := pgx.Connect(context.Background(), pg.Admin()+" dbname="+db)
	if err != nil {
		t.Fatalf("connect to %s: %v", db, err)
	}
	defer c.Close(context.Background())
	rows, err := c.Query(context.Background(), "SELECT body FROM messages ORDER BY id")
	if err != nil {
		t.Fatalf("messages of %s: %v", db, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pgNames returns the databases and the roles of the server.
func pgNames(t *testing.T, pg *pgtest.Cluster) (dbs, roles map[string]bool) {
	t.Helper()
	c, err := pgx.Connect(context.Background(), pg.Admin())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	collect := func(q string) map[string]bool {
		rows, err := c.Query(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, n := range names {
			m[n] = true
		}
		return m
	}
	return collect("SELECT datname FROM pg_database"), collect("SELECT rolname FROM pg_roles")
}

// TestPreviewData: a preview's own version of a service with a database
// gets its own database, a copy of production's rows at the preview's
// creation, and its own state directory (a copy of production's with
// previews.state "copy"); what it writes never reaches production's
// database; env rm backs the database up and leaves no database, process,
// route, run record or state directory of the preview, and production's
// role and database as they were.
func TestPreviewData(t *testing.T) {
	pg := pgtest.Start(t)
	e := NewEnv(t)
	e.StartDaemon()
	migrate := []string{"bin/guestbook", "migrate"}
	spec := func(tag string) map[string]any {
		s := guestbookSpec(e, pg, tag, migrate, true)
		s["previews"] = map[string]any{"state": "copy"}
		return s
	}
	e.WriteSpec(spec("1"))
	e.MustRun("deploy", "--no-confirm")
	post(t, e, "guestbook.example", "from production")
	prodState := filepath.Join(e.Root, "state", "guestbook")
	if err := os.WriteFile(filepath.Join(prodState, "marker"), []byte("production's"), 0o600); err != nil {
		t.Fatal(err)
	}
	dbsBefore, rolesBefore := pgNames(t, pg)

	e.WriteSpec(spec("2"))
	e.MustRun("deploy", "--env", "pr-1", "--no-confirm")
	host := "guestbook.pr-1.hostel.internal"
	if code, _, body := e.Get(host, "/"); code != 200 || !strings.Contains(body, "from production") {
		t.Fatalf("the preview's guestbook: %d %q, want production's rows copied", code, body)
	}
	post(t, e, host, "from the preview")
	post(t, e, "guestbook.example", "production after the copy")
	if got := pgRows(t, pg, "guestbook"); strings.Join(got, "|") != "from production|production after the copy" {
		t.Errorf("production's database holds %q: a preview write reached it, or a production write is missing", got)
	}
	if got := pgRows(t, pg, "guestbook_pr_1"); strings.Join(got, "|") != "from production|from the preview" {
		t.Errorf("the preview's database holds %q, want the copy and its own write", got)
	}
	previewState := filepath.Join(e.Root, "state", "guestbook@pr-1")
	if b, err := os.ReadFile(filepath.Join(previewState, "marker")); err != nil || string(b) != "production's" {
		t.Errorf("the preview's state directory: marker %q, %v; want a copy of production's", b, err)
	}
	pid := e.envStatus("pr-1")["guestbook"].PID
	prodPID := e.envStatus("production")["guestbook"].PID
	previewRole := procEnv(t, pid)["PGUSER"]
	if _, roles := pgNames(t, pg); !roles[previewRole] || len(roles) != len(rolesBefore)+1 || previewRole == "hostel-guestbook" {
		t.Errorf("roles with the preview: %v, want production's and the preview's own %q", roles, previewRole)
	}
	// Isolation: each process may reach its own database only, under its
	// own role or another's. (The daemon runs as root and reaches the server
	// over its socket: each role is its process's user, by peer.)
	for _, tc := range []struct {
		name     string
		pid      int
		role, db string // "" keeps the process's own
		wantOK   bool
	}{
		{"the preview its own", pid, "", "", true},
		{"the preview production's", pid, "", "guestbook", false},
		{"the preview production's as production's role", pid, "hostel-guestbook", "guestbook", false},
		{"production its own", prodPID, "", "", true},
		{"production the preview's", prodPID, "", "guestbook_pr_1", false},
		{"production the preview's as the preview's role", prodPID, previewRole, "guestbook_pr_1", false},
	} {
		out, err := psqlAs(t, tc.pid, tc.role, tc.db)
		if got := err == nil; got != tc.wantOK {
			t.Errorf("%s: psql connected %v (%v: %s), want %v", tc.name, got, err, out, tc.wantOK)
		}
	}
	// The copied state directory is the preview's user's, production's
	// stays production's.
	for _, c := range []struct {
		path string
		pid  int
	}{{filepath.Join(previewState, "marker"), pid}, {prodState, prodPID}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if owner, want := fi.Sys().(*syscall.Stat_t).Uid, uidOf(t, c.pid); owner != want {
			t.Errorf("%s belongs to uid %d, want %d (the user of process %d)", c.path, owner, want, c.pid)
		}
	}

	e.MustRun("env", "rm", "pr-1")
	dbs, roles := pgNames(t, pg)
	if dbs["guestbook_pr_1"] || len(dbs) != len(dbsBefore) {
		t.Errorf("database: after env rm %v, before the preview %v", dbs, dbsBefore)
	}
	if !roles["hostel-guestbook"] || len(roles) != len(rolesBefore) {
		t.Errorf("role: after env rm %v, before the preview %v", roles, rolesBefore)
	}
	if pid == 0 || pidAlive(pid) {
		t.Errorf("process: the preview's guestbook (pid %d) still runs", pid)
	}
	if code, _, _ := e.Get(host, "/"); code != 404 {
		t.Errorf("route: %s answers %d after env rm, want 404", host, code)
	}
	if _, err := os.Stat(previewState); !os.IsNotExist(err) {
		t.Errorf("state directory: %s: %v, want it gone", previewState, err)
	}
	if _, err := user.Lookup(previewRole); err == nil {
		t.Errorf("user: the preview's %s is left after env rm", previewRole)
	}
	if runs, _ := filepath.Glob(filepath.Join(e.Root, "run", "*@pr-1*")); len(runs) != 0 {
		t.Errorf("run records left: %v", runs)
	}
	if dumps, _ := filepath.Glob(filepath.Join(e.Root, "backups", "guestbook@pr-1", "*-env-rm.dump")); len(dumps) != 1 {
		t.Errorf("backups of the preview's database before its drop: %v, want one", dumps)
	}
	if got := pgRows(t, pg, "guestbook"); len(got) != 2 {
		t.Errorf("production's database after env rm: %q", got)
	}
	if code, _, body := e.Get("guestbook.example", "/"); code != 200 || !strings.Contains(body, "production after the copy") {
		t.Errorf("production's guestbook after env rm: %d %q", code, body)
	}
}

// procEnv is the environment of process pid.
func procEnv(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// uidOf is the real user id of process pid.
func uidOf(t *testing.T, pid int) uint32 {
	uid, _ := procIDs(t, pid)
	return uid
}

// procIDs are the real user and group ids of process pid.
func procIDs(t *testing.T, pid int) (uid, gid uint32) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			fmt.Sscan(f[1], &uid)
		} else if len(f) > 1 && f[0] == "Gid:" {
			fmt.Sscan(f[1], &gid)
		}
	}
	return uid, gid
}

// psqlAs runs psql as process pid could: as its user and group, with its
// PG* environment, and role and db, when not "", as PGUSER and PGDATABASE.
func psqlAs(t *testing.T, pid int, role, db string) (string, error) {
	t.Helper()
	uid, gid := procIDs(t, pid)
	env := []string{"PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=10"}
	for k, v := range procEnv(t, pid) {
		switch {
		case k == "PGUSER" && role != "":
			v = role
		case k == "PGDATABASE" && db != "":
			v = db
		case !strings.HasPrefix(k, "PG"):
			continue
		}
		env = append(env, k+"="+v)
	}
	cmd := exec.Command(filepath.Join(pgtest.BinDir, "psql"), "-X", "-At", "-c", "SELECT current_user")
	cmd.Env, cmd.Dir = env, "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
