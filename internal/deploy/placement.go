package deploy

import (
	"errors"
	"fmt"
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

// errUnreported is placement's error when a node the engine asks has not
// reported itself (its labels and capacity unknown) while what is to run
// holds instances the placement in force does not name.
var errUnreported = errors.New("has not reported itself")

// placement decides which nodes run what will run at once: first the
// generation going live (or staged), whose replicas and placement win for
// an instance another holds too, then every current generation, the
// generations kept (an open window's previous) and the callable versions
// asleep (woken where they are placed). It returns nil, nil when the
// nodes have not all reported themselves yet and the placement in force
// names every instance (or there is none, as at a cluster's first start:
// every node runs every instance then): each node runs what it runs. But
// an instance it does not name — a new version — would run on no node:
// that is errUnreported. A spec that cannot be placed is a *place.Error.
func placement(v *view, first *spec.Generation, currents map[string]*spec.Generation, keep []uint64, asleep []Callable) (place.Placement, error) {
	want, err := wanted(v, first, currents, keep, asleep)
	if err != nil {
		return nil, err
	}
	cur := placed(v)
	nodes, ok := nodesOf(v)
	if !ok {
		for _, in := range want {
			if len(cur) > 0 && cur[in.Key] == nil {
				return nil, fmt.Errorf("%s is not placed: node %s %w yet (its report may be on its way: try again in a moment)", in.Key, v.self, errUnreported)
			}
		}
		return nil, nil
	}
	return place.Make(want, nodes, cur)
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
