package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"hostel/internal/postgres"
	"hostel/internal/postgres/conninfo"
	"hostel/internal/postgres/pgtest"
)

var (
	tlsOnce    sync.Once
	tlsCluster *pgtest.Cluster
	tlsErr     error
)

// withTLS is a second real cluster, with ssl = on and a self-signed
// certificate, started the first time a test asks (TestMain stops it).
func withTLS(t testing.TB) *pgtest.Cluster {
	t.Helper()
	tlsOnce.Do(func() { tlsCluster, tlsErr = pgtest.NewOptions(pgtest.Options{TLS: true}) })
	if tlsErr != nil {
		t.Fatal(tlsErr)
	}
	return tlsCluster
}

// TestTLSParams: the ssl* parameters of postgres.admin reach the tools as
// given and services as far as they describe the server, with the mode
// always explicit; what hostel cannot pass on everywhere is refused.
func TestTLSParams(t *testing.T) {
	// pgx reads the files when it parses: make real ones, in a directory
	// whose name needs quoting.
	dir := filepath.Join(t.TempDir(), "pg tls")
	os.Mkdir(dir, 0o755)
	ca, cert, key := filepath.Join(dir, "root.crt"), filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	if err := pgtest.SelfSigned(ca, filepath.Join(dir, "root.key")); err != nil {
		t.Fatal(err)
	}
	if err := pgtest.SelfSigned(cert, key); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		admin    string
		env      map[string]string // the daemon's environment
		tool     []string          // the PGSSL* variables of pg_dump and pg_restore
		query    url.Values        // the ssl* parameters of DATABASE_URL
		wantErr  error
		errMatch string
	}{
		{name: "tcp default is prefer", admin: "host=127.0.0.1 user=postgres password=x",
			tool: []string{"PGSSLMODE=prefer"}, query: url.Values{"sslmode": {"prefer"}}},
		{name: "tcp disable", admin: "host=db.internal user=postgres sslmode=disable",
			tool: []string{"PGSSLMODE=disable"}, query: url.Values{"sslmode": {"disable"}}},
		{name: "verify-full with client certificate", admin: "host=db.internal user=postgres sslmode=verify-full sslrootcert='" + ca + "' sslcert=" + strings.ReplaceAll(cert, " ", `\ `) + " sslkey='" + key + "' sslsni=0",
			tool:  []string{"PGSSLMODE=verify-full", "PGSSLROOTCERT=" + ca, "PGSSLSNI=0", "PGSSLCERT=" + cert, "PGSSLKEY=" + key},
			query: url.Values{"sslmode": {"verify-full"}, "sslrootcert": {ca}, "sslsni": {"0"}}},
		{name: "url", admin: "postgres://postgres:x@db.internal:6432/postgres?sslmode=verify-ca&sslrootcert=" + url.PathEscape(ca),
			tool: []string{"PGSSLMODE=verify-ca", "PGSSLROOTCERT=" + ca}, query: url.Values{"sslmode": {"verify-ca"}, "sslrootcert": {ca}}},
		{name: "url ssl=true", admin: "postgres://postgres:x@db.internal/postgres?ssl=true",
			tool: []string{"PGSSLMODE=require"}, query: url.Values{"sslmode": {"require"}}},
		{name: "daemon environment", admin: "host=db.internal user=postgres", env: map[string]string{"PGSSLMODE": "require"},
			tool: []string{"PGSSLMODE=require"}, query: url.Values{"sslmode": {"require"}}},
		{name: "conninfo over environment", admin: "host=db.internal user=postgres sslmode=disable", env: map[string]string{"PGSSLMODE": "require"},
			tool: []string{"PGSSLMODE=disable"}, query: url.Values{"sslmode": {"disable"}}},
		{name: "unix socket", admin: "host=/run/postgresql user=postgres sslmode=require",
			tool: []string{"PGSSLMODE=require"}, query: url.Values{"sslmode": {"disable"}}},
		{name: "crl refused", admin: "host=db.internal user=postgres sslmode=verify-full sslcrl=/etc/pg/crl.pem", wantErr: conninfo.ErrUnsupportedParam, errMatch: "sslcrl"},
		{name: "ssl password refused", admin: "host=db.internal user=postgres sslpassword=x", wantErr: conninfo.ErrUnsupportedParam, errMatch: "sslpassword"},
		{name: "bad mode", admin: "host=db.internal user=postgres", env: map[string]string{"PGSSLMODE": "sometimes"}, errMatch: "sslmode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLSNI"} {
				t.Setenv(k, tc.env[k])
			}
			s, err := postgres.Open(tc.admin)
			if tc.errMatch != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errMatch) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
					t.Fatalf("Open: %v; want an error naming %s", err, tc.errMatch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var tool []string
			for _, kv := range s.ToolEnv("db") {
				if strings.HasPrefix(kv, "PGSSL") {
					tool = append(tool, kv)
				}
			}
			if !slices.Equal(tool, tc.tool) {
				t.Errorf("tool environment %q, want %q", tool, tc.tool)
			}
			dbURL := s.URL(postgres.Database{Name: "db", Role: "hostel-db", Password: "pw"})
			// pgx, like libpq, reads sslrootcert as it parses: the path
			// survives the URL's encoding.
			if _, err := pgx.ParseConfig(dbURL); err != nil {
				t.Errorf("DATABASE_URL does not parse: %v", err)
			}
			u, err := url.Parse(dbURL)
			if err != nil {
				t.Fatal(err)
			}
			q := u.Query()
			q.Del("host")
			q.Del("port")
			if q.Encode() != tc.query.Encode() {
				t.Errorf("DATABASE_URL parameters %q, want %q", q.Encode(), tc.query.Encode())
			}
		})
	}
}

