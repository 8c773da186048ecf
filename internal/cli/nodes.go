package cli

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func nodesCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List the deployment's nodes: their labels, capacity and use, and what runs where",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			ns, err := c.Nodes(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, ns)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tADDRESS\tLABELS\tCPU\tMEMORY\tUP\tINSTANCES")
			for _, n := range ns.Nodes {
				name := n.Name
				if n.Leader {
					name += " (leader)"
				}
				if n.Drained {
					name += " (drained)"
				}
				var labels []string
				for _, k := range slices.Sorted(maps.Keys(n.Labels)) {
					labels = append(labels, k+"="+n.Labels[k])
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%g/%g\t%s/%s\t%s\t%s\n", name, orDash(n.Address), orDash(strings.Join(labels, ",")),
					n.Use.CPU, n.Capacity.CPU, humanSize(n.Use.Memory), humanSize(n.Capacity.Memory),
					n.Up.Local().Format("2006-01-02 15:04:05"), orDash(strings.Join(n.Instances, ",")))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the nodes as JSON")
	return cmd
}

// humanSize writes n bytes to three figures: "512M", "23.4G".
func humanSize(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"G", 30}, {"M", 20}, {"K", 10}} {
		if n >= 1<<u.shift {
			v := float64(n) / float64(int64(1)<<u.shift)
			if v >= 100 || v == float64(int64(v)) {
				return fmt.Sprintf("%.0f%s", v, u.suffix)
			}
			return fmt.Sprintf("%.1f%s", v, u.suffix)
		}
	}
	return fmt.Sprint(n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func init() { commands = append(commands, nodesCmd) }
