package deploy

import (
	"fmt"
	"maps"
	"slices"

	"hostel/internal/agent"
	"hostel/internal/node"
	"hostel/internal/plan"
	"hostel/internal/spec"
)

// The decide half's pure functions: from the current generation of every
// environment to what the nodes must run. (How requests are routed is
// internal/routes's Table.)

// Hold returns the versions the generations hold together: a version runs
// while any environment's current generation holds it.
func Hold(gens ...*spec.Generation) map[spec.VersionKey]bool {
	return agent.Desired{Generations: gens}.Keys()
}

// Share decides, for a generation next of a preview environment, which
// running instance each of its versions uses, and records it in
// next.Shares: the instance its environment's current generation already
// uses for that version (a redeploy never moves a preview's data), else
// production's, else another preview's, else none — the preview starts
// its own instance, with its own data. currents are every environment's
// current generation. Production never shares: Share leaves a
// production generation as it is. It returns the services that share.
func Share(next *spec.Generation, currents map[string]*spec.Generation) []string {
	env := next.EnvOrDefault()
	next.Shares = nil
	if env == spec.DefaultEnv {
		return nil
	}
	// The instances that run, by version, and the environment that owns
	// each: production first, then the other previews by name.
	owners := map[spec.VersionKey]string{}
	for _, e := range node.EnvOrder(currents) {
		g := currents[e]
		if g == nil || e == env {
			continue
		}
		for name := range g.Versions {
			k := spec.Key(name, g.Versions[name])
			if _, ok := owners[k]; !ok {
				owners[k] = g.Owner(name)
			}
		}
	}
	cur := currents[env]
	var shared []string
	for _, name := range next.Spec.Names() {
		v := next.Versions[name]
		owner := ""
		if cur != nil && cur.Versions[name] == v {
			owner = cur.Owner(name)
		} else if o, ok := owners[spec.Key(name, v)]; ok {
			owner = o
		}
		if owner == "" || owner == env {
			continue
		}
		if next.Shares == nil {
			next.Shares = map[string]string{}
		}
		next.Shares[name] = owner
		shared = append(shared, name)
	}
	return shared
}

// MarkPreview rewrites p, planned for next (a preview generation, Share
// done) against cur, its environment's current generation (nil when new),
// in a preview's words: a version it newly shares is "shared", one it
// starts an instance of is "start"; the rest is as planned (a version
// kept stays "keep", and says whose data it writes to if shared). Production's plans are
// left as they are.
func MarkPreview(p *plan.Plan, next, cur *spec.Generation) {
	env := next.EnvOrDefault()
	if env == spec.DefaultEnv {
		return
	}
	for i := range p.Services {
		c := &p.Services[i]
		if c.To == "" {
			continue
		}
		if owner, ok := next.Shares[c.Name]; ok {
			if c.Action != plan.Keep { // kept as it was: still "keep"
				c.Action = plan.Shared
			}
			c.Reasons = append([]string{fmt.Sprintf("%s runs this version: no new process; its writes reach %s's data", owner, owner)}, c.Reasons...)
			continue
		}
		if cur == nil || cur.Instance(c.Name) != next.Instance(c.Name) {
			c.Action = plan.Start
			c.Reasons = append([]string{"runs nowhere: own instance, own data"}, c.Reasons...)
		}
	}
}

// Callable is one version to keep callable without running it: the
// instance Generation.Instance(Service).
type Callable = agent.Callable

// Callables returns the versions that must stay callable without running
// (old_versions "callable"): every version of kept (the stored
// generations, every environment's, oldest first) whose service says
// "callable" in that generation, with the instances it needs there,
// transitively — each as its generation names it (g.Instance) — less what
// the environments' current generations, currents, run. Each comes with
// the generation it is started as planned in: the newest that holds it
// and belongs to its owner (whose data it uses), else the newest that
// holds it. Needs come before their dependents; the order is otherwise by
// key, so that equal inputs give equal results.
func Callables(kept []*spec.Generation, currents map[string]*spec.Generation) []Callable {
	byKey := map[spec.VersionKey]Callable{}
	needs := map[spec.VersionKey][]spec.VersionKey{}
	add := func(g *spec.Generation, name string) {
		k := g.Instance(name)
		if c, ok := byKey[k]; ok {
			// The newest seen first; the owner's own generation wins.
			if owns(c.Generation, c.Service) || !owns(g, name) {
				return
			}
		}
		byKey[k] = Callable{Generation: g, Service: name}
		needs[k] = needs[k][:0]
		for _, n := range g.Spec.Services[name].Needs {
			needs[k] = append(needs[k], g.Instance(n))
		}
	}
	for i := len(kept) - 1; i >= 0; i-- {
		g := kept[i]
		if g == nil {
			continue
		}
		for _, name := range g.Spec.Names() {
			if !g.Spec.Services[name].Callable() {
				continue
			}
			// The closure of its needs, in this generation.
			seen := map[string]bool{}
			var walk func(string)
			walk = func(n string) {
				if seen[n] {
					return
				}
				seen[n] = true
				add(g, n)
				for _, m := range g.Spec.Services[n].Needs {
					walk(m)
				}
			}
			walk(name)
		}
	}
	run := Hold(slices.Collect(maps.Values(currents))...)
	keys := slices.Sorted(maps.Keys(byKey))
	var out []Callable
	done := map[spec.VersionKey]bool{}
	var visit func(spec.VersionKey)
	visit = func(k spec.VersionKey) {
		c, ok := byKey[k]
		if done[k] || !ok {
			return
		}
		done[k] = true
		for _, n := range needs[k] {
			visit(n)
		}
		if !run[k] {
			out = append(out, c)
		}
	}
	for _, k := range keys {
		visit(k)
	}
	return out
}

// owns reports whether g is the generation of the environment whose
// instance of service name it uses (not one it shares).
func owns(g *spec.Generation, name string) bool { return g.Owner(name) == g.EnvOrDefault() }
