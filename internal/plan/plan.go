// Package plan is the pure planner: from the spec a user wants and the
// generation that runs, it says what a deploy would change and why. It does
// no I/O, so it runs the same in the daemon and on a laptop.
package plan

import (
	"fmt"
	"io"
	"maps"
	"reflect"
	"sort"
	"strings"
	"text/tabwriter"

	"hostel/internal/spec"
)

// Action is what a deploy does to one service. It is spec's, as Change
// is, so that a generation keeps the plan that made it.
type Action = spec.Action

// The actions, as in the contract.
const (
	Add     Action = "add"     // a new service: its version starts
	Update  Action = "update"  // a new version starts; the old one drains
	Keep    Action = "keep"    // nothing changes; the process keeps running
	Remove  Action = "remove"  // the service leaves the spec; its version drains
	Reroute Action = "reroute" // same version, different domains, routing or placement
	// A preview environment's versions (hostel deploy --env NAME):
	Shared Action = "shared" // the same version runs already, in another environment: its process is used
	Start  Action = "start"  // the version runs nowhere: the preview starts its own instance, with its own data
)

// Change is the plan for one service.
type Change = spec.Change

// Plan is what a deploy of a spec onto the current generation would do.
type Plan struct {
	// Generation is the number of the current generation; 0 if none.
	Generation uint64 `json:"generation"`
	// SpecHash identifies the planned spec and its inputs.
	SpecHash string `json:"spec_hash"`
	// Services holds one change per service of either side, by name.
	Services []Change `json:"services"`
	// Versions are the planned versions of every service in the new spec.
	Versions map[string]spec.Version `json:"versions"`
	// Warnings are what the machine will not do as the spec asks (such as
	// limits it cannot enforce), one sentence each; nil when none.
	Warnings []string `json:"warnings,omitempty"`
}

// Make plans next (with its inputs) against cur, which may be nil.
func Make(next *spec.Spec, in spec.Inputs, cur *spec.Generation) (*Plan, error) {
	versions, err := spec.Versions(next, in)
	if err != nil {
		return nil, err
	}
	p := &Plan{SpecHash: spec.Hash(next, in), Versions: versions}
	var old *spec.Spec
	var oldIn spec.Inputs
	oldVersions := map[string]spec.Version{}
	if cur != nil {
		p.Generation = cur.Number
		old, oldIn, oldVersions = cur.Spec, cur.Inputs, cur.Versions
	}
	names := map[string]bool{}
	for n := range next.Services {
		names[n] = true
	}
	if old != nil {
		for n := range old.Services {
			names[n] = true
		}
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, name := range sorted {
		ns := next.Services[name]
		var os *spec.Service
		if old != nil {
			os = old.Services[name]
		}
		c := Change{Name: name, From: oldVersions[name], To: versions[name]}
		switch {
		case os == nil:
			c.Action, c.From, c.Reasons = Add, "", []string{"new service"}
		case ns == nil:
			c.Action, c.To, c.Reasons = Remove, "", []string{"not in the spec"}
			if os.Postgres != nil {
				c.Reasons = append(c.Reasons, fmt.Sprintf("database %q is kept (hostel db drop %s --yes-really removes it)", os.Postgres.Name(name), name))
			}
		case c.From != c.To:
			c.Action = Update
			c.Reasons = append(processReasons(name, os, ns, oldIn, in, oldVersions, versions), routingReasons(os, ns)...)
			if len(c.Reasons) == 0 {
				c.Reasons = []string{"version changed"}
			}
		default:
			c.Reasons = routingReasons(os, ns)
			c.Action = Keep
			if len(c.Reasons) > 0 {
				c.Action = Reroute
			}
		}
		if c.Reasons == nil {
			c.Reasons = []string{}
		}
		p.Services = append(p.Services, c)
	}
	return p, nil
}

// processReasons lists the process-shaping differences between two versions of a service.
func processReasons(name string, o, n *spec.Service, oin, nin spec.Inputs, ov, nv map[string]spec.Version) []string {
	var r []string
	field := func(label string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			r = append(r, label+" changed")
		}
	}
	field("package", o.Package, n.Package)
	if o.Package == n.Package && oin.Digests[name] != nin.Digests[name] {
		r = append(r, "package contents changed")
	}
	field("exec", o.Exec, n.Exec)
	r = append(r, mapReasons("env.", o.Env, n.Env)...)
	field("health", o.Health, n.Health)
	field("postgres", o.Postgres, n.Postgres)
	field("release", o.Release, n.Release)
	field("stop_grace", o.StopGrace, n.StopGrace)
	field("memory", o.Memory, n.Memory)
	field("cpu", o.CPU, n.CPU)
	oldSecrets := map[string]string{}
	for _, s := range o.Secrets {
		oldSecrets[s] = oin.Secrets[s]
	}
	newSecrets := map[string]string{}
	for _, s := range n.Secrets {
		newSecrets[s] = nin.Secrets[s]
	}
	for _, s := range sortedKeys(union(oldSecrets, newSecrets)) {
		a, inOld := oldSecrets[s]
		b, inNew := newSecrets[s]
		switch {
		case !inOld:
			r = append(r, fmt.Sprintf("secret %s added", s))
		case !inNew:
			r = append(r, fmt.Sprintf("secret %s removed", s))
		case a != b:
			r = append(r, fmt.Sprintf("secret %s changed", s))
		}
	}
	oldNeeds := map[string]bool{}
	for _, d := range o.Needs {
		oldNeeds[d] = true
	}
	newNeeds := map[string]bool{}
	for _, d := range n.Needs {
		newNeeds[d] = true
	}
	for _, d := range sortedKeys(union(oldNeeds, newNeeds)) {
		switch {
		case !oldNeeds[d]:
			r = append(r, fmt.Sprintf("needs %s added", d))
		case !newNeeds[d]:
			r = append(r, fmt.Sprintf("no longer needs %s", d))
		case ov[d] != nv[d]:
			r = append(r, fmt.Sprintf("needs %s: %s→%s", d, ov[d], nv[d]))
		}
	}
	return r
}

