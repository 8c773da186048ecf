package daemon

import (
	"strings"
	"testing"

	"hostel/internal/cgroup"
	"hostel/internal/spec"
)

// Without cgroups, plan warns for each service that sets memory or cpu, and
// only for those; with cgroups it does not warn.
func TestLimitWarnings(t *testing.T) {
	s := &spec.Spec{Services: map[string]*spec.Service{
		"api":  {Memory: "512M"},
		"cron": {CPU: 0.5},
		"web":  {},
	}}
	tests := []struct {
		name    string
		cgroups *cgroup.Hierarchy
		want    []string // services warned about
	}{
		{name: "no cgroups", want: []string{`"api"`, `"cron"`}},
		{name: "cgroups", cgroups: &cgroup.Hierarchy{}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Daemon{cgroups: tt.cgroups}
			got := d.limitWarnings(s)
			if len(got) != len(tt.want) {
				t.Fatalf("warnings = %q, want one for each of %v", got, tt.want)
			}
			for n, w := range got {
				if !strings.Contains(w, "service "+tt.want[n]) || !strings.Contains(w, "not enforced") {
					t.Errorf("warning %d = %q, want it to name service %s and say limits are not enforced", n, w, tt.want[n])
				}
			}
		})
	}
}
