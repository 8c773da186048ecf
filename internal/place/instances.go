package place

import (
	"cmp"
	"fmt"
	"slices"

	"hostel/internal/spec"
)

// InstanceOf returns the instance g's version of service uses
// (g.Instance(service)) and what it asks, as g's spec says: replicas,
// placement, and memory and cpu as requests.
func InstanceOf(g *spec.Generation, service string) (Instance, error) {
	svc := g.Spec.Services[service]
	if svc == nil {
		return Instance{}, fmt.Errorf("generation %d: no service %q", g.Number, service)
	}
	mem, err := spec.ParseMemory(svc.Memory)
	if err != nil {
		return Instance{}, fmt.Errorf("generation %d: service %q: memory: %w", g.Number, service, err)
	}
	in := Instance{Key: g.Instance(service), Replicas: svc.ReplicasOrDefault(), Memory: mem, CPU: svc.CPU, Exclusive: svc.Exclusive}
	if p := svc.Placement; p != nil {
		in.Labels, in.Node = p.Labels, p.Node
	}
	return in, nil
}

// Instances returns the instances generations gens hold together, each
// once, sorted by key: what Make places. An instance several hold — a
// version kept across a deploy, production's instance a preview shares —
// asks what the first of gens that owns it says (its environment's: the
// one whose data it writes to), else the first that holds it; so give the
// generation being deployed first. Its memory and cpu are its version's,
// the same in all. Nil generations are skipped.
func Instances(gens ...*spec.Generation) ([]Instance, error) {
	type from struct {
		in   Instance
		owns bool
	}
	byKey := map[spec.VersionKey]from{}
	for _, g := range gens {
		if g == nil || g.Spec == nil {
			continue
		}
		for _, name := range g.Spec.Names() {
			if _, ok := g.Versions[name]; !ok {
				continue
			}
			owns := g.Owner(name) == g.EnvOrDefault()
			k := g.Instance(name)
			if f, ok := byKey[k]; ok && (f.owns || !owns) {
				continue
			}
			in, err := InstanceOf(g, name)
			if err != nil {
				return nil, err
			}
			byKey[k] = from{in, owns}
		}
	}
	out := make([]Instance, 0, len(byKey))
	for _, f := range byKey {
		out = append(out, f.in)
	}
	slices.SortFunc(out, func(a, b Instance) int { return cmp.Compare(a.Key, b.Key) })
	return out, nil
}
