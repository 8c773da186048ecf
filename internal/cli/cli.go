// Package cli is hostel's command line. Every command but serve is a client
// of the daemon's API; the CLI never reaches into the daemon's internals.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"hostel/internal/api"
	"hostel/internal/daemon"
	"hostel/internal/handover"
	"hostel/internal/spec"
)

// Version is the binary's version, set at link time.
var Version = "dev"

// Exit codes, as in the contract.
const (
	exitOK      = 0
	exitFailed  = 1
	exitInvalid = 2
)

// usageError marks a bad flag or argument (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

// env carries what every command needs.
type env struct {
	root string
	// api is the remote daemon's URL (--api, env HOSTEL_API); "": the
	// daemon of root, over its socket.
	api    string
	stdout io.Writer
	stderr io.Writer
}

// socket is the API socket of the daemon at e.root.
func (e *env) socket() string { return daemon.SocketPath(e.root) }

// client returns the client of the daemon the command talks to: the
// remote API's with --api (its token from HOSTEL_TOKEN), else the socket's
// of the daemon at --root. Its error is the input's (exit 2).
func (e *env) client() (*api.Client, error) {
	if e.api != "" {
		return api.NewRemoteClient(e.api, os.Getenv(api.TokenEnv))
	}
	return api.NewClient(e.socket()), nil
}

// local refuses --api for a command that works on this machine's daemon
// alone (serve, say).
func (e *env) local(cmd *cobra.Command) error {
	if f := cmd.Flag("api"); f != nil && f.Changed {
		return usageError{fmt.Errorf("--api: hostel %s works on this machine's daemon only (--root)", cmd.Name())}
	}
	return nil
}

// commands are the subcommands, in the order help lists them. A file that
// adds a command group appends to it in its init.
var commands = []func(*env) *cobra.Command{
	serveCmd, planCmd, deployCmd, statusCmd, generationsCmd, rollbackCmd,
	logsCmd, restartCmd, gcCmd, versionCmd, envCmd,
}

// Main runs the CLI with args and returns the exit code.
func Main(args []string) int {
	// The holder of a daemon's sockets is this binary too.
	if os.Getenv(handover.HoldEnv) != "" {
		if err := daemon.RunHolder(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitFailed
		}
		return exitOK
	}
	return run(args, os.Stdout, os.Stderr)
}

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "hostel",
		Short:         "Run many web apps on one machine, the Nix way",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	defRoot := os.Getenv("HOSTEL_ROOT")
	if defRoot == "" {
		defRoot = "/var/lib/hostel"
	}
	root.PersistentFlags().StringVar(&e.root, "root", defRoot, "the daemon's state directory (env HOSTEL_ROOT)")
	root.PersistentFlags().StringVar(&e.api, "api", os.Getenv("HOSTEL_API"),
		"https://HOST:PORT: reach the daemon there (its --api-listen) instead of --root's, with the token in HOSTEL_TOKEN (env HOSTEL_API)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.SetOut(stdout)
	root.SetErr(stderr)
	for _, c := range commands {
		root.AddCommand(c(e))
	}
	root.SetArgs(args)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	return report(stderr, err)
}

// report prints err as the contract wants (one line saying what and where,
// then detail) and returns its exit code.
func report(w io.Writer, err error) int {
	var (
		ue  usageError
		se  *spec.Error
		ae  *api.Error
		une *api.UnreachableError
	)
	switch {
	case errors.As(err, &se):
		fmt.Fprintln(w, se.Error())
		return exitInvalid
	case errors.As(err, &ue):
		fmt.Fprintln(w, ue.Error())
		fmt.Fprintln(w, "Try: hostel --help")
		return exitInvalid
	case errors.As(err, &ae):
		fmt.Fprintln(w, ae.Message)
		if ae.Kind == api.KindInvalid {
			return exitInvalid
		}
		return exitFailed
	case errors.As(err, &une):
		fmt.Fprintln(w, une.Error())
		if une.Remote {
			fmt.Fprintln(w, "Try: hostel serve --api-listen HOST:PORT on that machine")
		} else {
			fmt.Fprintln(w, "Try: hostel serve --root", filepath.Dir(une.Socket))
		}
		return exitFailed
	default:
		// cobra's own argument errors ("accepts 1 arg(s)", "unknown command") are usage errors.
		if isCobraUsage(err) {
			fmt.Fprintln(w, err.Error())
			fmt.Fprintln(w, "Try: hostel --help")
			return exitInvalid
		}
		fmt.Fprintln(w, err.Error())
		return exitFailed
	}
}

func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires exactly", "unknown flag", "unknown shorthand", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func versionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the binary's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(e.stdout, "hostel", Version)
			return nil
		},
	}
}
