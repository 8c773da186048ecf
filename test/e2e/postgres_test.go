package e2e

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hostel/internal/postgres/pgtest"
	"hostel/internal/store"
	"hostel/internal/store/storetest/backends"
)

func guestbookSpec(e *Env, pg *pgtest.Cluster, tag string, release []string, withGuestbook bool) map[string]any {
	services := map[string]any{
		"wiki": e.App("wiki", map[string]any{"domains": []string{"wiki.example"}}),
	}
	if withGuestbook {
		services["guestbook"] = e.App("guestbook", map[string]any{
			"postgres": true,
			"release":  release,
			"env":      map[string]string{"TAG": tag},
			"domains":  []string{"guestbook.example"},
			"health":   map[string]any{"path": "/healthz"},
		})
	}
	return map[string]any{"postgres": map[string]any{"admin": pg.Admin()}, "services": services}
}

func post(t testing.TB, e *Env, host, body string) string {
	t.Helper()
	req, _ := newRequest("POST", "http://"+e.HTTP+"/", body)
	req.Host = host
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %s %s", host, resp.Status, b)
	}
	return string(b)
}

type dbStatus struct {
	Name       string
	SizeBytes  int64      `json:"size_bytes"`
	LastBackup *time.Time `json:"last_backup"`
}

func guestbookDB(t testing.TB, e *Env) *dbStatus {
	t.Helper()
	var st struct {
		Services []struct {
			Name     string
			State    string
			Database *dbStatus
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Services {
		if s.Name == "guestbook" && s.State != "draining" {
			return s.Database
		}
	}
	return nil
}

func backups(t testing.TB, e *Env) []string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(e.Root, "backups", "guestbook"))
	var out []string
	for _, ent := range ents {
		if strings.HasSuffix(ent.Name(), ".dump") && !strings.HasPrefix(ent.Name(), ".") {
			out = append(out, ent.Name())
		}
	}
	return out
}

