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
	cmd.AddCommand(drainCmd(e), undrainCmd(e))
	return cmd
}

func drainCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Move a node's instances to the other nodes (each ready there before it stops here) and keep it unschedulable",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := c.DrainNode(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, res)
			}
			for _, m := range res.Moved {
				fmt.Fprintf(e.stdout, "moved %s from %s to %s\n", m.Instance, strings.Join(m.From, ","), strings.Join(m.To, ","))
			}
			fmt.Fprintf(e.stdout, "drained %s: %d instances moved; it takes none until hostel nodes undrain %s\n", res.Node, len(res.Moved), res.Node)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what moved as JSON")
	return cmd
}

func undrainCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "undrain NAME",
		Short: "Make a drained node take instances again (later placements; nothing moves now)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := c.UndrainNode(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, res)
			}
			if !res.WasDrained {
				fmt.Fprintf(e.stdout, "%s was not drained: nothing changed\n", res.Node)
				return nil
			}
			fmt.Fprintf(e.stdout, "undrained %s: it takes instances again from the next placement\n", res.Node)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
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
