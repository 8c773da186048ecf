// Package etcdtest gives tests a cluster of etcd members as hostel serve
// --etcd-embed --etcd-peers runs them (etcd.StartClusterMember) — in the
// test's process, on loopback ports, over TLS with certificates of a CA
// made for the test — and the CA itself, to make the certificates of
// daemons a test starts. It is test code, imported only by tests.
package etcdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"hostel/internal/pki"
	"hostel/internal/store/etcd"
)

// CA is a certificate authority made for a test: the cluster's own CA,
// as an operator makes one with openssl (README, "A cluster of three").
type CA struct {
	// CertFile is the CA's certificate (PEM): what --etcd-ca names.
	CertFile string
	dir      string
	name     string
	ca       *pki.CA
}

// NewCA makes a CA named name, its files in dir.
func NewCA(t testing.TB, dir, name string) *CA {
	t.Helper()
	ca, err := pki.NewCA(name, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.PEM()
	if err != nil {
		t.Fatal(err)
	}
	return &CA{CertFile: writeFile(t, filepath.Join(dir, name+".pem"), certPEM), dir: dir, name: name, ca: ca}
}

// Node issues the certificate of a node reached at ips — for its
// listeners (server authentication) and its connections to the others
// (client authentication), as a member's must be — and returns its
// certificate and key files: what --etcd-cert and --etcd-key name.
func (ca *CA) Node(t testing.TB, name string, ips ...net.IP) (certFile, keyFile string) {
	t.Helper()
	return ca.Leaf(t, name, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, ips...)
}

// Leaf issues a certificate for ips with the extended key usages given,
// and returns its certificate and key files.
func (ca *CA) Leaf(t testing.TB, name string, usages []x509.ExtKeyUsage, ips ...net.IP) (certFile, keyFile string) {
	t.Helper()
	c, err := ca.ca.Leaf(&x509.Certificate{Subject: pkix.Name{CommonName: name}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: usages, IPAddresses: ips}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.KeyPEM(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(ca.dir, ca.name+"-"+name)
	return writeFile(t, base+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})),
		writeFile(t, base+"-key.pem", keyPEM)
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Loopback is the address the members and clients of tests are on.
var Loopback = net.IPv4(127, 0, 0, 1)

// PeerURLs returns a peer URL of scheme on each of ips (loopback
// addresses: this machine's), on a port that is free there, and so is
// the client port below it (etcd.ClientURL), none of them the same.
func PeerURLs(t testing.TB, scheme string, ips ...net.IP) []url.URL {
	t.Helper()
	var held []net.Listener
	defer func() {
		for _, ln := range held {
			ln.Close()
		}
	}()
	var out []url.URL
	for tries := 0; len(out) < len(ips); tries++ {
		if tries > 100 {
			t.Fatal("no pair of free loopback ports")
		}
		ip := ips[len(out)].String()
		peer, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, peer)
		port := peer.Addr().(*net.TCPAddr).Port
		client, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port-1)))
		if err != nil {
			continue
		}
		held = append(held, client)
		out = append(out, url.URL{Scheme: scheme, Host: peer.Addr().String()})
	}
	return out
}

// Cluster is a cluster of members in the test's process, each with its
// own data directory, certificate and log.
type Cluster struct {
	CA      *CA
	Members []*Member
	// clientCert and clientKey are the test's own client certificate.
	clientCert, clientKey string
}

// Member is one member of a Cluster.
type Member struct {
	// Name is its name; Dir its data directory; Cluster what it was
	// started with.
	Name, Dir string
	Cluster   etcd.Cluster
	log       logBuffer
	mu        sync.Mutex
	m         *etcd.Member
}

// StartCluster starts n members (named m0, m1 …) on loopback over TLS,
// all at once, and waits until they serve. They stop when the test ends,
// and their logs are printed if it failed.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	dir := t.TempDir()
	c := &Cluster{CA: NewCA(t, dir, "cluster-ca")}
	c.clientCert, c.clientKey = c.CA.Node(t, "test-client", Loopback)
	ips := make([]net.IP, n)
	for i := range ips {
		ips[i] = Loopback
	}
	urls := PeerURLs(t, "https", ips...)
	var peers []etcd.Peer
	for i, u := range urls {
		peers = append(peers, etcd.Peer{Name: "m" + strconv.Itoa(i), URL: u})
	}
	for _, p := range peers {
		cert, key := c.CA.Node(t, p.Name, Loopback)
		c.Members = append(c.Members, &Member{Name: p.Name, Dir: filepath.Join(dir, p.Name),
			Cluster: etcd.Cluster{Name: p.Name, Peers: peers, CertFile: cert, KeyFile: key, CAFile: c.CA.CertFile}})
	}
	t.Cleanup(func() {
		c.Stop(t)
		if t.Failed() {
			for _, m := range c.Members {
				t.Logf("etcd member %s log:\n%s", m.Name, m.log.String())
			}
		}
	})
	c.Start(t)
	return c
}

// Config is a client's configuration for the cluster: every member's
// client URL, and a certificate of the cluster's CA.
func (c *Cluster) Config() etcd.Config {
	tc, err := etcd.TLSConfig(c.clientCert, c.clientKey, c.CA.CertFile)
	if err != nil {
		panic(err) // files this package wrote
	}
	return etcd.Config{Endpoints: c.Members[0].Cluster.Endpoints(), TLS: tc}
}

// Start starts every member that is not running, all at once (each
// Open opens a store on the cluster, a client of every member, closed
// when the test ends.
func (c *Cluster) Open(t testing.TB) *etcd.Store {
	t.Helper()
	st, err := etcd.Open(t.Context(), c.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// waits for a quorum), and waits until they serve.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(c.Members))
	for i, m := range c.Members {
		wg.Go(func() { errs[i] = m.start() })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Stop stops every member that runs, one after the other: members
// stopped all at once each wait for the others to take their leadership
// over, for seconds.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	for _, m := range c.Members {
		m.Stop(t)
	}
}

// Restart stops every member, then starts them again on their data.
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	c.Stop(t)
	c.Start(t)
}

// Stop stops the member (its data stays); nothing if it is stopped.
func (m *Member) Stop(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		return
	}
	if err := m.m.Close(); err != nil {
		t.Errorf("member %s: %v", m.Name, err)
	}
	m.m = nil
}

// Start starts the member again on its data and waits until it serves.
func (m *Member) Start(t testing.TB) {
	t.Helper()
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
}

func (m *Member) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	em, err := etcd.StartClusterMember(ctx, m.Dir, m.Cluster, m.log.logf)
	if err != nil {
		return fmt.Errorf("member %s: %w\n%s", m.Name, err, m.log.String())
	}
	m.m = em
	return nil
}

// Endpoint is the member's own client URL.
func (m *Member) Endpoint() string {
	for i, p := range m.Cluster.Peers {
		if p.Name == m.Name {
			return m.Cluster.Endpoints()[i]
		}
	}
	return ""
}

type logBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *logBuffer) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = fmt.Appendf(l.b, format+"\n", args...)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}
