package front_test

// Helpers of the front end's tests that need the router; those that need
// only front are in fronttest, shared with internal/router's tests.

import (
	"context"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
	"hostel/internal/router"
	"hostel/internal/spec"
)

const (
	zone = "hostel.internal"
	host = fronttest.Host
)

var (
	apiV1 = spec.Key("api", "111111111111")
	apiV2 = spec.Key("api", "222222222222")
	webV1 = spec.Key("web", "aaaaaaaaaaaa")
)

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
	_, addr := fronttest.Serve(t, r, front.Options{})
	return r, "http://" + addr
}

func mustSwap(t testing.TB, r *router.Router, tab router.Table) {
	t.Helper()
	if err := r.Swap(tab); err != nil {
		t.Fatalf("Swap: %v", err)
	}
}

// waitIdle fails t unless key's requests on r all end within 5s.
func waitIdle(t testing.TB, r *router.Router, key spec.VersionKey) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.WaitIdle(ctx, key); err != nil {
		t.Errorf("WaitIdle(%s): %v", key, err)
	}
}

// routeTo starts a router whose domain host goes to a backend at addr.
func routeTo(t testing.TB, addr string) (*router.Router, string) {
	t.Helper()
	r, pub := startRouter(t, router.Options{})
	r.AddBackend(apiV1, addr)
	mustSwap(t, r, router.Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	return r, pub
}

// frontTo starts a router whose domain host goes to a backend at addr,
// served by a Front with opts, and returns the Front and its address.
func frontTo(t testing.TB, addr string, opts front.Options) (*router.Router, *front.Front, string) {
	t.Helper()
	r := router.New(router.Options{Zone: zone, Logf: t.Logf})
	t.Cleanup(func() { r.Close() })
	r.AddBackend(apiV1, addr)
	mustSwap(t, r, router.Table{Domains: map[string]spec.VersionKey{host: apiV1}, Redirects: map[string]string{"old.example.org": host}})
	f, pub := fronttest.Serve(t, r, opts)
	return r, f, pub
}

// tlsFrontTo is frontTo over TLS, with a self-signed certificate offering
// h2 and http/1.1: it returns the Front, its address and the pool that
// trusts its certificate.
func tlsFrontTo(t testing.TB, addr string, opts front.Options) (*front.Front, string, *x509.CertPool) {
	t.Helper()
	cfg, pool := fronttest.SelfSigned(t)
	opts.TLSConfig = cfg
	if opts.Loops == 0 {
		opts.Loops = *fronttest.Loops
	}
	r := router.New(router.Options{Zone: zone, Logf: t.Logf})
	r.AddBackend(apiV1, addr)
	mustSwap(t, r, router.Table{Domains: map[string]spec.VersionKey{host: apiV1}, Redirects: map[string]string{"old.example.org": host}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := front.New(r, opts)
	go f.ServeTLS(ln)
	t.Cleanup(func() { f.Close(); r.Close() })
	return f, ln.Addr().String(), pool
}

// rawBackend serves each connection to a new loopback listener, closed at
// the end of the test, with serve, for backends that net/http cannot be:
// it closes the connection when serve returns.
func rawBackend(t testing.TB, serve func(c net.Conn)) (addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}
