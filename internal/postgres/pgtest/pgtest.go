// Package pgtest starts a private PostgreSQL 15 cluster for tests: initdb in
// a temporary directory, peer authentication on its unix socket (root may
// connect as postgres, every other system user as the role of its own name),
// SCRAM passwords on 127.0.0.1, with or without TLS. Only tests import it.
package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
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
	// CACert is the file (readable by everyone) with the self-signed
	// certificate the server presents over TCP when started with TLS; ""
	// when the server runs with ssl = off.
	CACert string
}

// Options say how to start a cluster.
type Options struct {
	// TLS turns ssl on, with a self-signed certificate for 127.0.0.1 and
	// localhost.
	TLS bool
}

// Admin is the administrator conninfo over the unix socket (peer: root
// connects as postgres).
func (c *Cluster) Admin() string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", c.SocketDir, c.Port)
}

// AdminTCP is the administrator conninfo over TCP with a password, without
// TLS.
func (c *Cluster) AdminTCP() string {
	return c.AdminTCPWith("sslmode=disable")
}

// AdminTCPWith is the administrator conninfo over TCP with a password and
// the extra parameters given (e.g. "sslmode=verify-full sslrootcert=…");
// "" leaves libpq's defaults (sslmode=prefer).
func (c *Cluster) AdminTCPWith(extra string) string {
	s := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres", c.Port, c.Password)
	if extra != "" {
		s += " " + extra
	}
	return s
}

// Start starts a cluster that lives until the test ends.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	return StartOptions(tb, Options{})
}

// StartOptions starts a cluster as opts say that lives until the test ends.
func StartOptions(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	c, err := NewOptions(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Stop)
	return c
}

// New initializes and starts a cluster without TLS; Stop removes it.
func New() (*Cluster, error) { return NewOptions(Options{}) }

// NewOptions initializes and starts a cluster as opts say; Stop removes it.
func NewOptions(opts Options) (c *Cluster, err error) {
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
	var tlsOpts []string
	if opts.TLS {
		key := filepath.Join(dir, "server.key")
		c.CACert = filepath.Join(dir, "server.crt")
		if err := SelfSigned(c.CACert, key); err != nil {
			return nil, err
		}
		tlsOpts = []string{"-c", "ssl=on", "-c", "ssl_cert_file=" + c.CACert, "-c", "ssl_key_file=" + key}
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
	server := strings.Join(append([]string{"-p", strconv.Itoa(c.Port), "-k", c.SocketDir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "synchronous_commit=off", "-c", "shared_buffers=16MB", "-c", "max_connections=50"}, tlsOpts...), " ")
	if err := run("runuser", "-u", "postgres", "--", filepath.Join(BinDir, "pg_ctl"), "-D", data,
		"-l", filepath.Join(dir, "log"), "-o", server, "-w", "-t", "30", "start"); err != nil {
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

// SelfSigned writes a self-signed certificate for 127.0.0.1 and localhost
// (its own CA, so clients can verify it with sslrootcert) and its key.
func SelfSigned(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}