// TestPostgresStory: a service gets its own database on a real PostgreSQL;
// its release migration runs once per new version after a backup; a failing
// release leaves the old version serving; backup, destroy, restore brings
// the rows back; removing the service keeps the database until db drop.
func TestPostgresStory(t *testing.T) {
	pg := pgtest.Start(t)
	e := NewEnv(t)
	e.StartDaemon()
	migrate := []string{"bin/guestbook", "migrate"}

	e.WriteSpec(guestbookSpec(e, pg, "1", migrate, true))
	e.MustRun("deploy", "--no-confirm")
	_, st := e.Status()
	v1 := st["guestbook"].Version
	if got := post(t, e, "guestbook.example", "first!"); !strings.Contains(got, "signed #1") {
		t.Fatalf("signing: %q", got)
	}
	post(t, e, "guestbook.example", "second")
	if code, _, body := e.Get("guestbook.example", "/"); code != 200 || !strings.Contains(body, "first!") || !strings.Contains(body, "second") {
		t.Fatalf("reading the guestbook: %d %q", code, body)
	}
	if n := len(backups(t, e)); n != 1 {
		t.Errorf("%d backups after the first release, want 1", n)
	}
	db := guestbookDB(t, e)
	if db == nil || db.Name != "guestbook" || db.SizeBytes <= 0 || db.LastBackup == nil {
		t.Errorf("status database: %+v", db)
	}
	if out := e.MustRun("status"); !strings.Contains(out, "LAST BACKUP") {
		t.Errorf("status text lacks the databases:\n%s", out)
	}

	t.Run("shell as the service's role", func(t *testing.T) {
		out := e.MustRun("db", "shell", "guestbook", "--", "-At", "-c", "SELECT current_user, count(*) FROM messages")
		if strings.TrimSpace(out) != "hostel-guestbook|2" {
			t.Errorf("db shell: %q", out)
		}
		// The role is neither a superuser nor allowed to create databases.
		out, _, code := e.Run("db", "shell", "guestbook", "--", "-At", "-c", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
		if code != 0 || strings.TrimSpace(out) != "f" {
			t.Errorf("rolsuper: %q (exit %d)", out, code)
		}
		_, errOut, code := e.Run("db", "shell", "guestbook", "--", "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE another")
		if code == 0 || !strings.Contains(errOut, "permission denied to create database") {
			t.Errorf("creating a database: exit %d, %q", code, errOut)
		}
	})

	t.Run("release runs once per new version", func(t *testing.T) {
		e.WriteSpec(guestbookSpec(e, pg, "2", migrate, true))
		e.MustRun("deploy", "--no-confirm")
		_, st := e.Status()
		if st["guestbook"].Version == v1 {
			t.Fatal("no new version")
		}
		if n := len(backups(t, e)); n != 2 {
			t.Errorf("%d backups after the second release, want 2", n)
		}
		// A daemon restart starts the version again, without its release:
		// the store records that it ran.
		e.StopDaemon()
		st2 := backends.OpenRootOf(t, e.Store, e.Root)
		for _, v := range []string{v1, st["guestbook"].Version} {
			if _, err := st2.Record(t.Context(), store.KindRelease, "guestbook/"+v); err != nil {
				t.Errorf("release record of %s: %v", v, err)
			}
		}
		st2.Close()
		e.StartDaemon()
		if n := len(backups(t, e)); n != 2 {
			t.Errorf("%d backups after a daemon restart, want still 2", n)
		}
		if code, _, body := e.Get("guestbook.example", "/"); code != 200 || !strings.Contains(body, "second") {
			t.Errorf("after daemon restart: %d %q", code, body)
		}
	})

	t.Run("failing release leaves the old version serving", func(t *testing.T) {
		_, before := e.Status()
		e.WriteSpec(guestbookSpec(e, pg, "3", []string{"/bin/sh", "-c", "echo migration exploded >&2; exit 3"}, true))
		_, errOut, code := e.Run("deploy", "--no-confirm")
		if code != 1 || !strings.Contains(errOut, "migration exploded") || !strings.Contains(errOut, "release") {
			t.Fatalf("deploy with a failing release: exit %d, stderr %q", code, errOut)
		}
		_, after := e.Status()
		if after["guestbook"].Version != before["guestbook"].Version || after["guestbook"].PID != before["guestbook"].PID {
			t.Errorf("guestbook changed: %+v -> %+v", before["guestbook"], after["guestbook"])
		}
		if code, _, body := e.Get("guestbook.example", "/"); code != 200 || !strings.Contains(body, "first!") {
			t.Errorf("old version after the failed deploy: %d %q", code, body)
		}
		e.WriteSpec(guestbookSpec(e, pg, "2", migrate, true)) // back to what runs
	})

	t.Run("backup, destroy, restore", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "guestbook.dump")
		if out := e.MustRun("db", "backup", "guestbook", file); !strings.Contains(out, "backed up guestbook") {
			t.Errorf("backup: %q", out)
		}
		e.MustRun("db", "shell", "guestbook", "--", "-c", "DELETE FROM messages")
		if _, _, body := e.Get("guestbook.example", "/"); strings.Contains(body, "first!") {
			t.Fatalf("rows still there after DELETE: %q", body)
		}
		_, before := e.Status()
		out := e.MustRun("db", "restore", "guestbook", file)
		if !strings.Contains(out, "restarted guestbook-"+before["guestbook"].Version) {
			t.Errorf("restore: %q", out)
		}
		if code, _, body := e.Get("guestbook.example", "/"); code != 200 || !strings.Contains(body, "first!") || !strings.Contains(body, "second") {
			t.Errorf("after restore: %d %q", code, body)
		}
		_, after := e.Status()
		if after["guestbook"].PID == before["guestbook"].PID {
			t.Errorf("the service was not stopped and restarted around the restore")
		}
		if _, errOut, code := e.Run("db", "restore", "guestbook", e.Bin); code != 2 || !strings.Contains(errOut, "not a custom-format dump") {
			t.Errorf("restoring a non-dump: exit %d, %q", code, errOut)
		}
	})

	t.Run("removing keeps the database until db drop", func(t *testing.T) {
		if _, errOut, code := e.Run("db", "drop", "guestbook", "--yes-really"); code != 2 || !strings.Contains(errOut, "remove it from the spec") {
			t.Errorf("drop while deployed: exit %d, %q", code, errOut)
		}
		e.WriteSpec(guestbookSpec(e, pg, "2", migrate, false))
		if plan := e.MustRun("plan"); !strings.Contains(plan, "is kept") {
			t.Errorf("plan does not say the database is kept:\n%s", plan)
		}
		e.MustRun("deploy", "--no-confirm")
		if out := e.MustRun("db", "shell", "guestbook", "--", "-At", "-c", "SELECT count(*) FROM messages"); strings.TrimSpace(out) != "2" {
			t.Errorf("database after removing the service: %q", out)
		}
		if _, _, code := e.Run("db", "drop", "guestbook"); code != 2 {
			t.Errorf("drop without --yes-really: exit %d", code)
		}
		e.MustRun("db", "drop", "guestbook", "--yes-really")
		if _, errOut, code := e.Run("db", "shell", "guestbook", "--", "-c", "SELECT 1"); code != 2 || !strings.Contains(errOut, "no database") {
			t.Errorf("shell after drop: exit %d, %q", code, errOut)
		}
	})
}
