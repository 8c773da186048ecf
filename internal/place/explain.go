package place

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// listed is how many nodes an error names in one list before it counts
// the rest: a cluster of a thousand nodes still gets a one-line error.
const listed = 5

// explain makes the error of the instances that could not be placed, from
// the nodes as Make left them: it words the first by service (then
// environment) and counts the others.
func explain(ns []node, index map[string]int, failed []*inst) *Error {
	slices.SortFunc(failed, func(a, b *inst) int {
		return cmp.Or(cmp.Compare(a.Key.Service(), b.Key.Service()), cmp.Compare(a.Key.Owner(), b.Key.Owner()), cmp.Compare(a.Key, b.Key))
	})
	e := &Error{Instance: failed[0].Key, Msg: short(ns, index, failed[0])}
	for _, in := range failed {
		e.Unplaced = append(e.Unplaced, in.Key)
	}
	slices.Sort(e.Unplaced)
	return e
}

// short says what in needs and which nodes have it, in a spec's words.
func short(ns []node, index map[string]int, in *inst) string {
	if len(in.only) > 0 {
		var where []string
		for _, i := range in.only {
			n := &ns[i]
			why := ""
			switch {
			case n.Unschedulable:
				why = "drained"
			case in.pin >= 0 && in.pin != i:
				why = fmt.Sprintf("not placement.node %q", in.Node)
			case !n.matches(in.Labels):
				why = "does not have " + labelWords(missingLabels(n, in.Labels))
			default:
				why = fmt.Sprintf("has %s free, needs %s", freeWords(n, in), requestWords(in.mem, in.cpu))
			}
			where = append(where, n.Name+" ("+why+")")
		}
		return fmt.Sprintf("exclusive: its other version runs on %s; two versions of an exclusive service never run at once, so the new one must run on the same node",
			strings.Join(where, ", "))
	}
	if in.Node != "" {
		switch {
		case in.pin < 0:
			names := slices.Sorted(maps.Keys(index))
			return fmt.Sprintf("placement.node %q is not a node of the cluster (%s)", in.Node, list("nodes", names, nil))
		case in.Replicas > 1:
			return fmt.Sprintf("replicas %d cannot all run on placement.node %q: replicas run on distinct nodes", in.Replicas, in.Node)
		}
		n := &ns[in.pin]
		if n.Unschedulable {
			return fmt.Sprintf("placement.node %q is drained", in.Node)
		}
		if missing := missingLabels(n, in.Labels); len(missing) > 0 {
			return fmt.Sprintf("placement.node %q does not have %s", in.Node, labelWords(missing))
		}
		return fmt.Sprintf("needs %s free on placement.node %q, which has %s free", requestWords(in.mem, in.cpu), in.Node, freeWords(n, in))
	}

	var with []string
	if len(in.Labels) > 0 {
		with = append(with, labelWords(in.Labels))
	}
	if in.mem > 0 || in.cpu > 0 {
		with = append(with, requestWords(in.mem, in.cpu)+" free")
	}
	var b strings.Builder
	if in.Replicas == 1 {
		b.WriteString("needs a node")
	} else {
		fmt.Fprintf(&b, "replicas %d need %d nodes", in.Replicas, in.Replicas)
	}
	if len(with) > 0 {
		b.WriteString(" with " + strings.Join(with, " and "))
	}

	runs := map[int]bool{}
	for _, i := range in.on {
		runs[i] = true
	}
	var have, full, drained []string
	lacking := 0
	for i := range ns {
		n := &ns[i]
		switch {
		case !n.matches(in.Labels):
			lacking++
		case n.Unschedulable:
			drained = append(drained, n.Name)
		case runs[i] || n.fits(in.mem, in.cpu):
			have = append(have, n.Name)
		default:
			full = append(full, n.Name)
		}
	}
	free := func(name string) string {
		if in.mem == 0 && in.cpu == 0 {
			return ""
		}
		return freeWords(&ns[index[name]], in) + " free"
	}
	switch len(have) {
	case 0:
		b.WriteString("; none has it")
	case 1:
		b.WriteString("; 1 has it: " + list("", have, free))
	default:
		fmt.Fprintf(&b, "; %d have it: %s", len(have), list("", have, free))
	}
	if len(full) > 0 {
		b.WriteString("; too full: " + list("", full, free))
	}
	if len(drained) > 0 {
		b.WriteString("; drained: " + list("", drained, nil))
	}
	if lacking > 0 && len(in.Labels) > 0 {
		fmt.Fprintf(&b, "; %d without the label", lacking)
		if len(in.Labels) > 1 {
			b.WriteString("s")
		}
	}
	return b.String()
}

// list writes the first names (each with what about says of it, if
// anything) and counts the rest; what, if not "", heads it.
func list(what string, names []string, about func(string) string) string {
	var parts []string
	for _, n := range names[:min(len(names), listed)] {
		if about != nil {
			if a := about(n); a != "" {
				n += " (" + a + ")"
			}
		}
		parts = append(parts, n)
	}
	s := strings.Join(parts, ", ")
	if len(names) > listed {
		s += fmt.Sprintf(" and %d more", len(names)-listed)
	}
	if len(names) == 0 {
		s = "none"
	}
	if what != "" {
		s = what + ": " + s
	}
	return s
}

// missingLabels returns the labels of want that n does not have.
func missingLabels(n *node, want map[string]string) map[string]string {
	missing := map[string]string{}
	for k, v := range want {
		if got, ok := n.Labels[k]; !ok || got != v {
			missing[k] = v
		}
	}
	return missing
}

// labelWords writes labels as a spec's reader reads them: label zone=eu,
// labels disk=ssd, zone=eu.
func labelWords(labels map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	if len(parts) == 1 {
		return "label " + parts[0]
	}
	return "labels " + strings.Join(parts, ", ")
}

// requestWords writes a request: 512M memory, 0.5 cpu.
func requestWords(mem, cpu int64) string {
	var parts []string
	if mem > 0 {
		parts = append(parts, sizeWords(mem)+" memory")
	}
	if cpu > 0 {
		parts = append(parts, cpuWords(cpu)+" cpu")
	}
	return strings.Join(parts, ", ")
}

// freeWords writes what n has free of what in requests.
func freeWords(n *node, in *inst) string {
	var parts []string
	if in.mem > 0 {
		parts = append(parts, sizeWords(n.mem-n.usedMem)+" memory")
	}
	if in.cpu > 0 {
		parts = append(parts, cpuWords(n.cpu-n.usedCPU)+" cpu")
	}
	return strings.Join(parts, ", ")
}

// sizeWords writes bytes as a spec writes a size, rounded down to a tenth
// of its unit (never more than there is): 512M, 1.5G, 300K, 12.
func sizeWords(b int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if b >= u.size {
			whole, tenths := b/u.size, b%u.size*10/u.size
			if tenths == 0 {
				return strconv.FormatInt(whole, 10) + u.suffix
			}
			return fmt.Sprintf("%d.%d%s", whole, tenths, u.suffix)
		}
	}
	return strconv.FormatInt(b, 10)
}

// cpuWords writes cpu units as cores: 0.5, 2.
func cpuWords(u int64) string {
	return strconv.FormatFloat(float64(u)/cpuUnit, 'f', -1, 64)
}
