// Package fronttest holds the helpers that the tests of internal/front and
// internal/router share: backends, clients, raw connections and a front end
// on a loopback listener. It imports only front and the standard library,
// so that router's internal tests can use it too.
package fronttest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/front"
)

// Host is the domain the tests route to their backend.
const Host = "api.example.org"

// Loops is front.Options.Loops for the tests' front ends: `make test`
// runs the tests once with event loops (where the platform has them) and
// once with -front-loops=-1, a goroutine per connection.
var Loops = flag.Int("front-loops", 0, "front.Options.Loops of the tests' front ends")

// StartBackend starts a backend that answers "backend NAME" and returns its
// address (host:port).
func StartBackend(t testing.TB, name string) string {
	t.Helper()
	return StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend %s host=%s path=%s", name, r.Host, r.URL.RequestURI())
	}))
}

// StartHandler starts a backend serving h, closed at the end of the test,
// and returns its address (host:port).
func StartHandler(t testing.TB, h http.Handler) string {
	t.Helper()
	addr, _ := CountingBackend(t, h, nil)
	return addr
}

// CountingBackend starts h and counts the connections the router opens
// to it. configure, if not nil, may change the server before it starts.
func CountingBackend(t testing.TB, h http.Handler, configure func(*http.Server)) (addr string, conns *atomic.Int64) {
	t.Helper()
	conns = new(atomic.Int64)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	if configure != nil {
		configure(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), conns
}

// EchoBackend answers with the method, target, Host and body it got.
func EchoBackend(t testing.TB) string {
	t.Helper()
	return StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s host=%s body=%q proto=%s", r.Method, r.URL.RequestURI(), r.Host, b, r.Header.Get("X-Forwarded-Proto"))
	}))
}

// Gate is a backend handler that blocks each request until released.
type Gate struct {
	Entered chan struct{} // receives one value as each request comes in
	Release chan struct{} // requests wait until it is closed
}

// NewGate returns a Gate that lets 16 requests in before it blocks them
// on Entered.
func NewGate() *Gate {
	return &Gate{Entered: make(chan struct{}, 16), Release: make(chan struct{})}
}

func (g *Gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.Entered <- struct{}{}
	<-g.Release
	io.WriteString(w, "slow done")
}

// Serve serves r through a Front with opts on a new loopback listener,
// closed at the end of the test, and returns the Front and the listener's
// address (host:port). opts.Loops 0 takes -front-loops.
func Serve(t testing.TB, r front.Router, opts front.Options) (*front.Front, string) {
	t.Helper()
	if opts.Loops == 0 {
		opts.Loops = *Loops
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := front.New(r, opts)
	served := make(chan error, 1)
	go func() { served <- f.Serve(ln) }()
	t.Cleanup(func() {
		f.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve = %v, want ErrServerClosed", err)
		}
	})
	return f, ln.Addr().String()
}

// Client follows no redirects and gives up after 10 s.
var Client = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       10 * time.Second,
}

// Get requests url with Host host ("" keeps the URL's) and returns status,
// Location and body.
func Get(t testing.TB, url, host string) (status int, location, body string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, b := Send(t, Client, req)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

// Do sends a request for Host and returns the response with its body read.
func Do(t testing.TB, c *http.Client, method, url string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = Host
	return Send(t, c, req)
}

// Send does req with c and returns the response with its body read.
func Send(t testing.TB, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", req.Method, req.URL, req.Host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s (Host %s): reading body: %v", req.Method, req.URL, req.Host, err)
	}
	return resp, b
}

// RawConn dials the public listener at URL pub for hand-written requests.
func RawConn(t testing.TB, pub string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(pub, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// DialFront is RawConn for an address (host:port).
func DialFront(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	return RawConn(t, "http://"+addr)
}

// ReadResp reads a response to a method request from br, and its body.
func ReadResp(t testing.TB, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, string(b)
}

// SelfSigned returns a TLS configuration with a certificate for
// 127.0.0.1 and the pool that trusts it.
func SelfSigned(t testing.TB) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "front test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos: []string{"h2", "http/1.1"}}, pool
}

// WaitFor polls cond until it holds, failing the test after 5 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
