package router

// Helpers of the router's tests that need the router core; those that
// need only front are in fronttest, shared with internal/front's tests.

import (
	"testing"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
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
func startRouter(t testing.TB, opts Options) (*Router, string) {
	t.Helper()
	if opts.Zone == "" {
		opts.Zone = zone
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	r := New(opts)
	t.Cleanup(func() { r.Close() })
	// The public listener is served as the daemon serves it: by the
	// front end, which leaves what it does not forward to net/http.
	_, addr := fronttest.Serve(t, r, front.Options{})
	return r, "http://" + addr
}

func mustSwap(t testing.TB, r *Router, tab Table) {
	t.Helper()
	if err := r.Swap(tab); err != nil {
		t.Fatalf("Swap: %v", err)
	}
}

// routeTo starts a router whose domain host goes to a backend at addr.
func routeTo(t testing.TB, addr string) (*Router, string) {
	t.Helper()
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, addr)
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	return r, pub
}

// frontTo starts a router whose domain host goes to a backend at addr,
// served by a Front with opts, and returns the Front and its address.
func frontTo(t testing.TB, addr string, opts front.Options) (*Router, *front.Front, string) {
	t.Helper()
	r := New(Options{Zone: zone, Logf: t.Logf})
	t.Cleanup(func() { r.Close() })
	r.AddBackend(apiV1, addr)
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV1}, Redirects: map[string]string{"old.example.org": host}})
	f, pub := fronttest.Serve(t, r, opts)
	return r, f, pub
}
