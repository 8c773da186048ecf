package plan

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"hostel/internal/golden"
	"hostel/internal/spec"
)

// A golden file has sections "-- current --", "-- current-inputs --",
// "-- next --", "-- next-inputs --" and "-- want --". current may be empty
// (no generation yet). want is the text plan, or "error: ..." for a spec error.
func TestGolden(t *testing.T) {
	golden.Run(t, "testdata/*.plan", run)
}

func run(t *testing.T, sec map[string]string) string {
	t.Helper()
	var cur *spec.Generation
	if strings.TrimSpace(sec["current"]) != "" {
		s, err := spec.Decode("current.json", []byte(sec["current"]))
		if err != nil {
			t.Fatalf("current: %v", err)
		}
		in := inputs(t, sec["current-inputs"])
		v, err := spec.Versions(s, in)
		if err != nil {
			t.Fatal(err)
		}
		cur = &spec.Generation{Number: 7, Spec: s, Inputs: in, Versions: v}
	}
	next, err := spec.Decode("hostel.json", []byte(sec["next"]))
	if err != nil {
		return "error: " + err.Error() + "\n"
	}
	p, err := Make(next, inputs(t, sec["next-inputs"]), cur)
	if err != nil {
		return "error: " + err.Error() + "\n"
	}
	var b bytes.Buffer
	if err := p.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func inputs(t *testing.T, s string) spec.Inputs {
	t.Helper()
	var in spec.Inputs
	if strings.TrimSpace(s) != "" {
		if err := json.Unmarshal([]byte(s), &in); err != nil {
			t.Fatalf("inputs: %v", err)
		}
	}
	return in
}

func TestRoutingChangeKeepsVersion(t *testing.T) {
	a := mustDecode(t, `{"services":{"web":{"exec":["/bin/web"],"domains":["a.example"]}}}`)
	b := mustDecode(t, `{"services":{"web":{"exec":["/bin/web"],"domains":["b.example"],"redirects":["www.b.example"],"idle":"5m"}}}`)
	va, _ := spec.Versions(a, spec.Inputs{})
	p, err := Make(b, spec.Inputs{}, &spec.Generation{Number: 1, Spec: a, Versions: va})
	if err != nil {
		t.Fatal(err)
	}
	c := p.Services[0]
	if c.Action != Reroute || c.From != c.To {
		t.Fatalf("got %+v, want reroute with the same version", c)
	}
}

// TestExclusiveAndOldVersionsKeepVersion: exclusive and old_versions are
// not part of a version; changing them reroutes and says which changed.
func TestExclusiveAndOldVersionsKeepVersion(t *testing.T) {
	a := mustDecode(t, `{"services":{"db":{"exec":["/bin/db"]}}}`)
	b := mustDecode(t, `{"services":{"db":{"exec":["/bin/db"],"exclusive":true,"old_versions":"stop"}}}`)
	va, _ := spec.Versions(a, spec.Inputs{})
	vb, _ := spec.Versions(b, spec.Inputs{})
	if va["db"] != vb["db"] {
		t.Fatalf("versions %s and %s differ", va["db"], vb["db"])
	}
	p, err := Make(b, spec.Inputs{}, &spec.Generation{Number: 1, Spec: a, Versions: va})
	if err != nil {
		t.Fatal(err)
	}
	if c := p.Services[0]; c.Action != Reroute || !slices.Contains(c.Reasons, "exclusive changed") {
		t.Fatalf("got %+v, want a reroute because exclusive changed", c)
	}
}

func mustDecode(t testing.TB, s string) *spec.Spec {
	t.Helper()
	sp, err := spec.Decode("hostel.json", []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// FuzzPlan checks that planning is total and deterministic: any two valid
// specs plan without error, twice to the same result, with one change per
// service of either side.
func FuzzPlan(f *testing.F) {
	f.Add(`{"services":{"a":{"exec":["x"]}}}`, `{"services":{"a":{"exec":["y"]},"b":{"exec":["z"],"needs":["a"]}}}`)
	f.Add(`{"services":{}}`, `{"services":{"a":{"exec":["x"],"domains":["a.org"],"redirects":["www.a.org"]}}}`)
	f.Add(`{"services":{"a":{"exec":["x"],"env":{"K":"1"}},"b":{"exec":["y"],"needs":["a"]}}}`,
		`{"services":{"a":{"exec":["x"],"env":{"K":"2"}},"b":{"exec":["y"],"needs":["a"]}}}`)
	f.Add(`{"services":{"a":{"exec":["x"],"replicas":2,"placement":{"labels":{"z":"eu"}}}}}`,
		`{"services":{"a":{"exec":["x"],"placement":{"node":"n1"}}}}`)
	f.Fuzz(func(t *testing.T, cur, next string) {
		cs, err := spec.Decode("cur", []byte(cur))
		if err != nil {
			return
		}
		ns, err := spec.Decode("next", []byte(next))
		if err != nil {
			return
		}
		cv, err := spec.Versions(cs, spec.Inputs{})
		if err != nil {
			t.Fatalf("versions of a valid spec: %v", err)
		}
		g := &spec.Generation{Number: 1, Spec: cs, Versions: cv}
		p1, err := Make(ns, spec.Inputs{}, g)
		if err != nil {
			t.Fatalf("plan of valid specs: %v", err)
		}
		p2, _ := Make(ns, spec.Inputs{}, g)
		j1, _ := json.Marshal(p1)
		j2, _ := json.Marshal(p2)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("planning is not deterministic:\n%s\n%s", j1, j2)
		}
		seen := map[string]bool{}
		for _, c := range p1.Services {
			if seen[c.Name] {
				t.Fatalf("service %q planned twice", c.Name)
			}
			seen[c.Name] = true
			_, inCur := cs.Services[c.Name]
			_, inNext := ns.Services[c.Name]
			if !inCur && !inNext {
				t.Fatalf("plan names unknown service %q", c.Name)
			}
			if (c.Action == Keep || c.Action == Reroute) != (inCur && inNext && cv[c.Name] == p1.Versions[c.Name]) {
				t.Fatalf("service %q: action %s disagrees with versions", c.Name, c.Action)
			}
		}
		if len(seen) != len(union(cs.Services, ns.Services)) {
			t.Fatalf("plan covers %d services, want %d", len(seen), len(union(cs.Services, ns.Services)))
		}
	})
}

// TestOldVersionsCallableKeepsVersion: old_versions "callable" is
// accepted and, a routing field, keeps the version: changing it reroutes.
func TestOldVersionsCallableKeepsVersion(t *testing.T) {
	a := mustDecode(t, `{"services":{"db":{"exec":["/bin/db"]}}}`)
	b := mustDecode(t, `{"services":{"db":{"exec":["/bin/db"],"old_versions":"callable"}}}`)
	va, _ := spec.Versions(a, spec.Inputs{})
	p, err := Make(b, spec.Inputs{}, &spec.Generation{Number: 1, Spec: a, Versions: va})
	if err != nil {
		t.Fatal(err)
	}
	if c := p.Services[0]; c.Action != Reroute || c.From != c.To || !slices.Contains(c.Reasons, "old_versions changed") {
		t.Fatalf("got %+v, want a reroute because old_versions changed", c)
	}
}

// TestPlacementChangeReroutes: replicas and placement are not part of a
// version; changing them alone reroutes (same version, no new process
// for nothing) and says which changed.
func TestPlacementChangeReroutes(t *testing.T) {
	cur := `{"services":{"api":{"exec":["/bin/api"]` + "%s" + `}}}`
	tests := []struct {
		name, from, to string
		reasons        []string
	}{
		{"replicas added", ``, `,"replicas":3`, []string{"replicas changed"}},
		{"replicas 1 written", ``, `,"replicas":1`, nil},
		{"replicas down", `,"replicas":3`, `,"replicas":2`, []string{"replicas changed"}},
		{"labels", ``, `,"placement":{"labels":{"zone":"eu"}}`, []string{"placement.labels changed"}},
		{"label value", `,"placement":{"labels":{"zone":"eu"}}`, `,"placement":{"labels":{"zone":"us"}}`, []string{"placement.labels changed"}},
		{"empty placement", ``, `,"placement":{}`, nil},
		{"pin", `,"placement":{"labels":{"zone":"eu"}}`, `,"placement":{"node":"n1","labels":{"zone":"eu"}}`, []string{"placement.node changed"}},
		{"all", `,"placement":{"node":"n1"}`, `,"replicas":2,"placement":{"labels":{"a":"b"}}`, []string{"replicas changed", "placement.labels changed", "placement.node changed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustDecode(t, strings.Replace(cur, "%s", tt.from, 1))
			b := mustDecode(t, strings.Replace(cur, "%s", tt.to, 1))
			va, _ := spec.Versions(a, spec.Inputs{})
			p, err := Make(b, spec.Inputs{}, &spec.Generation{Number: 1, Spec: a, Versions: va})
			if err != nil {
				t.Fatal(err)
			}
			want := Reroute
			if tt.reasons == nil {
				want, tt.reasons = Keep, []string{}
			}
			if c := p.Services[0]; c.Action != want || c.From != c.To || !slices.Equal(c.Reasons, tt.reasons) {
				t.Fatalf("got %+v, want %s with the same version because %q", c, want, tt.reasons)
			}
		})
	}
}
