package place

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"

	"hostel/internal/golden"
	"hostel/internal/spec"
)

// A golden file (testdata/*.place) has sections:
//
//	-- nodes --    one node a line: NAME [cpu=N] [memory=SIZE] [drained] [KEY=VALUE …] (labels)
//	-- current --  the spec of the generation that runs (optional)
//	-- placed --   where its services' instances run: SERVICE: NODE … (optional)
//	-- next --     the spec to place
//	-- options --  "keep-current": the current generation's instances are placed too,
//	               as while a confirm window keeps them (optional)
//	-- want --     each instance and its nodes, then each node's use; or "error: …"
//
// go test ./internal/place -update rewrites the want sections.
func TestGolden(t *testing.T) {
	golden.Run(t, "testdata/*.place", runGolden)
}

// runGolden places a golden file's next spec and writes the result.
func runGolden(t *testing.T, sec map[string]string) string {
	t.Helper()
	nodes := parseNodes(t, sec["nodes"])
	var cur *spec.Generation
	if strings.TrimSpace(sec["current"]) != "" {
		cur = generation(t, 7, sec["current"])
	}
	placed := Placement{}
	for _, line := range lines(sec["placed"]) {
		svc, names, ok := strings.Cut(line, ":")
		if !ok || cur == nil || cur.Spec.Services[svc] == nil {
			t.Fatalf("placed: %q: want SERVICE: NODE … of a service of the current spec", line)
		}
		placed[cur.Instance(svc)] = strings.Fields(names)
	}
	next := generation(t, 8, sec["next"])
	gens := []*spec.Generation{next}
	if strings.TrimSpace(sec["options"]) == "keep-current" {
		gens = append(gens, cur)
	}
	want, err := Instances(gens...)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Make(want, nodes, placed)
	if err != nil {
		var pe *Error
		if !errors.As(err, &pe) {
			t.Fatalf("not a placement error: %v", err)
		}
		return "error: " + err.Error() + "\n"
	}
	checkPlacement(t, want, nodes, p)
	return formatPlacement(want, nodes, p)
}

// formatPlacement writes each instance's nodes, then each node's use.
func formatPlacement(want []Instance, nodes []Node, p Placement) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, in := range want {
		fmt.Fprintf(tw, "%s\t%s\n", in.Key, strings.Join(p[in.Key], " "))
	}
	tw.Flush()
	byKey := map[spec.VersionKey]Instance{}
	for _, in := range want {
		byKey[in.Key] = in
	}
	on := p.ByNode()
	sorted := slices.Clone(nodes)
	slices.SortFunc(sorted, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	for _, n := range sorted {
		var mem int64
		var cpu float64
		for _, k := range on[n.Name] {
			mem += byKey[k].Memory
			cpu += byKey[k].CPU
		}
		fmt.Fprintf(tw, "%s:\t%s\t%s of %s memory\t%s of %s cpu", n.Name, count(len(on[n.Name]), "instance"),
			sizeWords(mem), sizeWords(n.Memory), strconv.FormatFloat(cpu, 'f', -1, 64), strconv.FormatFloat(n.CPU, 'f', -1, 64))
		if n.Unschedulable {
			fmt.Fprint(tw, "\tdrained")
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	return b.String()
}

// generation decodes a spec into a production generation numbered n.
func generation(t testing.TB, n uint64, js string) *spec.Generation {
	t.Helper()
	s, err := spec.Decode("hostel.json", []byte(js))
	if err != nil {
		t.Fatalf("spec: %v", err)
	}
	v, err := spec.Versions(s, spec.Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	return &spec.Generation{Number: n, Spec: s, Versions: v}
}

// parseNodes reads the nodes section.
func parseNodes(t testing.TB, s string) []Node {
	t.Helper()
	var nodes []Node
	for _, line := range lines(s) {
		f := strings.Fields(line)
		n := Node{Name: f[0]}
		for _, w := range f[1:] {
			k, v, _ := strings.Cut(w, "=")
			var err error
			switch k {
			case "cpu":
				n.CPU, err = strconv.ParseFloat(v, 64)
			case "memory":
				n.Memory, err = spec.ParseMemory(v)
			case "drained":
				n.Unschedulable = true
			default:
				if n.Labels == nil {
					n.Labels = map[string]string{}
				}
				n.Labels[k] = v
			}
			if err != nil {
				t.Fatalf("nodes: %q: %v", line, err)
			}
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// lines are the lines of s that are neither empty nor comments.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// count writes n things: 1 instance, 2 instances.
func count(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
