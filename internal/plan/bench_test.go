package plan

import (
	"encoding/json"
	"fmt"
	"testing"

	"hostel/internal/spec"
)

// bigSpec is a spec of n services in layers of 10, each needing two of the
// layer below, with a domain and some env each.
func bigSpec(n int, greeting string) []byte {
	svcs := map[string]any{}
	for i := range n {
		svc := map[string]any{
			"package": fmt.Sprintf("/nix/store/%032d-app%d", i, i),
			"exec":    []string{"bin/app", "--serve"},
			"env":     map[string]string{"LOG_LEVEL": "info", "GREETING": greeting, "N": fmt.Sprint(i)},
			"domains": []string{fmt.Sprintf("app%d.example.org", i)},
			"health":  map[string]any{"path": "/healthz"},
		}
		if i >= 10 {
			svc["needs"] = []string{fmt.Sprintf("s%04d", i-10), fmt.Sprintf("s%04d", (i/10-1)*10+(i+1)%10)}
		}
		svcs[fmt.Sprintf("s%04d", i)] = svc
	}
	b, _ := json.Marshal(map[string]any{"services": svcs})
	return b
}

// BenchmarkPlan1000 measures what `hostel plan` does for a 1,000-service
// spec against a 1,000-service generation: decode, validate, hash, plan.
func BenchmarkPlan1000(b *testing.B) {
	cur, err := spec.Decode("cur.json", bigSpec(1000, "hello"))
	if err != nil {
		b.Fatal(err)
	}
	cv, _ := spec.Versions(cur, spec.Inputs{})
	g := &spec.Generation{Number: 1, Spec: cur, Versions: cv}
	data := bigSpec(1000, "howdy")
	b.ReportAllocs()
	for b.Loop() {
		next, err := spec.Decode("hostel.json", data)
		if err != nil {
			b.Fatal(err)
		}
		p, err := Make(next, spec.Inputs{}, g)
		if err != nil {
			b.Fatal(err)
		}
		if !p.Changed() {
			b.Fatal("nothing changed")
		}
	}
}
