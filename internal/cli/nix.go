package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"hostel/internal/api"
	"hostel/internal/nix"
	"hostel/internal/remote"
	"hostel/internal/source"
	"hostel/internal/spec"
)

func init() {
	commands = append(commands, newCmd, dialStdioCmd)
}

func addTargetFlag(cmd *cobra.Command, target *string) {
	cmd.Flags().StringVar(target, "target", "", "[USER@]HOST: build here, copy the closures over SSH and apply through that machine's daemon")
}

// clientFor returns the client of the local daemon, or with a target, of
// the daemon on that machine reached over SSH; with copy, it first copies
// the closures of the spec's store paths there.
func (e *env) clientFor(ctx context.Context, target string, l *source.Loaded, copy bool) (*api.Client, error) {
	if target == "" {
		return e.client(), nil
	}
	for _, name := range l.Spec.Names() {
		if pkg := l.Spec.Services[name].Package; pkg != "" && !nix.IsStorePath(pkg) {
			return nil, &spec.Error{File: l.File, Service: name, Field: "package",
				Msg: fmt.Sprintf("package %s is not a Nix store path: --target deploys Nix packages only (write hostel.nix)", pkg)}
		}
	}
	ssh := remote.FromEnv(target)
	if copy {
		b, err := json.Marshal(l.Spec)
		if err != nil {
			return nil, err
		}
		if paths := nix.StorePathsIn(b); len(paths) > 0 {
			fmt.Fprintf(e.stderr, "copying closures to %s\n", ssh.StoreURI())
			if err := nix.Copy(ctx, ssh.StoreURI(), paths, e.stderr); err != nil {
				return nil, err
			}
		}
	}
	return api.NewClientDial(ssh.Name(), ssh.Dial), nil
}

func newCmd(e *env) *cobra.Command {
	var from string
	cmd := &cobra.Command{
		Use:   "new NAME",
		Short: "Scaffold a new service folder and register it in hostel.nix",
		Long: `Copies the folder of --from SERVICE (or writes a small Go web app) to ./NAME
next to hostel.nix and registers NAME in hostel.nix, between the
"# hostel:services" and "# hostel:services-end" markers, with the domain
NAME.localhost unless the copied block names its own. Then: hostel deploy.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := "hostel.nix"
			if _, err := os.Stat(file); err != nil {
				return &spec.Error{File: file, Msg: "hostel new edits hostel.nix in the current directory, and there is none"}
			}
			if err := nix.NewService(file, args[0], from); err != nil {
				var se *nix.ScaffoldError
				if errors.As(err, &se) {
					return &spec.Error{File: se.File, Service: se.Service, Msg: se.Msg}
				}
				return err
			}
			if from != "" {
				fmt.Fprintf(e.stdout, "copied ./%s to ./%s and registered %q in %s\n", from, args[0], args[0], file)
			} else {
				fmt.Fprintf(e.stdout, "wrote ./%s/main.go and registered %q in %s\n", args[0], args[0], file)
			}
			fmt.Fprintln(e.stdout, "Next: hostel deploy")
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "copy this service's folder and settings")
	return cmd
}

// dialStdioCmd is the remote end of deploy --target: it bridges its stdin
// and stdout to the daemon's socket.
func dialStdioCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:    "dial-stdio",
		Short:  "Bridge stdin and stdout to the daemon's API socket (used over SSH)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return remote.Bridge(e.socket(), os.Stdin, os.Stdout)
		},
	}
}