// TestOverTCP provisions, connects as the service (with pgx and with psql,
// from nothing but the service's environment), and backs up and restores
// through pg_dump and pg_restore, against real servers over TCP with scram
// passwords: with ssl = off and with ssl = on (a self-signed certificate),
// under the modes an administrator writes.
func TestOverTCP(t *testing.T) {
	tlsc := withTLS(t)
	for i, tc := range []struct {
		name    string
		cluster *pgtest.Cluster
		extra   string // added to the admin conninfo
		wantSSL bool   // the service's connection is encrypted
	}{
		{"ssl off, libpq default", cluster, "", false},
		{"ssl off, disable", cluster, "sslmode=disable", false},
		{"ssl on, libpq default", tlsc, "", true},
		{"ssl on, require", tlsc, "sslmode=require", true},
		{"ssl on, verify-full", tlsc, "sslmode=verify-full sslrootcert=" + tlsc.CACert, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, tc.cluster.AdminTCPWith(tc.extra))
			d := postgres.Database{Name: fmt.Sprintf("tcp_%d", i), Role: fmt.Sprintf("hostel-pgt-tcp-%d", i), Password: fmt.Sprintf("pw-tcp-%d-0123456789", i)}
			provision(t, s, d)
			env := s.Env(d)

			// A Go client with DATABASE_URL alone.
			c, err := pgx.Connect(ctx(t), env["DATABASE_URL"])
			if err != nil {
				t.Fatalf("pgx with DATABASE_URL %s: %v", env["DATABASE_URL"], err)
			}
			defer c.Close(context.Background())
			var ssl bool
			if err := c.QueryRow(ctx(t), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
				t.Fatal(err)
			}
			if ssl != tc.wantSSL {
				t.Errorf("service connection encrypted: %v, want %v", ssl, tc.wantSSL)
			}
			if _, err := c.Exec(ctx(t), "CREATE TABLE messages (body text); INSERT INTO messages VALUES ('kept')"); err != nil {
				t.Fatal(err)
			}

			// libpq (psql) in the service's environment, given DATABASE_URL.
			cmd := exec.Command(mustTool(t, "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", env["DATABASE_URL"], "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
			cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
			for k, v := range env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("psql with the service's environment: %v: %s", err, out)
			}
			if got, want := strings.TrimSpace(string(out)), map[bool]string{true: "t", false: "f"}[tc.wantSSL]; got != want {
				t.Errorf("psql connection encrypted: %q, want %q", got, want)
			}

			// pg_dump and pg_restore as the administrator.
			dump := filepath.Join(t.TempDir(), "b.dump")
			if _, err := s.DumpFile(ctx(t), d.Name, dump); err != nil {
				t.Fatalf("backup: %v", err)
			}
			if _, err := c.Exec(ctx(t), "DELETE FROM messages"); err != nil {
				t.Fatal(err)
			}
			if err := s.Restore(ctx(t), d.Name, d.Role, dump); err != nil {
				t.Fatalf("restore: %v", err)
			}
			var body string
			if err := c.QueryRow(ctx(t), "SELECT body FROM messages").Scan(&body); err != nil || body != "kept" {
				t.Errorf("after restore: %q, %v", body, err)
			}
		})
	}
}

// TestUnixSocketWithSSLMode: over the unix socket TLS does not apply; an
// administrator's sslmode=require still reaches pg_dump (libpq ignores it
// there) and the service, connecting by peer, is told sslmode=disable.
func TestUnixSocketWithSSLMode(t *testing.T) {
	s := open(t, cluster.Admin()+" sslmode=require")
	d := postgres.Database{Name: "unix_tls", Role: "hostel-pgt-unix-tls"}
	systemUser(t, d.Role)
	provision(t, s, d)
	env := s.Env(d)
	if env["PGSSLMODE"] != "disable" || !strings.Contains(env["DATABASE_URL"], "sslmode=disable") {
		t.Errorf("service environment over the unix socket: %v", env)
	}
	cmd := exec.Command("runuser", "-u", d.Role, "--", mustTool(t, "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", env["DATABASE_URL"], "-c", "SELECT current_user")
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != d.Role {
		t.Fatalf("psql as %s with the service's environment: %v: %s", d.Role, err, out)
	}
	if _, err := s.DumpFile(ctx(t), d.Name, filepath.Join(t.TempDir(), "u.dump")); err != nil {
		t.Fatalf("backup over the unix socket: %v", err)
	}
}
