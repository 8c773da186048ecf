package deploy

import (
	"sort"

	"hostel/internal/agent"
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

// Table builds the public routing table of the environments' current
// generations (by environment). Production's services answer on their
// domains and redirects, and its zone is the table's; a preview never
// changes them.
func Table(currents map[string]*spec.Generation) router.Table {
	t := router.Table{Domains: map[string]spec.VersionKey{}, Redirects: map[string]string{}, Zone: spec.DefaultZone}
	prod := currents[spec.DefaultEnv]
	if prod == nil {
		return t
	}
	t.Zone = prod.Spec.ZoneOrDefault()
	for name, svc := range prod.Spec.Services {
		key := spec.Key(name, prod.Versions[name])
		for _, d := range svc.Domains {
			t.Domains[d] = key
		}
		for _, r := range svc.Redirects {
			t.Redirects[r] = svc.Domains[0]
		}
	}
	return t
}

// envOrder returns the environments of currents, production first, then
// by name: the order a resume starts them in.
func envOrder(currents map[string]*spec.Generation) []string {
	envs := make([]string, 0, len(currents))
	for env := range currents {
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
