package routes

import (
	"maps"
	"testing"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
)

func gen(env string, versions map[string]spec.Version, svcs map[string]*spec.Service) *spec.Generation {
	return &spec.Generation{Env: env, Spec: &spec.Spec{Services: svcs}, Versions: versions}
}

// TestTable: production's domains and redirects make the table; a
// preview's generation never changes them.
func TestTable(t *testing.T) {
	prod := gen("production", map[string]spec.Version{"web": "w1"},
		map[string]*spec.Service{"web": {Domains: []string{"web.example"}, Redirects: []string{"www.web.example"}}})
	pr1 := gen("pr-1", map[string]spec.Version{"web": "w9"},
		map[string]*spec.Service{"web": {Domains: []string{"web.example", "other.example"}}})
	for _, tc := range []struct {
		name      string
		currents  map[string]*spec.Generation
		domains   map[string]spec.VersionKey
		redirects map[string]string
	}{
		{"empty", map[string]*spec.Generation{}, map[string]spec.VersionKey{}, map[string]string{}},
		{"production", map[string]*spec.Generation{"production": prod},
			map[string]spec.VersionKey{"web.example": "web-w1"}, map[string]string{"www.web.example": "web.example"}},
		{"with a preview", map[string]*spec.Generation{"production": prod, "pr-1": pr1},
			map[string]spec.VersionKey{"web.example": "web-w1"}, map[string]string{"www.web.example": "web.example"}},
		{"a preview alone", map[string]*spec.Generation{"pr-1": pr1}, map[string]spec.VersionKey{}, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Table(tc.currents, nil)
			if !maps.Equal(got.Domains, tc.domains) || !maps.Equal(got.Redirects, tc.redirects) {
				t.Errorf("Table = %v / %v, want %v / %v", got.Domains, got.Redirects, tc.domains, tc.redirects)
			}
			if got.Zone != spec.DefaultZone {
				t.Errorf("zone %q, want %q", got.Zone, spec.DefaultZone)
			}
		})
	}
}

// TestTablePreviews: a preview's services answer on SERVICE.ENV.ZONE
// (internal) and, with previews.domain, on SERVICE.ENV.DOMAIN; a
// production domain of the same name wins.
func TestTablePreviews(t *testing.T) {
	prod := gen(spec.DefaultEnv, map[string]spec.Version{"web": "w1"}, map[string]*spec.Service{"web": {Domains: []string{"web.pr-1.preview.example"}}})
	pr := gen("pr-1", map[string]spec.Version{"web": "w2", "api": "a1"}, map[string]*spec.Service{"web": {}, "api": {}})
	pr.Spec.Previews = &spec.Previews{Domain: "preview.example"}
	tab := Table(map[string]*spec.Generation{spec.DefaultEnv: prod, "pr-1": pr}, nil)
	want := map[string]spec.VersionKey{"web.pr-1.hostel.internal": "web-w2@pr-1", "api.pr-1.hostel.internal": "api-a1@pr-1"}
	if !maps.Equal(tab.Internal, want) {
		t.Errorf("Internal = %v, want %v", tab.Internal, want)
	}
	wantDomains := map[string]spec.VersionKey{"web.pr-1.preview.example": "web-w1", "api.pr-1.preview.example": "api-a1@pr-1"}
	if !maps.Equal(tab.Domains, wantDomains) {
		t.Errorf("Domains = %v, want %v", tab.Domains, wantDomains)
	}
}

// TestTablePauses: a pause holds production's service only, and one of a
// service production does not have holds nothing.
func TestTablePauses(t *testing.T) {
	prod := gen(spec.DefaultEnv, map[string]spec.Version{"web": "w1"}, map[string]*spec.Service{"web": {Domains: []string{"web.example"}}})
	tab := Table(map[string]*spec.Generation{spec.DefaultEnv: prod}, map[string]time.Duration{"web": time.Minute, "gone": time.Minute})
	if want := map[string]time.Duration{"web": time.Minute}; !maps.Equal(tab.Paused, want) {
		t.Errorf("Paused = %v, want %v", tab.Paused, want)
	}
}

// TestTableTLS: the TLS policy follows the names the table routes: a
// service's domains and redirects are served over HTTPS unless its tls is
// false, with HSTS where it asks; a preview's public names over HTTPS
// unless its service's tls is false, never with HSTS; a name production
// and a preview both claim takes production's policy. The names served
// over HTTPS are the ones that need certificates, each with its service.
func TestTableTLS(t *testing.T) {
	off := false
	prod := gen(spec.DefaultEnv, map[string]spec.Version{"shop": "s1", "wiki": "w1", "quotes": "q1", "api": "a1"}, map[string]*spec.Service{
		"shop":   {Domains: []string{"shop.example"}, Redirects: []string{"www.shop.example"}, HSTS: true},
		"wiki":   {Domains: []string{"wiki.pr-1.preview.example"}, TLS: &off},
		"quotes": {Domains: []string{"quotes.example"}, TLS: &off},
		"api":    {},
	})
	pr := gen("pr-1", map[string]spec.Version{"shop": "s2", "wiki": "w2", "blog": "b1"}, map[string]*spec.Service{
		"shop": {HSTS: true}, "wiki": {}, "blog": {TLS: &off},
	})
	pr.Spec.Previews = &spec.Previews{Domain: "preview.example"}
	noDomain := gen("pr-2", map[string]spec.Version{"shop": "s3"}, map[string]*spec.Service{"shop": {}})
	for _, tc := range []struct {
		name     string
		currents map[string]*spec.Generation
		tls      map[string]router.TLS
		certs    map[string]string
	}{
		{"empty", map[string]*spec.Generation{}, nil, map[string]string{}},
		{"production", map[string]*spec.Generation{spec.DefaultEnv: prod},
			map[string]router.TLS{"shop.example": {HTTPS: true, HSTS: true}, "www.shop.example": {HTTPS: true, HSTS: true}},
			map[string]string{"shop.example": "shop", "www.shop.example": "shop"}},
		{"with previews", map[string]*spec.Generation{spec.DefaultEnv: prod, "pr-1": pr, "pr-2": noDomain},
			map[string]router.TLS{"shop.example": {HTTPS: true, HSTS: true}, "www.shop.example": {HTTPS: true, HSTS: true},
				"shop.pr-1.preview.example": {HTTPS: true}},
			map[string]string{"shop.example": "shop", "www.shop.example": "shop", "shop.pr-1.preview.example": "shop"}},
		{"a preview alone", map[string]*spec.Generation{"pr-1": pr}, nil, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := Table(tc.currents, nil)
			if !maps.Equal(tab.TLS, tc.tls) {
				t.Errorf("TLS = %v, want %v", tab.TLS, tc.tls)
			}
			if got := tab.Certificates(); !maps.Equal(got, tc.certs) {
				t.Errorf("Certificates() = %v, want %v", got, tc.certs)
			}
			// The router takes the table as it is.
			r := router.New(router.Options{})
			defer r.Close()
			if err := r.Swap(tab); err != nil {
				t.Errorf("Swap: %v", err)
			}
		})
	}
}
