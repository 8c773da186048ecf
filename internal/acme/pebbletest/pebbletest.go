// Package pebbletest runs Let's Encrypt's Pebble ACME test server, with
// pebble-challtestsrv as its DNS resolving every name to 127.0.0.1, for
// tests. It is used only by tests.
package pebbletest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Options configure a Pebble.
type Options struct {
	// HTTPPort and TLSPort are where Pebble validates HTTP-01 and
	// TLS-ALPN-01 challenges: the listeners of the server under test.
	HTTPPort, TLSPort int
	// NoSleep removes Pebble's random validation delay
	// (PEBBLE_VA_NOSLEEP); the default keeps it, as the issue demands.
	NoSleep bool
	// Validity is the lifetime of issued certificates; zero means
	// Pebble's default (years).
	Validity time.Duration
}

// Pebble is a running ACME server.
type Pebble struct {
	// Directory is the ACME directory URL.
	Directory string
	// ServerCA is the PEM of the certificate of Pebble's own HTTPS
	// listener: what an ACME client must trust (the spec's ca_root).
	ServerCA string
	// Roots is a pool with the root that signs issued certificates.
	Roots *x509.CertPool
	// RootPEM is that root.
	RootPEM string

	cmds     []*exec.Cmd
	stopOnce sync.Once
	logs     *syncBuffer
}

// Available reports whether the pebble binaries are installed.
func Available() bool {
	_, e1 := exec.LookPath("pebble")
	_, e2 := exec.LookPath("pebble-challtestsrv")
	return e1 == nil && e2 == nil
}

// Start runs pebble-challtestsrv and pebble until the test ends. It skips
// the test if pebble is not installed and HOSTEL_REQUIRE_PEBBLE is unset.
func Start(t testing.TB, opts Options) *Pebble {
	t.Helper()
	if !Available() {
		if os.Getenv("HOSTEL_REQUIRE_PEBBLE") != "" {
			t.Fatal("pebble and pebble-challtestsrv are not installed (apt-get install pebble)")
		}
		t.Skip("pebble is not installed (apt-get install pebble)")
	}
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	must(t, os.WriteFile(certFile, certPEM, 0o600))
	must(t, os.WriteFile(keyFile, keyPEM, 0o600))

	ports := FreePorts(t, 4)
	dnsPort, acmePort, mgmtPort, dnsMgmtPort := ports[0], ports[1], ports[2], ports[3]
	p := &Pebble{
		Directory: fmt.Sprintf("https://127.0.0.1:%d/dir", acmePort),
		ServerCA:  string(certPEM),
		logs:      &syncBuffer{},
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("pebble log (tail):\n%s", p.logs.tail(8000))
		}
	})

	dns := exec.Command("pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-dns01", fmt.Sprintf("127.0.0.1:%d", dnsPort), "-http01", "", "-https01", "", "-tlsalpn01", "",
		"-management", fmt.Sprintf("127.0.0.1:%d", dnsMgmtPort))
	p.run(t, dns)

	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", acmePort),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       opts.HTTPPort,
		"tlsPort":                        opts.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}}
	if opts.Validity > 0 {
		cfg["pebble"].(map[string]any)["certificateValidityPeriod"] = int(opts.Validity / time.Second)
	}
	b, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	must(t, os.WriteFile(cfgFile, b, 0o600))
	pb := exec.Command("pebble", "-config", cfgFile, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))
	pb.Env = os.Environ()
	if opts.NoSleep {
		pb.Env = append(pb.Env, "PEBBLE_VA_NOSLEEP=1")
	}
	p.run(t, pb)

	// Wait for the management interface and fetch the issuing root.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmtPort))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				p.RootPEM = string(body)
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not start: %v\n%s", err, p.logs.tail(4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Roots = x509.NewCertPool()
	if !p.Roots.AppendCertsFromPEM([]byte(p.RootPEM)) {
		t.Fatalf("pebble's root is not PEM: %q", p.RootPEM)
	}
	// The ACME listener too.
	for {
		resp, err := c.Get(p.Directory)
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble's directory does not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

func (p *Pebble) run(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", cmd.Path, err)
	}
	p.cmds = append(p.cmds, cmd)
}

// Log returns what pebble and the DNS server printed.
func (p *Pebble) Log() string { return p.logs.tail(1 << 30) }

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago and that no earlier call in this process returned. They are
// held open together while chosen (asked one at a time, the kernel may
// hand out a port it just gave back), and a port handed out before is
// never handed out again: a test that chose ports for hostel and then
// starts Pebble (which chooses its own) must not find Pebble on them.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	handed.Lock()
	defer handed.Unlock()
	ports := make([]int, 0, n)
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close() // held until all are chosen: the kernel moves on
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		port, _ := strconv.Atoi(p)
		if handed.ports[port] {
			continue
		}
		handed.ports[port] = true
		ports = append(ports, port)
	}
	return ports
}

// handed holds every port FreePorts returned in this process.
var handed = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// selfSigned makes the certificate of Pebble's own listener (localhost,
// 127.0.0.1).
func selfSigned(t testing.TB) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "pebble test listener"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.b) > n {
		return string(s.b[len(s.b)-n:])
	}
	return string(s.b)
}

// Stop kills Pebble and its DNS server before the test ends, to make the
// CA unreachable.
func (p *Pebble) Stop() {
	p.stopOnce.Do(func() {
		for _, c := range p.cmds {
			c.Process.Kill()
			c.Wait()
		}
	})
}