// routingReasons lists differences in fields that never restart a process:
// routing and placement.
func routingReasons(o, n *spec.Service) []string {
	var r []string
	if !reflect.DeepEqual(o.Domains, n.Domains) {
		r = append(r, "domains changed")
	}
	if !reflect.DeepEqual(o.Redirects, n.Redirects) {
		r = append(r, "redirects changed")
	}
	if o.Idle != n.Idle {
		r = append(r, "idle changed")
	}
	if o.Exclusive != n.Exclusive {
		r = append(r, "exclusive changed")
	}
	if o.Callable() != n.Callable() { // unset is "stop"
		r = append(r, "old_versions changed")
	}
	if o.TLSEnabled() != n.TLSEnabled() {
		r = append(r, "tls changed")
	}
	if o.HSTS != n.HSTS {
		r = append(r, "hsts changed")
	}
	// Placement fields: which nodes run the same version, and how many.
	if o.ReplicasOrDefault() != n.ReplicasOrDefault() { // unset is 1
		r = append(r, "replicas changed")
	}
	op, np := placementOf(o), placementOf(n)
	if !maps.Equal(op.Labels, np.Labels) {
		r = append(r, "placement.labels changed")
	}
	if op.Node != np.Node {
		r = append(r, "placement.node changed")
	}
	return r
}

// placementOf returns s's placement; none is the zero Placement (any node).
func placementOf(s *spec.Service) spec.Placement {
	if s.Placement == nil {
		return spec.Placement{}
	}
	return *s.Placement
}

func mapReasons(prefix string, a, b map[string]string) []string {
	var r []string
	for _, k := range sortedKeys(union(a, b)) {
		av, inA := a[k]
		bv, inB := b[k]
		switch {
		case !inA:
			r = append(r, prefix+k+" added")
		case !inB:
			r = append(r, prefix+k+" removed")
		case av != bv:
			r = append(r, prefix+k+" changed")
		}
	}
	return r
}

func union[V any](a, b map[string]V) map[string]V {
	u := make(map[string]V, len(a)+len(b))
	for k, v := range a {
		u[k] = v
	}
	for k, v := range b {
		u[k] = v
	}
	return u
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Changed reports whether applying the plan would start or stop anything.
func (p *Plan) Changed() bool {
	for _, c := range p.Services {
		if c.Action != Keep {
			return true
		}
	}
	return false
}

// Count returns how many services get each action.
func (p *Plan) Count() map[Action]int {
	m := map[Action]int{}
	for _, c := range p.Services {
		m[c.Action]++
	}
	return m
}

// WriteText prints the plan for people: one line per service, then a summary.
func (p *Plan) WriteText(w io.Writer) error {
	if p.Generation == 0 {
		fmt.Fprintln(w, "plan (no generation yet):")
	} else {
		fmt.Fprintf(w, "plan against generation %d:\n", p.Generation)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range p.Services {
		var ver string
		switch c.Action {
		case Add:
			ver = string(c.To)
		case Remove:
			ver = string(c.From)
		case Update:
			ver = string(c.From) + " → " + string(c.To)
		default:
			ver = string(c.To)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", c.Action, c.Name, ver, strings.Join(c.Reasons, "; "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	n := p.Count()
	var parts []string
	for _, a := range []Action{Add, Start, Update, Reroute, Shared, Remove, Keep} {
		if n[a] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[a], a))
		}
	}
	if len(parts) == 0 {
		parts = []string{"no services"}
	}
	_, err := fmt.Fprintln(w, strings.Join(parts, ", "))
	return err
}
