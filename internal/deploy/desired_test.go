package deploy

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"hostel/internal/plan"
	"hostel/internal/spec"
)

func gen(env string, versions map[string]spec.Version, svcs map[string]*spec.Service) *spec.Generation {
	return &spec.Generation{Env: env, Spec: &spec.Spec{Services: svcs}, Versions: versions}
}

// TestHold: an instance is held while any environment's current
// generation uses it: a version a preview shares runs once, production's
// instance; a preview's own version is its own instance.
func TestHold(t *testing.T) {
	svcs := map[string]*spec.Service{"api": {}, "web": {}}
	prod := gen("production", map[string]spec.Version{"api": "a2", "web": "w2"}, svcs)
	pr1 := gen("pr-1", map[string]spec.Version{"api": "a1", "web": "w2"}, svcs)
	pr1.Shares = map[string]string{"web": spec.DefaultEnv}
	for _, tc := range []struct {
		name string
		gens []*spec.Generation
		want []spec.VersionKey
	}{
		{"none", nil, nil},
		{"production", []*spec.Generation{prod}, []spec.VersionKey{"api-a2", "web-w2"}},
		{"shared and own", []*spec.Generation{prod, pr1}, []spec.VersionKey{"api-a1@pr-1", "api-a2", "web-w2"}},
		{"nil is nothing", []*spec.Generation{nil, pr1}, []spec.VersionKey{"api-a1@pr-1", "web-w2"}},
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

// TestMarkPreview: a preview's plan says "shared" for a version it newly
// shares, "start" for one it starts an instance of, and keeps "keep" for
// what does not change; the text plan counts them.
func TestMarkPreview(t *testing.T) {
	svcs := map[string]*spec.Service{"api": {Exec: []string{"/bin/api"}}, "web": {Exec: []string{"/bin/web"}, Needs: []string{"api"}}}
	mk := func(api, web spec.Version, shares map[string]string) *spec.Generation {
		g := gen("pr-1", map[string]spec.Version{"api": api, "web": web}, svcs)
		g.Shares = shares
		return g
	}
	p := func(actions map[string]plan.Action) *plan.Plan {
		out := &plan.Plan{}
		for _, n := range []string{"api", "web"} {
			out.Services = append(out.Services, plan.Change{Name: n, Action: actions[n], To: "v"})
		}
		return out
	}
	tests := []struct {
		name      string
		planned   map[string]plan.Action
		next, cur *spec.Generation
		want      map[string]plan.Action
		summary   string
	}{
		{"a new preview", map[string]plan.Action{"api": plan.Add, "web": plan.Add},
			mk("a1", "w2", map[string]string{"api": spec.DefaultEnv}), nil,
			map[string]plan.Action{"api": plan.Shared, "web": plan.Start}, "1 start, 1 shared"},
		{"deployed again, web changed", map[string]plan.Action{"api": plan.Keep, "web": plan.Update},
			mk("a1", "w3", map[string]string{"api": spec.DefaultEnv}), mk("a1", "w2", map[string]string{"api": spec.DefaultEnv}),
			map[string]plan.Action{"api": plan.Keep, "web": plan.Start}, "1 start, 1 keep"},
		{"deployed again, nothing changed", map[string]plan.Action{"api": plan.Keep, "web": plan.Keep},
			mk("a1", "w2", map[string]string{"api": spec.DefaultEnv}), mk("a1", "w2", map[string]string{"api": spec.DefaultEnv}),
			map[string]plan.Action{"api": plan.Keep, "web": plan.Keep}, "2 keep"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl := p(tt.planned)
			MarkPreview(pl, tt.next, tt.cur)
			got := map[string]plan.Action{}
			for _, c := range pl.Services {
				got[c.Name] = c.Action
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("actions %v, want %v", got, tt.want)
			}
			var b strings.Builder
			if err := pl.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(b.String(), tt.summary+"\n") {
				t.Errorf("text plan:\n%s\nwant it to end with %q", b.String(), tt.summary)
			}
			if tt.planned["api"] == plan.Keep && !strings.Contains(b.String(), "production's data") {
				t.Errorf("a kept shared version does not say whose data it writes to:\n%s", b.String())
			}
		})
	}
}

// TestCallables: the versions kept callable are those of kept generations
// whose service says "callable" there, with their needs' instances in
// that generation, less what the current generations run; needs first,
// each with the generation that owns its instance.
func TestCallables(t *testing.T) {
	call := func(needs ...string) *spec.Service {
		return &spec.Service{OldVersions: spec.OldVersionsCallable, Needs: needs}
	}
	stop := func(needs ...string) *spec.Service { return &spec.Service{Needs: needs} }
	v1 := gen("production", map[string]spec.Version{"api": "a1", "db": "d1"}, map[string]*spec.Service{"api": call("db"), "db": stop()})
	v1.Number = 1
	v2 := gen("production", map[string]spec.Version{"api": "a2", "db": "d1"}, map[string]*spec.Service{"api": call("db"), "db": stop()})
	v2.Number = 2
	v3 := gen("production", map[string]spec.Version{"api": "a3", "db": "d3"}, map[string]*spec.Service{"api": call("db"), "db": stop()})
	v3.Number = 3
	// The same versions as callable: a stop generation holds them.
	s1 := gen("production", map[string]spec.Version{"api": "a1", "db": "d1"}, map[string]*spec.Service{"api": stop("db"), "db": stop()})
	s1.Number = 1
	// Transitive: web needs api needs db, only web is callable.
	t1 := gen("production", map[string]spec.Version{"web": "w1", "api": "a1", "db": "d1"},
		map[string]*spec.Service{"web": call("api"), "api": stop("db"), "db": stop()})
	t1.Number = 1
	// A preview that shares production's db and runs its own api.
	p1 := gen("pr-1", map[string]spec.Version{"api": "a1", "db": "d1"}, map[string]*spec.Service{"api": call("db"), "db": stop()})
	p1.Number, p1.Shares = 4, map[string]string{"db": spec.DefaultEnv}
	p2 := gen("pr-1", map[string]spec.Version{"api": "a2", "db": "d1"}, map[string]*spec.Service{"api": call("db"), "db": stop()})
	p2.Number, p2.Shares = 5, map[string]string{"db": spec.DefaultEnv}
	for _, tc := range []struct {
		name     string
		kept     []*spec.Generation
		currents map[string]*spec.Generation
		want     []string // key@generation, in order
	}{
		{"nothing kept", nil, map[string]*spec.Generation{}, nil},
		{"the current one only", []*spec.Generation{v2}, map[string]*spec.Generation{"production": v2}, nil},
		{"replaced, its need still current", []*spec.Generation{v1, v2}, map[string]*spec.Generation{"production": v2}, []string{"api-a1@1"}},
		{"replaced with its need", []*spec.Generation{v1, v2, v3}, map[string]*spec.Generation{"production": v3},
			[]string{"db-d1@2", "api-a1@1", "api-a2@2"}},
		{"stop is not kept", []*spec.Generation{s1, v3}, map[string]*spec.Generation{"production": v3}, nil},
		{"rolled back: current again", []*spec.Generation{v1, v2}, map[string]*spec.Generation{"production": v1}, []string{"api-a2@2"}},
		{"needs, transitively", []*spec.Generation{t1, v3}, map[string]*spec.Generation{"production": v3},
			[]string{"db-d1@1", "api-a1@1", "web-w1@1"}},
		// d1 runs: pr-1's current generation shares it.
		{"a preview's own and a shared instance", []*spec.Generation{v1, v3, p1, p2}, map[string]*spec.Generation{"production": v3, "pr-1": p2},
			[]string{"api-a1@1", "api-a1@pr-1@4"}},
		{"the owner's generation for a shared instance", []*spec.Generation{v1, p1, v3}, map[string]*spec.Generation{"production": v3},
			[]string{"db-d1@1", "api-a1@1", "api-a1@pr-1@4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range Callables(tc.kept, tc.currents) {
				got = append(got, fmt.Sprintf("%s@%d", c.Key(), c.Generation.Number))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Callables = %v, want %v", got, tc.want)
			}
		})
	}
}
