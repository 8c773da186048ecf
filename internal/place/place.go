// Package place is the placement of cluster mode, pure like plan: from the
// instances to run (what each asks), the nodes (their labels, capacity and
// whether they take instances) and where instances run now, it decides
// which nodes run each instance — or says which service cannot be placed
// and what is short. It does no I/O and depends on no map's order: equal
// inputs, in any order, give equal placements.
//
// The rules, in the order they apply:
//   - the replicas of an instance run on distinct nodes;
//   - a node runs an instance only if it has every label the instance asks
//     for, is the node it is pinned to (if it is), takes instances (is not
//     drained), and has the memory and cpu it requests free: its capacity
//     less what the instances placed on it request (an instance that
//     requests nothing fits any node);
//   - an instance keeps the nodes it runs on where they still satisfy the
//     rules (versions are kept where they already run), and a new version
//     of a service goes first to the nodes its other versions run on, so a
//     redeploy moves nothing; an exclusive service's new version goes
//     there or nowhere (its handover, which never lets two versions run at
//     once, is a node's: the other version must be on the same node);
//   - the rest go to the least loaded nodes: the lowest share of memory or
//     cpu requested once the instance is there (the larger of the two),
//     then the fewest instances, then by name. Instances are taken pinned first, then the largest
//     requests first, then by key, so that what is hardest to fit is
//     placed while there is the most room.
package place

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"hostel/internal/spec"
)

// Node is one node as placement sees it.
type Node struct {
	// Name is the node's name (hostel serve --node).
	Name string `json:"name"`
	// Labels are the node's labels (hostel serve --labels); nil means none.
	Labels map[string]string `json:"labels,omitempty"`
	// CPU is how many cores the node gives to instances' requests
	// (hostel serve --capacity cpu=N); 0 means none: only instances that
	// request no cpu fit.
	CPU float64 `json:"cpu,omitempty"`
	// Memory is how many bytes the node gives to instances' requests
	// (--capacity memory=SIZE); 0 means none.
	Memory int64 `json:"memory,omitempty"`
	// Unschedulable marks a drained node (hostel nodes drain): it takes no
	// instance, and those it runs move to other nodes.
	Unschedulable bool `json:"unschedulable,omitempty"`
}

// Instance is one instance to place and what it asks of the nodes.
type Instance struct {
	// Key names the instance (spec.Generation.Instance).
	Key spec.VersionKey `json:"key"`
	// Replicas is how many nodes run it, each a different one; at least 1.
	Replicas int `json:"replicas"`
	// Memory (bytes) and CPU (cores) are what it requests of each node
	// that runs it: the service's limits; 0 means nothing.
	Memory int64   `json:"memory,omitempty"`
	CPU    float64 `json:"cpu,omitempty"`
	// Labels are the labels a node must have, every one; nil means any.
	Labels map[string]string `json:"labels,omitempty"`
	// Node pins the instance to the node of that name; "" means any.
	Node string `json:"node,omitempty"`
	// Exclusive is set for an exclusive service's instance (one replica):
	// it runs only where another version of its service runs, if one does.
	Exclusive bool `json:"exclusive,omitempty"`
}

// Placement maps each instance to the nodes that run it, sorted by name.
// Plain data, as it is stored beside the generation it places.
type Placement map[spec.VersionKey][]string

// ByNode returns what runs on each node: the instances, sorted by key.
// A node that runs nothing is not in it.
func (p Placement) ByNode() map[string][]spec.VersionKey {
	out := map[string][]spec.VersionKey{}
	for _, k := range slices.Sorted(maps.Keys(p)) {
		for _, n := range p[k] {
			out[n] = append(out[n], k)
		}
	}
	return out
}

// cpuUnit is the step of cpu requests and capacities: a cgroup quota's
// (spec.checkCPU), so that sums are exact in integers.
const cpuUnit = 1e5

// node is a Node as Make works on it: requests in integers, and what is
// placed on it so far.
type node struct {
	Node
	cpu, mem         int64   // capacity
	perCPU, perMem   float64 // 1/capacity, 0 for none: shares without a division
	usedCPU, usedMem int64
	count            int
	mark             int // serial of the instance being placed that runs here
}

// fits reports whether n has room for a request of mem bytes and cpu units.
// used never exceeds capacity, so the subtraction cannot overflow.
func (n *node) fits(mem, cpu int64) bool {
	return mem <= n.mem-n.usedMem && cpu <= n.cpu-n.usedCPU
}

// take places a request of mem bytes and cpu units on n.
func (n *node) take(mem, cpu int64) {
	n.usedMem += mem
	n.usedCPU += cpu
	n.count++
}

// loadWith is n's load once a request of mem bytes and cpu units is
// placed on it: the larger of the shares of its memory and of its cpu
// requested. Counting the request itself weighs its shape against the
// node's: a cpu-heavy instance goes to a node with cpu to spare.
func (n *node) loadWith(mem, cpu int64) float64 {
	return max(float64(n.usedMem+mem)*n.perMem, float64(n.usedCPU+cpu)*n.perCPU)
}

