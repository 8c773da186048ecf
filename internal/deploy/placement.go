package deploy

import (
	"maps"
	"slices"

	"hostel/internal/node"
	"hostel/internal/place"
	"hostel/internal/spec"
)

// Placement: which nodes run each instance (internal/place, pure) is
// decided with what the nodes must run and written with it — each node's
// Desired names its instances (Desired.Placed) in the same transaction as
// the generation, the switch or the stop that makes them run.

// nodesOf returns the nodes of v as placement sees them; false if a node
// the engine asks has not reported itself yet (a daemon's first start):
// then nothing is placed, and every node runs every instance.
func nodesOf(v *view) ([]place.Node, bool) {
	var out []place.Node
	for _, name := range v.names() {
		info, ok := v.nodes[name]
		if !ok {
			return nil, false
		}
		out = append(out, place.Node{Name: name, Labels: info.Labels, CPU: info.CPU, Memory: info.Memory, Unschedulable: info.Unschedulable})
	}
	return out, true
}

// placed returns where v's nodes run each instance today, as their Desired
// say.
func placed(v *view) place.Placement {
	cur := place.Placement{}
	for name, d := range v.desired {
		if !d.Placed {
			continue
		}
		for _, k := range d.Instances {
			cur[k] = append(cur[k], name)
		}
	}
	for k := range cur {
		slices.Sort(cur[k])
	}
	return cur
}

// placement decides which nodes run what will run at once: first the
// generation going live (or staged), whose replicas and placement win for
// an instance another holds too, then every current generation, the
// generations kept (an open window's previous) and the callable versions
// asleep (woken where they are placed). It returns nil, nil when the
// nodes have not all reported themselves yet: every node runs every
// instance then. A spec that cannot be placed is a *place.Error.
func placement(v *view, first *spec.Generation, currents map[string]*spec.Generation, keep []uint64, asleep []Callable) (place.Placement, error) {
	nodes, ok := nodesOf(v)
	if !ok {
		return nil, nil
	}
	want, err := wanted(v, first, currents, keep, asleep)
	if err != nil {
		return nil, err
	}
	return place.Make(want, nodes, placed(v))
}

// wanted returns the instances placement places (see placement), first's
// first.
func wanted(v *view, first *spec.Generation, currents map[string]*spec.Generation, keep []uint64, asleep []Callable) ([]place.Instance, error) {
	gens := []*spec.Generation{first}
	for _, env := range node.EnvOrder(currents) {
		gens = append(gens, currents[env])
	}
	for _, n := range keep {
		gens = append(gens, v.generation(n))
	}
	want, err := place.Instances(gens...)
	if err != nil {
		return nil, err
	}
	have := map[spec.VersionKey]bool{}
	for _, in := range want {
		have[in.Key] = true
	}
	for _, c := range asleep {
		if have[c.Key()] {
			continue
		}
		in, err := place.InstanceOf(c.Generation, c.Service)
		if err != nil {
			return nil, err
		}
		have[in.Key] = true
		want = append(want, in)
	}
	return want, nil
}

// instancesOn returns what placement p runs on node name, sorted.
func instancesOn(p place.Placement, name string) []spec.VersionKey {
	var out []spec.VersionKey
	for _, k := range slices.Sorted(maps.Keys(p)) {
		if slices.Contains(p[k], name) {
			out = append(out, k)
		}
	}
	return out
}
