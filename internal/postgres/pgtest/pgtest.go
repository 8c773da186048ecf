// Package pgtest starts a private PostgreSQL 15 cluster for tests: initdb in
// a temporary directory, peer authentication on its unix socket (root may
// connect as postgres, every other system user as the role of its own name),
// SCRAM passwords on 127.0.0.1. Only tests import it.
package pgtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// BinDir holds the PostgreSQL server programs.
var BinDir = "/usr/lib/postgresql/15/bin"

// Cluster is a running test cluster.
type Cluster struct {
	// Dir holds the data directory, the socket directory and the log.
	Dir string
	// SocketDir is the unix socket directory.
	SocketDir string
	// Port is the TCP port on 127.0.0.1, which also names the socket.
	Port int
	// Password is the postgres superuser's password (for TCP).
	Password string
}

// Admin is the administrator conninfo over the unix socket (peer: root
// connects as postgres).
func (c *Cluster) Admin() string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", c.SocketDir, c.Port)
}

// AdminTCP is the administrator conninfo over TCP with a password.
func (c *Cluster) AdminTCP() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", c.Port, c.Password)
}

// Start starts a cluster that lives until the test ends.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	c, err := New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Stop)
	return c
}

// New initializes and starts a cluster; Stop removes it.
func New() (c *Cluster, err error) {
	if _, err := os.Stat(filepath.Join(BinDir, "initdb")); err != nil {
		return nil, fmt.Errorf("PostgreSQL 15 is not installed (%v): apt-get install -y postgresql-15", err)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the PostgreSQL tests run as root (initdb runs as the postgres user through runuser)")
	}
	// A short path: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "hpg-")
	if err != nil {
		return nil, err
	}
	c = &Cluster{Dir: dir, SocketDir: filepath.Join(dir, "s")}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	pw := make([]byte, 12)
	rand.Read(pw)
	c.Password = hex.EncodeToString(pw)
	data := filepath.Join(dir, "data")
	for _, d := range []string{data, c.SocketDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(c.Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := run("chown", "-R", "postgres:postgres", dir); err != nil {
		return nil, err
	}
	// Everyone may reach the socket; the data stays the server's.
	for _, d := range []string{dir, c.SocketDir} {
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := run("runuser", "-u", "postgres", "--", filepath.Join(BinDir, "initdb"), "-D", data,
		"--username=postgres", "--pwfile="+pwfile, "--auth-local=peer", "--auth-host=scram-sha-256",
		"--no-sync", "--encoding=UTF8", "--locale=C"); err != nil {
		return nil, err
	}
	os.Remove(pwfile)
	hba := "local all all peer map=hostel\nhost all all 127.0.0.1/32 scram-sha-256\n"
	ident := "hostel root postgres\nhostel /^(.*)$ \\1\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(data, "pg_ident.conf"), []byte(ident), 0o600); err != nil {
		return nil, err
	}
	if err := run("chown", "postgres:postgres", filepath.Join(data, "pg_hba.conf"), filepath.Join(data, "pg_ident.conf")); err != nil {
		return nil, err
	}
	if c.Port, err = freePort(); err != nil {
		return nil, err
	}
	opts := strings.Join([]string{"-p", strconv.Itoa(c.Port), "-k", c.SocketDir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "synchronous_commit=off", "-c", "shared_buffers=16MB", "-c", "max_connections=50"}, " ")
	if err := run("runuser", "-u", "postgres", "--", filepath.Join(BinDir, "pg_ctl"), "-D", data,
		"-l", filepath.Join(dir, "log"), "-o", opts, "-w", "-t", "30", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		return nil, fmt.Errorf("%w\n%s", err, log)
	}
	return c, nil
}

// Stop stops the server at once and removes its directory.
func (c *Cluster) Stop() {
	data := filepath.Join(c.Dir, "data")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
		run("runuser", "-u", "postgres", "--", filepath.Join(BinDir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
	}
	os.RemoveAll(c.Dir)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