// matches reports whether n has every label of labels.
func (n *node) matches(labels map[string]string) bool {
	for k, v := range labels {
		if got, ok := n.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// inst is an Instance as Make works on it.
type inst struct {
	Instance
	serial   int
	mem, cpu int64
	pin      int    // index of the pinned node; -1 none, -2 a node that is not there
	class    string // canonical labels
	on       []int  // the nodes placed so far
	only     []int  // an exclusive instance's: the nodes of its other versions
}

// Make decides which nodes run each instance of want, given the nodes and
// the current placement cur (nil when nothing runs yet; what it says of
// instances not in want, or of nodes not in nodes, is ignored). The
// result places every instance of want on exactly its replicas' number of
// nodes. When an instance cannot be placed Make returns an *Error that
// names its service and what is short, and no placement; other errors are
// inputs no spec makes (an instance or a node given twice, a negative
// request).
func Make(want []Instance, nodes []Node, cur Placement) (Placement, error) {
	ns, err := prepareNodes(nodes)
	if err != nil {
		return nil, err
	}
	index := make(map[string]int, len(ns))
	for i := range ns {
		index[ns[i].Name] = i
	}
	is, err := prepareInstances(want, index)
	if err != nil {
		return nil, err
	}

	// Keep: each instance on the nodes it runs on, while they satisfy the
	// rules, in key order.
	for _, in := range is {
		names := slices.Clone(cur[in.Key])
		slices.Sort(names)
		for _, name := range slices.Compact(names) {
			if len(in.on) == in.Replicas {
				break
			}
			i, ok := index[name]
			if !ok || !eligible(&ns[i], i, in) || !ns[i].fits(in.mem, in.cpu) {
				continue
			}
			place(ns, i, in)
		}
	}

	// The nodes each service's other versions run on, per environment: a
	// new version goes there first.
	siblings := map[string][]int{}
	for k, names := range cur {
		for _, name := range names {
			if i, ok := index[name]; ok {
				s := sibling(k)
				siblings[s] = append(siblings[s], i)
			}
		}
	}
	for s, idx := range siblings {
		slices.Sort(idx)
		siblings[s] = slices.Compact(idx)
	}

	// Fill: the hardest to fit first.
	order := slices.Clone(is)
	slices.SortFunc(order, func(a, b *inst) int {
		if (a.pin != -1) != (b.pin != -1) {
			if a.pin != -1 {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(b.mem, a.mem), cmp.Compare(b.cpu, a.cpu), cmp.Compare(b.Replicas, a.Replicas), cmp.Compare(a.Key, b.Key))
	})
	classes := map[string][]int{}
	var failed []*inst
	for _, in := range order {
		if len(in.on) == in.Replicas {
			continue
		}
		for _, i := range in.on {
			ns[i].mark = in.serial
		}
		candidates := classNodes(ns, classes, in)
		preferred := siblings[sibling(in.Key)]
		if in.Exclusive && len(preferred) > 0 {
			in.only, candidates = preferred, nil
		}
		for len(in.on) < in.Replicas {
			best := pick(ns, preferred, in, true)
			if best < 0 && candidates != nil {
				best = pick(ns, candidates, in, false)
			}
			if best < 0 {
				failed = append(failed, in)
				break
			}
			place(ns, best, in)
		}
		if in.Exclusive && len(preferred) == 0 && len(in.on) > 0 {
			// None of its versions ran on a node left (they ran on one
			// that is gone): the first placed decides for the others,
			// whose handover is that node's.
			siblings[sibling(in.Key)] = slices.Clone(in.on)
		}
	}
	if len(failed) > 0 {
		return nil, explain(ns, index, failed)
	}

	out := make(Placement, len(is))
	for _, in := range is {
		names := make([]string, len(in.on))
		for j, i := range in.on {
			names[j] = ns[i].Name
		}
		slices.Sort(names)
		out[in.Key] = names
	}
	return out, nil
}

// place puts instance in on node i.
func place(ns []node, i int, in *inst) {
	ns[i].take(in.mem, in.cpu)
	ns[i].mark = in.serial
	in.on = append(in.on, i)
}

// pick returns the least loaded of nodes idx that can take in, or -1;
// ties go to the fewest instances, then to the first by name (nodes are
// indexed by name). Unless check is false (idx are in's class already),
// each is checked against in's labels and pin.
func pick(ns []node, idx []int, in *inst, check bool) int {
	best, bestLoad, bestCount := -1, 0.0, 0
	for _, i := range idx {
		n := &ns[i]
		if n.mark == in.serial || !n.fits(in.mem, in.cpu) || check && !eligible(n, i, in) {
			continue
		}
		load := n.loadWith(in.mem, in.cpu)
		if best < 0 || load < bestLoad || load == bestLoad && n.count < bestCount {
			best, bestLoad, bestCount = i, load, n.count
		}
	}
	return best
}

// eligible reports whether node i, n, may run in, room aside: it takes
// instances, is the one in is pinned to (if it is) and has its labels.
func eligible(n *node, i int, in *inst) bool {
	return !n.Unschedulable && (in.pin == -1 || in.pin == i) && n.matches(in.Labels)
}

// classNodes returns the nodes eligible for in, by index; nodes with the
// same labels asked are computed once (most instances ask for none or for
// a few sets).
func classNodes(ns []node, classes map[string][]int, in *inst) []int {
	if in.pin != -1 {
		if in.pin >= 0 && eligible(&ns[in.pin], in.pin, in) {
			return []int{in.pin}
		}
		return nil
	}
	if idx, ok := classes[in.class]; ok {
		return idx
	}
	idx := []int{}
	for i := range ns {
		if eligible(&ns[i], i, in) {
			idx = append(idx, i)
		}
	}
	classes[in.class] = idx
	return idx
}

// sibling names what the instances of one service in one environment
// share, whatever their version: a new version goes where the others run.
func sibling(k spec.VersionKey) string { return k.Service() + "@" + k.Owner() }

// labelsKey is labels in a canonical form.
func labelsKey(labels map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		fmt.Fprintf(&b, "%q=%q,", k, labels[k])
	}
	return b.String()
}

// prepareNodes checks nodes and returns them sorted by name, capacities
// in integers.
func prepareNodes(nodes []Node) ([]node, error) {
	ns := make([]node, len(nodes))
	for i, n := range nodes {
		if n.Memory < 0 || !(n.CPU >= 0) {
			return nil, fmt.Errorf("node %q: capacity memory %d, cpu %v: not a capacity", n.Name, n.Memory, n.CPU)
		}
		ns[i] = node{Node: n, cpu: cpuUnits(n.CPU), mem: n.Memory}
		if ns[i].cpu > 0 {
			ns[i].perCPU = 1 / float64(ns[i].cpu)
		}
		if ns[i].mem > 0 {
			ns[i].perMem = 1 / float64(ns[i].mem)
		}
	}
	slices.SortFunc(ns, func(a, b node) int { return cmp.Compare(a.Name, b.Name) })
	for i := 1; i < len(ns); i++ {
		if ns[i].Name == ns[i-1].Name {
			return nil, fmt.Errorf("node %q given twice", ns[i].Name)
		}
	}
	return ns, nil
}

// prepareInstances checks want and returns its instances sorted by key.
func prepareInstances(want []Instance, index map[string]int) ([]*inst, error) {
	is := make([]*inst, len(want))
	for i, w := range want {
		if w.Replicas < 1 || w.Memory < 0 || !(w.CPU >= 0) {
			return nil, fmt.Errorf("instance %s: replicas %d, memory %d, cpu %v: not what a spec asks", w.Key, w.Replicas, w.Memory, w.CPU)
		}
		in := &inst{Instance: w, mem: w.Memory, cpu: cpuUnits(w.CPU), pin: -1, class: labelsKey(w.Labels)}
		if w.Node != "" {
			in.pin = -2
			if j, ok := index[w.Node]; ok {
				in.pin = j
			}
		}
		is[i] = in
	}
	slices.SortFunc(is, func(a, b *inst) int { return cmp.Compare(a.Key, b.Key) })
	for i, in := range is {
		if i > 0 && in.Key == is[i-1].Key {
			return nil, fmt.Errorf("instance %s given twice", in.Key)
		}
		in.serial = i + 1 // nodes' marks start at 0: no instance
	}
	return is, nil
}

// cpuUnits is cores in cpuUnit steps, rounded; what no int64 holds is
// held as the most one does (more than any cluster has).
func cpuUnits(cores float64) int64 {
	u := math.Round(cores * cpuUnit)
	if u >= math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return int64(u)
}

// Error is an instance that cannot be placed: it names the service (and
// the environment whose instance it is, when not production) and what is
// short. A deploy refused with it changes nothing.
type Error struct {
	// Instance is the instance that cannot be placed: the first, by
	// service, of Unplaced.
	Instance spec.VersionKey
	// Msg says what the service needs and what the nodes have.
	Msg string
	// Unplaced are every instance that could not be placed, by key.
	Unplaced []spec.VersionKey
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "service %q", e.Instance.Service())
	if env := e.Instance.Owner(); env != spec.DefaultEnv {
		fmt.Fprintf(&b, " (environment %s)", env)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if n := len(e.Unplaced) - 1; n == 1 {
		b.WriteString("; 1 other instance cannot be placed either")
	} else if n > 1 {
		fmt.Fprintf(&b, "; %d other instances cannot be placed either", n)
	}
	return b.String()
}
