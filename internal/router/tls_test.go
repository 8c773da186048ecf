package router

import (
	"crypto/tls"
	"errors"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
	"hostel/internal/spec"
)

// certSet is the certificates that are there, as a test says: what
// Options.Certs asks of certificate management.
type certSet struct {
	mu    sync.Mutex
	hosts map[string]bool
}

func (c *certSet) Has(host string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hosts[host]
}

func (c *certSet) add(host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hosts == nil {
		c.hosts = map[string]bool{}
	}
	c.hosts[host] = true
}

// tlsTable serves shop.example over HTTPS with HSTS (www.shop.example
// redirects to it), wiki.example and new.example over HTTPS, and
// plain.example on HTTP only.
var tlsTable = Table{
	Domains:   map[string]spec.VersionKey{"shop.example": apiV1, "wiki.example": apiV1, "new.example": apiV1, "plain.example": apiV1},
	Redirects: map[string]string{"www.shop.example": "shop.example"},
	TLS: map[string]TLS{
		"shop.example": {HTTPS: true, HSTS: true}, "www.shop.example": {HTTPS: true, HSTS: true},
		"wiki.example": {HTTPS: true}, "NEW.example": {HTTPS: true},
	},
}

// tlsRouter serves tlsTable with certificates for shop.example and
// wiki.example (not yet for new.example) and an HTTPS listener on port
// 8443, through a front end set up as the daemon's with HTTPS on, and
// returns the router, the certificates and the plain listener's URL.
func tlsRouter(t *testing.T) (*Router, *certSet, string) {
	t.Helper()
	certs := &certSet{}
	certs.add("shop.example")
	certs.add("wiki.example")
	r := New(Options{Zone: zone, Logf: t.Logf, Certs: certs, HTTPSPort: "8443"})
	t.Cleanup(func() { r.Close() })
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	mustSwap(t, r, tlsTable)
	_, addr := fronttest.Serve(t, r, front.Options{Direct: r.Direct})
	return r, certs, "http://" + addr
}

// TestTLSRedirect: on HTTP, a name the table serves over HTTPS answers
// 301 to HTTPS on the HTTPS listener's port, path and query kept, once
// its certificate is there (a redirect host goes to its target); before
// that, it is served on HTTP. ACME challenge paths, names on HTTP only
// and immutable names are served.
func TestTLSRedirect(t *testing.T) {
	_, certs, pub := tlsRouter(t)
	version := spec.VersionHost("api", "111111111111", zone)
	tests := []struct {
		name, host, uri, want string // want "": served (200)
	}{
		{"domain", "shop.example", "/cart?x=1", "https://shop.example:8443/cart?x=1"},
		{"case and port", "WIKI.example:80", "/a/b", "https://wiki.example:8443/a/b"},
		{"redirect host", "www.shop.example", "/cart?x=1", "https://shop.example:8443/cart?x=1"},
		{"escaped path", "wiki.example", "/a%20b?q=%2F", "https://wiki.example:8443/a%20b?q=%2F"},
		{"no certificate yet", "new.example", "/", ""},
		{"http only", "plain.example", "/", ""},
		{"acme challenge", "shop.example", "/.well-known/acme-challenge/tok", ""},
		{"acme challenge escaped", "shop.example", "/.well-known/acme%2Dchallenge/tok", ""},
		{"immutable name", version, "/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, loc, body := fronttest.Get(t, pub+tt.uri, tt.host)
			if tt.want == "" {
				if status != http.StatusOK || !strings.HasPrefix(body, "backend api-v1 ") {
					t.Errorf("got %d %q (Location %q), want the service's 200", status, body, loc)
				}
				return
			}
			if status != http.StatusMovedPermanently || loc != tt.want {
				t.Errorf("got %d Location %q, want 301 %q", status, loc, tt.want)
			}
		})
	}
	t.Run("once the certificate is there", func(t *testing.T) {
		certs.add("new.example")
		if status, loc, _ := fronttest.Get(t, pub+"/n", "new.example"); status != 301 || loc != "https://new.example:8443/n" {
			t.Errorf("got %d Location %q, want 301 https://new.example:8443/n", status, loc)
		}
	})
}

// TestTLSRedirectDefaultPort: a redirect to an HTTPS listener on 443
// names no port; without certificate management (HTTPS off) nothing is
// redirected.
func TestTLSRedirectDefaultPort(t *testing.T) {
	certs := &certSet{}
	certs.add("shop.example")
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"443", Options{Certs: certs, HTTPSPort: "443"}, "https://shop.example/p"},
		{"no port", Options{Certs: certs}, "https://shop.example/p"},
		{"https off", Options{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Zone = zone
			r := New(tc.opts)
			t.Cleanup(func() { r.Close() })
			r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
			mustSwap(t, r, tlsTable)
			_, addr := fronttest.Serve(t, r, front.Options{Direct: r.Direct})
			status, loc, _ := fronttest.Get(t, "http://"+addr+"/p", "shop.example:8080")
			if tc.want == "" && status != 200 || tc.want != "" && (status != 301 || loc != tc.want) {
				t.Errorf("got %d Location %q, want %q (\"\": 200)", status, loc, tc.want)
			}
		})
	}
}

