package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hostel/internal/postgres/pgtest"
)

// envApp builds testdata/envapp into a package directory every service user
// can read, and returns it.
func envApp(t testing.TB) string {
	t.Helper()
	return testApp(t, "envapp", "./test/e2e/testdata/envapp")
}

// readEnv reads a NAME=value list that envapp wrote.
func readEnv(t testing.TB, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		env[k] = v
	}
	return env
}

// TestReleaseOverTCP deploys a service with a database and a release step
// against real PostgreSQL servers over TCP with scram passwords, the admin
// conninfo as an administrator writes it: no sslmode against ssl = off
// (libpq's prefer), and verify-full against ssl = on. The backup before the
// release (pg_dump) goes through; the release, an app that refuses any PORT
// it cannot listen on, runs with exactly the service's environment but
// where to listen; both connect with DATABASE_URL, encrypted as the server
// allows.
func TestReleaseOverTCP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tls     bool
		extra   func(*pgtest.Cluster) string
		mode    string
		wantSSL string
	}{
		{"ssl off, libpq default", false, func(*pgtest.Cluster) string { return "" }, "prefer", "false"},
		{"ssl on, verify-full", true, func(c *pgtest.Cluster) string { return "sslmode=verify-full sslrootcert=" + c.CACert }, "verify-full", "true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pg := pgtest.StartOptions(t, pgtest.Options{TLS: tc.tls})
			e := NewEnv(t)
			e.StartDaemon()
			defer e.Shutdown()
			svc := map[string]any{"package": envApp(t), "exec": []string{"bin/envapp"}, "postgres": true,
				"release": []string{"bin/envapp", "release"}, "env": map[string]string{"GREETING": "hello"}, "stop_grace": "2s"}
			e.WriteSpec(map[string]any{"postgres": map[string]any{"admin": pg.AdminTCPWith(tc.extra(pg))},
				"services": map[string]any{"envapp": svc}})
			e.MustRun("deploy", "--no-confirm")

			state := filepath.Join(e.Root, "state", "envapp")
			release, serve := readEnv(t, filepath.Join(state, "release.env")), readEnv(t, filepath.Join(state, "serve.env"))
			for _, k := range []string{"PORT", "HOST"} {
				if v, ok := release[k]; ok {
					t.Errorf("the release got %s=%s", k, v)
				}
				if serve[k] == "" {
					t.Errorf("the service got no %s", k)
				}
			}
			// The service's environment but where to listen; the run's own
			// RUNTIME_DIRECTORY (and the service's NOTIFY_SOCKET) aside.
			for k, v := range serve {
				switch k {
				case "PORT", "HOST", "NOTIFY_SOCKET":
					continue
				case "RUNTIME_DIRECTORY":
					if release[k] == "" {
						t.Errorf("the release got no %s", k)
					}
					continue
				}
				if release[k] != v {
					t.Errorf("%s: the release got %q, the service %q", k, release[k], v)
				}
			}
			for k, v := range release {
				if _, ok := serve[k]; !ok {
					t.Errorf("the release got %s=%s, which the service did not", k, v)
				}
			}
			if !strings.Contains(serve["DATABASE_URL"], "sslmode="+tc.mode) || serve["PGSSLMODE"] != tc.mode {
				t.Errorf("DATABASE_URL %q and PGSSLMODE %q do not say sslmode=%s", serve["DATABASE_URL"], serve["PGSSLMODE"], tc.mode)
			}
			for _, mode := range []string{"release", "serve"} {
				if b, err := os.ReadFile(filepath.Join(state, mode+".ssl")); err != nil || string(b) != tc.wantSSL {
					t.Errorf("%s connection encrypted: %q (%v), want %s", mode, b, err, tc.wantSSL)
				}
			}
			if n := len(backupsOf(t, e, "envapp")); n != 1 {
				t.Errorf("%d backups before the release, want 1", n)
			}
			out := e.MustRun("db", "shell", "envapp", "--", "-At", "-c", "SELECT count(*), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) FROM releases")
			if want := "1|" + tc.wantSSL[:1]; strings.TrimSpace(out) != want {
				t.Errorf("db shell: %q, want %q", out, want)
			}
			// psql in db shell is told what the service is told.
			out = e.MustRun("db", "shell", "envapp", "--", "-c", `\! echo "$PGSSLMODE|$PGSSLROOTCERT"`)
			if want := serve["PGSSLMODE"] + "|" + serve["PGSSLROOTCERT"]; strings.TrimSpace(out) != want {
				t.Errorf("db shell's TLS environment: %q, want %q", out, want)
			}
		})
	}
}

func backupsOf(t testing.TB, e *Env, service string) []string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(e.Root, "backups", service))
	var out []string
	for _, ent := range ents {
		if strings.HasSuffix(ent.Name(), ".dump") && !strings.HasPrefix(ent.Name(), ".") {
			out = append(out, ent.Name())
		}
	}
	return out
}

// TestBadPostgresAdmin: a postgres.admin with TLS parameters hostel cannot
// pass on, or an unknown sslmode, is bad input: exit 2 with one line naming
// the file and the field, without the password, and nothing deployed.
func TestBadPostgresAdmin(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	defer e.Shutdown()
	for _, tc := range []struct{ admin, want string }{
		{"host=127.0.0.1 user=postgres password=s3cret sslmode=verify-full sslcrl=/etc/pg/crl.pem", "sslcrl"},
		{"host=127.0.0.1 user=postgres password=s3cret sslmode=sometimes", "sslmode"},
	} {
		e.WriteSpec(map[string]any{"postgres": map[string]any{"admin": tc.admin},
			"services": map[string]any{"envapp": map[string]any{"package": envApp(t), "exec": []string{"bin/envapp"}, "postgres": true}}})
		for _, cmd := range []string{"plan", "deploy"} {
			_, errOut, code := e.Run(cmd)
			first, _, _ := strings.Cut(errOut, "\n")
			if code != 2 || !strings.Contains(first, "hostel.json") || !strings.Contains(first, "postgres.admin") || !strings.Contains(first, tc.want) {
				t.Errorf("%s with admin %q: exit %d, %q; want exit 2 naming hostel.json, postgres.admin and %s", cmd, tc.admin, code, errOut, tc.want)
			}
			if strings.Contains(errOut, "s3cret") {
				t.Errorf("%s: the error shows the password: %q", cmd, errOut)
			}
		}
	}
	if gen, _ := e.Status(); gen != 0 {
		t.Errorf("generation %d after refused deploys, want 0", gen)
	}
}
