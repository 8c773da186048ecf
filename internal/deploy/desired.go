package deploy

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"hostel/internal/agent"
	"hostel/internal/plan"
	"hostel/internal/router"
	"hostel/internal/spec"
)

// The decide half's pure functions: from the current generation of every
// environment to what the machine must run and how requests are routed.

// Hold returns the versions the generations hold together: a version runs
// while any environment's current generation holds it.
func Hold(gens ...*spec.Generation) map[spec.VersionKey]bool {
	return agent.Desired{Generations: gens}.Keys()
}

// Table builds the routing table of the environments' current
// generations (by environment). Production's services answer on their
// domains and redirects, and its zone is the table's; a preview never
// changes them. A preview's services answer on SERVICE.ENV.ZONE
// (Internal) and, with previews.domain, on SERVICE.ENV.DOMAIN. paused
// are production's services paused by hand, with their bounds; a pause
// of a service production does not have holds nothing.
func Table(currents map[string]*spec.Generation, paused map[string]time.Duration) router.Table {
	t := router.Table{Domains: map[string]spec.VersionKey{}, Redirects: map[string]string{}, Zone: spec.DefaultZone}
	prod := currents[spec.DefaultEnv]
	if prod == nil {
		return t
	}
	t.Zone = prod.Spec.ZoneOrDefault()
	for name, bound := range paused {
		if prod.Spec.Services[name] != nil {
			if t.Paused == nil {
				t.Paused = map[string]time.Duration{}
			}
			t.Paused[name] = bound
		}
	}
	for name, svc := range prod.Spec.Services {
		key := prod.Instance(name)
		for _, d := range svc.Domains {
			t.Domains[d] = key
		}
		for _, r := range svc.Redirects {
			t.Redirects[r] = svc.Domains[0]
		}
	}
	for env, g := range currents {
		if env == spec.DefaultEnv || g == nil {
			continue
		}
		for name := range g.Spec.Services {
			if t.Internal == nil {
				t.Internal = map[string]spec.VersionKey{}
			}
			t.Internal[PreviewHost(name, env, t.Zone)] = g.Instance(name)
			// previews.domain: a public name; production's domains win.
			if h := g.Spec.PreviewHost(name, env); h != "" {
				if _, taken := t.Domains[h]; !taken {
					t.Domains[h] = g.Instance(name)
				}
			}
		}
	}
	return t
}

// PreviewHost is the internal-zone name of service in preview environment
// env: SERVICE.ENV.ZONE.
func PreviewHost(service, env, zone string) string {
	return service + "." + env + "." + zone
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
	for _, e := range envOrder(currents) {
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

// envOrder returns the environments that key byEnv, production first,
// then by name: the order a resume starts them in.
func envOrder[V any](byEnv map[string]V) []string {
	envs := make([]string, 0, len(byEnv))
	for env := range byEnv {
		envs = append(envs, env)
	}
	sort.Slice(envs, func(i, j int) bool {
		if (envs[i] == spec.DefaultEnv) != (envs[j] == spec.DefaultEnv) {
			return envs[i] == spec.DefaultEnv
		}
		return envs[i] < envs[j]
	})
	return envs
}

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
func Callables(kept []*spec.Generation, currents map[string]*spec.Generation) []agent.Callable {
	byKey := map[spec.VersionKey]agent.Callable{}
	needs := map[spec.VersionKey][]spec.VersionKey{}
	add := func(g *spec.Generation, name string) {
		k := g.Instance(name)
		if c, ok := byKey[k]; ok {
			// The newest seen first; the owner's own generation wins.
			if owns(c.Generation, c.Service) || !owns(g, name) {
				return
			}
		}
		byKey[k] = agent.Callable{Generation: g, Service: name}
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
	var out []agent.Callable
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
