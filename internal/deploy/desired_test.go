package deploy

import (
	"maps"
	"testing"

	"hostel/internal/spec"
)

func gen(env string, versions map[string]spec.Version, svcs map[string]*spec.Service) *spec.Generation {
	return &spec.Generation{Env: env, Spec: &spec.Spec{Services: svcs}, Versions: versions}
}

// TestHold: a version is held while any environment's current generation
// holds it.
func TestHold(t *testing.T) {
	svcs := map[string]*spec.Service{"api": {}, "web": {}}
	prod := gen("production", map[string]spec.Version{"api": "a2", "web": "w2"}, svcs)
	pr1 := gen("pr-1", map[string]spec.Version{"api": "a1", "web": "w2"}, svcs)
	for _, tc := range []struct {
		name string
		gens []*spec.Generation
		want []spec.VersionKey
	}{
		{"none", nil, nil},
		{"production", []*spec.Generation{prod}, []spec.VersionKey{"api-a2", "web-w2"}},
		{"shared and own", []*spec.Generation{prod, pr1}, []spec.VersionKey{"api-a1", "api-a2", "web-w2"}},
		{"nil is nothing", []*spec.Generation{nil, pr1}, []spec.VersionKey{"api-a1", "web-w2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := map[spec.VersionKey]bool{}
			for _, k := range tc.want {
				want[k] = true
			}
			if got := Hold(tc.gens...); !maps.Equal(got, want) {
				t.Errorf("Hold = %v, want %v", got, want)
			}
		})
	}
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
			got := Table(tc.currents)
			if !maps.Equal(got.Domains, tc.domains) || !maps.Equal(got.Redirects, tc.redirects) {
				t.Errorf("Table = %v / %v, want %v / %v", got.Domains, got.Redirects, tc.domains, tc.redirects)
			}
			if got.Zone != spec.DefaultZone {
				t.Errorf("zone %q, want %q", got.Zone, spec.DefaultZone)
			}
		})
	}
}
