package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

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

// clientFor returns the client of the daemon the command talks to: the
// local one, the one --api names, or with a target, the daemon on that
// machine reached over SSH. With copy, it first copies there the closures
// of the spec's store paths that machine lacks: over SSH with nix copy,
// over --api through the API.
func (e *env) clientFor(ctx context.Context, target string, l *source.Loaded, copy bool) (*api.Client, error) {
	if target == "" {
		c, err := e.client()
		if err != nil || !c.Remote() || !copy {
			return c, err
		}
		b, err := json.Marshal(l.Spec)
		if err != nil {
			return nil, err
		}
		return c, e.copyOverAPI(ctx, c, l, nix.StorePathsIn(b))
	}
	if e.api != "" {
		return nil, usageError{errors.New("--target and --api both say which daemon: give one")}
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

// copyOverAPI copies to the daemon's machine, through its remote API, the
// closures of the store paths among paths that it lacks: what it lacks of
// them is exported from this machine's store, which must have it — a
// deploy never goes ahead with a path the daemon's machine does not have.
func (e *env) copyOverAPI(ctx context.Context, c *api.Client, l *source.Loaded, paths []string) error {
	top, err := nix.TopPaths(paths)
	if err != nil || len(top) == 0 {
		return err
	}
	missing, err := c.NixMissing(ctx, top)
	if err != nil || len(missing) == 0 {
		return err
	}
	if !nix.Available() {
		return e.notHere(l, missing[0], "there is no Nix on this machine to copy it from")
	}
	if gone, err := nix.Missing(ctx, missing); err != nil {
		return err
	} else if len(gone) > 0 {
		return e.notHere(l, gone[0], "nor in this machine's store to copy it from")
	}
	closure, err := nix.Closure(ctx, missing)
	if err != nil {
		return err
	}
	if closure, err = c.NixMissing(ctx, closure); err != nil || len(closure) == 0 {
		return err
	}
	fmt.Fprintf(e.stderr, "copying %d store paths to %s\n", len(closure), c.Name())
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(nix.Export(ctx, closure, pw)) }()
	_, err = c.NixImport(ctx, pr)
	pr.CloseWithError(err) // ends an export the daemon stopped reading
	if err != nil {
		return fmt.Errorf("copying store paths to %s: %w", c.Name(), err)
	}
	return nil
}

// notHere is the error for a store path of the spec that the daemon's
// machine lacks and this one cannot send: it names the service that
// mentions it (exit 2, nothing changed).
func (e *env) notHere(l *source.Loaded, path, why string) error {
	se := &spec.Error{File: l.File, Msg: fmt.Sprintf("%s is not on %s, %s", path, e.api, why)}
	for _, name := range l.Spec.Names() {
		b, _ := json.Marshal(l.Spec.Services[name])
		if strings.Contains(string(b), path) {
			se.Service = name
			break
		}
	}
	return se
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
			if err := e.local(cmd); err != nil {
				return err
			}
			return remote.Bridge(e.socket(), os.Stdin, os.Stdout)
		},
	}
}