// TestHSTS: on HTTPS, the responses for names that ask for HSTS carry it —
// served, redirected, or their version not running — over HTTP/1.1 (the
// front end's fast path) and HTTP/2 alike; the others do not.
func TestHSTS(t *testing.T) {
	r, _, _ := tlsRouter(t)
	cfg, roots := fronttest.SelfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := front.New(r, front.Options{TLSConfig: cfg, DirectTLS: r.DirectTLS})
	served := make(chan error, 1)
	go func() { served <- f.ServeTLS(ln) }()
	t.Cleanup(func() {
		f.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS = %v, want ErrServerClosed", err)
		}
	})
	for _, h2 := range []bool{false, true} {
		c := &http.Client{CheckRedirect: fronttest.Client.CheckRedirect, Timeout: fronttest.Client.Timeout,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: h2}}
		t.Cleanup(c.CloseIdleConnections)
		for _, tt := range []struct {
			host   string
			status int
			hsts   bool
		}{
			{"shop.example", 200, true},
			{"www.shop.example", 301, true},
			{"wiki.example", 200, false},
			{"plain.example", 200, false},
			{spec.VersionHost("api", "111111111111", zone), 200, false},
		} {
			req, _ := http.NewRequest("GET", "https://"+ln.Addr().String()+"/x", nil)
			req.Host = tt.host
			resp, _ := fronttest.Send(t, c, req)
			if wantProto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]; resp.Proto != wantProto {
				t.Fatalf("%s: %s, want %s", tt.host, resp.Proto, wantProto)
			}
			got := resp.Header.Get("Strict-Transport-Security")
			if resp.StatusCode != tt.status || (got == HSTSHeader) != tt.hsts || (got != "" && got != HSTSHeader) {
				t.Errorf("%s %s: %d, Strict-Transport-Security %q; want %d, hsts %v", resp.Proto, tt.host, resp.StatusCode, got, tt.status, tt.hsts)
			}
		}
	}
	t.Run("version not running", func(t *testing.T) {
		r.RemoveBackend(apiV1)
		c := &http.Client{Timeout: fronttest.Client.Timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
		defer c.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https://"+ln.Addr().String()+"/", nil)
		req.Host = "shop.example"
		resp, _ := fronttest.Send(t, c, req)
		if resp.StatusCode != 503 || resp.Header.Get("Strict-Transport-Security") != HSTSHeader {
			t.Errorf("got %d, Strict-Transport-Security %q; want 503 with HSTS", resp.StatusCode, resp.Header.Get("Strict-Transport-Security"))
		}
	})
}

// TestDirect: what the front end's fast path asks before it forwards a
// request itself agrees with the router's decision: a request redirected
// to HTTPS, an ACME challenge (answered in front of the router) and, on
// HTTPS, a response that takes HSTS are left to net/http.
func TestDirect(t *testing.T) {
	r, _, _ := tlsRouter(t)
	tests := []struct {
		host, path        string
		direct, directTLS bool
	}{
		{"plain.example", "/", true, true},
		{"PLAIN.example:8080", "/x", true, true},
		{"plain.example", "/.well-known/acme-challenge/tok", false, true},
		{"plain.example", "/.well-known/acme%2Dchallenge/tok", false, true},
		{"shop.example", "/", false, false},     // redirected; HSTS
		{"www.shop.example", "/", false, false}, // redirected
		{"wiki.example", "/", false, true},      // redirected
		{"new.example", "/", true, true},        // no certificate yet
		{"unknown.example", "/", true, true},    // the router answers 404
		{spec.VersionHost("api", "111111111111", zone), "/", true, true},
	}
	for _, tt := range tests {
		if got := r.Direct(tt.host, tt.path); got != tt.direct {
			t.Errorf("Direct(%q, %q) = %v, want %v", tt.host, tt.path, got, tt.direct)
		}
		if got := r.DirectTLS(tt.host, tt.path); got != tt.directTLS {
			t.Errorf("DirectTLS(%q, %q) = %v, want %v", tt.host, tt.path, got, tt.directTLS)
		}
	}
}

// TestSwapTLS: a table's TLS policy is kept with its names normalized; a
// policy for a name the table does not serve, or HSTS without HTTPS, is
// refused and changes nothing.
func TestSwapTLS(t *testing.T) {
	r, _, _ := tlsRouter(t)
	want := map[string]TLS{
		"shop.example": {HTTPS: true, HSTS: true}, "www.shop.example": {HTTPS: true, HSTS: true},
		"wiki.example": {HTTPS: true}, "new.example": {HTTPS: true},
	}
	if got := r.Table().TLS; !maps.Equal(got, want) {
		t.Fatalf("Table().TLS = %v, want %v", got, want)
	}
	for _, tt := range []struct {
		name string
		tls  map[string]TLS
		err  string
	}{
		{"unknown name", map[string]TLS{"other.example": {HTTPS: true}}, `tls of "other.example", which is neither a domain nor a redirect`},
		{"hsts without https", map[string]TLS{"plain.example": {HSTS: true}}, `tls of "plain.example": hsts without https`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := tlsTable
			bad.TLS = tt.tls
			if err := r.Swap(bad); err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Swap = %v, want %q", err, tt.err)
			}
			if got := r.Table().TLS; !maps.Equal(got, want) {
				t.Errorf("after a refused Swap, TLS = %v, want %v", got, want)
			}
		})
	}
}

// TestCertificates: the names that need a certificate are those served
// over HTTPS, each with its service (a redirect host's is its target's).
func TestCertificates(t *testing.T) {
	tab := Table{
		Domains:   map[string]spec.VersionKey{"shop.example": apiV1, "wiki.example": webV1, "plain.example": apiV1},
		Redirects: map[string]string{"www.shop.example": "shop.example"},
		TLS: map[string]TLS{"shop.example": {HTTPS: true, HSTS: true}, "www.shop.example": {HTTPS: true},
			"wiki.example": {HTTPS: true}},
	}
	want := map[string]string{"shop.example": "api", "www.shop.example": "api", "wiki.example": "web"}
	if got := tab.Certificates(); !maps.Equal(got, want) {
		t.Errorf("Certificates() = %v, want %v", got, want)
	}
}
