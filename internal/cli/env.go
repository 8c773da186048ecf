package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"hostel/internal/api"
	"hostel/internal/spec"
)

// addEnvFlag adds --env to a command that acts on one environment.
func addEnvFlag(cmd *cobra.Command, name *string) {
	cmd.Flags().StringVar(name, "env", "", `the environment (default "production")`)
}

// checkEnvFlag refuses a bad --env before anything is read, built or
// copied: an input error, exit 2.
func checkEnvFlag(name string) error {
	if name == "" {
		return nil
	}
	if err := spec.CheckEnv(name); err != nil {
		return api.Invalid(fmt.Errorf("--env: %w", err))
	}
	return nil
}

func envCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Preview environments: list, rm",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(envListCmd(e), envRmCmd(e))
	return cmd
}

func envListCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the preview environments: name, created, services started and shared, URLs, state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			l, err := c.Envs(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, l)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ENV\tGEN\tCREATED\tSTARTED\tSHARED\tSTATE\tURLS")
			for _, v := range l.Envs {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\t%s\n", v.Name, v.Generation, v.Created.Local().Format("2006-01-02 15:04:05"),
					len(v.Started), len(v.Shared), v.State, strings.Join(v.URLs, " "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the environments as JSON")
	return cmd
}

func envRmCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a preview environment: stop what only it runs, drop its routes, state directories and GC roots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The daemon refuses production, a bad name and an unknown
			// environment (exit 2, nothing changed).
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := c.RemoveEnv(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "environment %s removed (generation %d): %d instances stopped, %d paths and roots removed\n",
				res.Env, res.Generation, len(res.Stopped), len(res.Removed))
			return nil
		},
	}
}
