package acme_test

import (
	"testing"

	"hostel/internal/acme"
	"hostel/internal/spec"
	"hostel/internal/store/storetest/backends"
)

// TestDirect: the predicates the public front end asks before it forwards
// a request itself agree with what HTTPHandler and HTTPSHandler would do.
func TestDirect(t *testing.T) {
	d := newDaemon(t, backends.Bolt(t))
	m, err := acme.New(t.Context(), d.options(acme.Options{HTTPAddr: "127.0.0.1:80", HTTPSAddr: "127.0.0.1:443"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	off := false
	m.Update(generation(nil, map[string]*spec.Service{
		"shop":  {Domains: []string{"shop.example"}, Redirects: []string{"www.shop.example"}, HSTS: true},
		"plain": {Domains: []string{"plain.example"}, TLS: &off},
	}))
	tests := []struct {
		host, path        string
		direct, tlsDirect bool
	}{
		{"plain.example", "/", true, true},
		{"PLAIN.example:8080", "/x", true, true},
		{"plain.example", "/.well-known/acme-challenge/tok", false, true},
		{"plain.example", "/.well-known/acme%2Dchallenge/tok", false, true},
		{"shop.example", "/", false, false},     // may be redirected; HSTS
		{"www.shop.example", "/", false, false}, // redirected
		{"unknown.example", "/", true, true},    // the router answers 404
		{spec.VersionHost("shop", "0123456789ab", spec.DefaultZone), "/", true, true},
	}
	for _, tt := range tests {
		if got := m.Direct(tt.host, tt.path); got != tt.direct {
			t.Errorf("Direct(%q, %q) = %v, want %v", tt.host, tt.path, got, tt.direct)
		}
		if got := m.DirectTLS(tt.host, tt.path); got != tt.tlsDirect {
			t.Errorf("DirectTLS(%q, %q) = %v, want %v", tt.host, tt.path, got, tt.tlsDirect)
		}
	}
}
