package front_test

// Helpers of the front end's tests; internal/router has the same for its own.

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
	"hostel/internal/router"
	"hostel/internal/spec"
)

const zone = "hostel.internal"

// frontLoops is front.Options.Loops for the tests' front ends: `make test`
// runs this package's tests once with event loops (where the platform has
// them) and once with -front-loops=-1, a goroutine per connection.
var frontLoops = flag.Int("front-loops", 0, "front.Options.Loops of the tests' front ends")

var (
	apiV1 = spec.Key("api", "111111111111")
	apiV2 = spec.Key("api", "222222222222")
	webV1 = spec.Key("web", "aaaaaaaaaaaa")
)

// startBackend starts a backend that answers "backend NAME" and returns its
// address (host:port).
func startBackend(t testing.TB, name string) string {
	t.Helper()
	return startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend %s host=%s path=%s", name, r.Host, r.URL.RequestURI())
	}))
}

func startHandler(t testing.TB, h http.Handler) string {
	t.Helper()
	addr, _ := countingBackend(t, h, nil)
	return addr
}

// startRouter returns a router and the URL of a public listener serving it.
func startRouter(t testing.TB, opts router.Options) (*router.Router, string) {
	t.Helper()
	if opts.Zone == "" {
		opts.Zone = zone
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	r := router.New(opts)
	t.Cleanup(func() { r.Close() })
	// The public listener is served as the daemon serves it: by the
	// front end, which leaves what it does not forward to net/http.
	_, addr := serveFront(t, r, front.Options{})
	return r, "http://" + addr
}

// serveFront serves r through a Front with opts on a new loopback
// listener, closed at the end of the test, and returns the Front and the
// listener's address (host:port).
func serveFront(t testing.TB, r *router.Router, opts front.Options) (*front.Front, string) {
	t.Helper()
	if opts.Loops == 0 {
		opts.Loops = *frontLoops
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

func mustSwap(t testing.TB, r *router.Router, tab router.Table) {
	t.Helper()
	if err := r.Swap(tab); err != nil {
		t.Fatalf("Swap: %v", err)
	}
}

var client = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       10 * time.Second,
}

// get requests url with Host host ("" keeps the URL's) and returns status,
// Location and body.
func get(t testing.TB, url, host string) (status int, location, body string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, b := send(t, client, req)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

// send does req with c and returns the response with its body read.
func send(t testing.TB, c *http.Client, req *http.Request) (*http.Response, []byte) {
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

// gate is a backend handler that blocks each request until released.
type gate struct {
	entered chan struct{}
	release chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan struct{}, 16), release: make(chan struct{})} }

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.entered <- struct{}{}
	<-g.release
	io.WriteString(w, "slow done")
}

const host = "api.example.org"

// countingBackend starts h and counts the connections the router opens
// to it.
func countingBackend(t testing.TB, h http.Handler, configure func(*http.Server)) (addr string, conns *atomic.Int64) {
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

// routeTo starts a router whose domain host goes to a backend at addr.
func routeTo(t testing.TB, addr string) (*router.Router, string) {
	t.Helper()
	r, pub := startRouter(t, router.Options{})
	r.AddBackend(apiV1, addr)
	mustSwap(t, r, router.Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	return r, pub
}

// rawConn dials the public listener for hand-written requests.
func rawConn(t testing.TB, pub string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(pub, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// do sends a request for host and returns the response with its body read.
func do(t testing.TB, c *http.Client, method, url string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	return send(t, c, req)
}

// frontTo starts a router whose domain host goes to a backend at addr,
// served by a Front with opts, and returns the Front and its address.
func frontTo(t testing.TB, addr string, opts front.Options) (*router.Router, *front.Front, string) {
	t.Helper()
	r := router.New(router.Options{Zone: zone, Logf: t.Logf})
	t.Cleanup(func() { r.Close() })
	r.AddBackend(apiV1, addr)
	mustSwap(t, r, router.Table{Domains: map[string]spec.VersionKey{host: apiV1}, Redirects: map[string]string{"old.example.org": host}})
	f, pub := serveFront(t, r, opts)
	return r, f, pub
}

// echoBackend answers with the method, target, Host and body it got.
func echoBackend(t testing.TB) string {
	t.Helper()
	return startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s host=%s body=%q proto=%s", r.Method, r.URL.RequestURI(), r.Host, b, r.Header.Get("X-Forwarded-Proto"))
	}))
}

func dialFront(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	return rawConn(t, "http://"+addr)
}

func readResp(t testing.TB, br *bufio.Reader, method string) (*http.Response, string) {
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

func selfSigned(t testing.TB) (*tls.Config, *x509.CertPool) {
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

// TestFrontTLS: over TLS, HTTP/1.1 requests take the fast path and say
// X-Forwarded-Proto https; those handed to net/http after a fast one still
// see TLS; HTTP/2 connections are net/http's.
// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
