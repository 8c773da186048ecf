package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"hostel/internal/api"
	"hostel/internal/daemon"
	"hostel/internal/front"
	"hostel/internal/handover"
	"hostel/internal/plan"
	"hostel/internal/source"
	"hostel/internal/spec"
)

func serveCmd(e *env) *cobra.Command {
	var opts daemon.Options
	var heldBody, heldMemory, heldDisk, labels, capacity string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon in the foreground: supervisor, router, API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Root = e.root
			if err := e.local(cmd); err != nil {
				return err
			}
			if err := daemon.CheckAPIListen(opts.APIListen); err != nil {
				return usageError{fmt.Errorf("--api-listen: %w", err)}
			}
			// The same rule as --api-listen's: HOST:PORT or :PORT.
			if err := daemon.CheckAPIListen(opts.MetricsAddr); err != nil {
				return usageError{fmt.Errorf("--metrics: %w", err)}
			}
			if err := daemon.CheckNodeName(opts.Node); opts.Node != "" && err != nil {
				return usageError{fmt.Errorf("--node: %w", err)}
			}
			if err := opts.Store.Validate(opts.Node); err != nil {
				return usageError{err}
			}
			if err := daemon.CheckAdvertise(opts.Advertise, opts.Store); err != nil {
				return usageError{fmt.Errorf("--advertise: %w", err)}
			}
			var err error
			if opts.Labels, err = daemon.ParseLabels(labels); err != nil {
				return usageError{fmt.Errorf("--labels: %w", err)}
			}
			if opts.Capacity, err = daemon.ParseCapacity(capacity); err != nil {
				return usageError{fmt.Errorf("--capacity: %w", err)}
			}

			if opts.MaxConnections < 0 {
				return usageError{fmt.Errorf("--max-connections: %d is not a number of connections (0: from the open-file limit)", opts.MaxConnections)}
			}
			for _, f := range []struct {
				flag, value string
				to          *int64
			}{{"max-held-body", heldBody, &opts.Hold.Body}, {"max-held-memory", heldMemory, &opts.Hold.Memory}, {"max-held-disk", heldDisk, &opts.Hold.Disk}} {
				n, err := spec.ParseMemory(f.value)
				if err != nil || n <= 0 {
					return usageError{fmt.Errorf("--%s: %q is not a size (want e.g. \"64M\")", f.flag, f.value)}
				}
				*f.to = n
			}
			// Sockets passed by systemd or by the daemon this one replaces.
			if opts.Passed, err = handover.FromEnv(); err != nil {
				return usageError{err}
			}
			return daemon.Run(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.HTTPAddr, "http", ":80", "public HTTP listener (port 0 picks a free port)")
	cmd.Flags().StringVar(&opts.HTTPSAddr, "https", ":443", `public HTTPS listener; "" serves everything on HTTP`)
	cmd.Flags().StringVar(&opts.APIListen, "api-listen", "",
		"serve the API over HTTPS on HOST:PORT too, to clients with the token in ROOT/api/token (hostel --api https://HOST:PORT)")
	cmd.Flags().StringVar(&opts.MetricsAddr, "metrics", "",
		"serve Prometheus metrics on HOST:PORT at /metrics too (they are always at GET /metrics on the API socket)")
	cmd.Flags().StringSliceVar(&opts.Store.Etcd, "etcd", nil, "keep the state in the etcd at these URLs (comma-separated) instead of ROOT/state.db")
	cmd.Flags().StringVar(&opts.Store.EtcdCert, "etcd-cert", "", "client certificate for https:// --etcd URLs; with https:// --etcd-peers, the member's certificate")
	cmd.Flags().StringVar(&opts.Store.EtcdKey, "etcd-key", "", "key of --etcd-cert")
	cmd.Flags().StringVar(&opts.Store.EtcdCA, "etcd-ca", "", "CA of the etcd members' certificates (default: the system's; with --etcd-peers, required for https://)")
	cmd.Flags().BoolVar(&opts.Store.EtcdEmbed, "etcd-embed", false, "keep the state in an etcd member run by the daemon, its data in ROOT/etcd")
	cmd.Flags().StringSliceVar(&opts.Store.EtcdPeers, "etcd-peers", nil,
		"with --etcd-embed, the cluster's initial members NAME=PEER_URL,… (this node among them by its --node); each serves clients on its peer port less one")
	cmd.Flags().StringVar(&opts.Node, "node", "", "this daemon's node among those sharing the store (default: the host name)")
	cmd.Flags().StringVar(&opts.Advertise, "advertise", "",
		"the address other nodes of the cluster reach this one at, HOST:PORT: its node-to-node port listens there (mutual TLS with the cluster's own CA)")
	cmd.Flags().StringVar(&labels, "labels", "", "the node's labels, k=v,k=v, which placement.labels match")
	cmd.Flags().StringVar(&capacity, "capacity", "", "what the node gives instances' memory and cpu requests, cpu=N,memory=SIZE (default: the machine's)")
	cmd.Flags().IntVar(&opts.MaxConnections, "max-connections", 0,
		"client connections open at once on the public listeners; past it one is answered 503 (0: half the open-file limit less 512)")
	cmd.Flags().StringVar(&heldBody, "max-held-body", sizeFlag(front.DefaultHeldBody),
		"how much of a held request's body (its service asleep, waking or paused) is read ahead of the app; past it: 413")
	cmd.Flags().StringVar(&heldMemory, "max-held-memory", sizeFlag(front.DefaultHeldMemory),
		"memory the bodies of all held requests share ("+sizeFlag(front.HeldRequestMemory)+" at most each); past it they go to ROOT/tmp")
	cmd.Flags().StringVar(&heldDisk, "max-held-disk", sizeFlag(front.DefaultHeldDisk),
		"disk (ROOT/tmp) the bodies of all held requests share; past it, or with the disk full: 503")
	return cmd
}

// sizeFlag writes n bytes as a size flag takes it ("64M").
func sizeFlag(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"G", 30}, {"M", 20}, {"K", 10}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.suffix)
		}
	}
	return fmt.Sprint(n)
}

// load reads the spec file named by args, or the default one.
func load(args []string) (*source.Loaded, api.PlanRequest, error) {
	file := ""
	if len(args) > 0 {
		file = args[0]
	} else {
		wd, err := os.Getwd()
		if err != nil {
			return nil, api.PlanRequest{}, err
		}
		if file, err = source.Find(wd); err != nil {
			return nil, api.PlanRequest{}, err
		}
	}
	l, err := source.Load(file)
	if err != nil {
		return nil, api.PlanRequest{}, err
	}
	b, err := json.Marshal(l.Spec)
	if err != nil {
		return nil, api.PlanRequest{}, err
	}
	return l, api.PlanRequest{Source: l.File, Spec: b, Inputs: l.Inputs, Secrets: l.Secrets}, nil
}

func planCmd(e *env) *cobra.Command {
	var asJSON bool
	var target, envName string
	cmd := &cobra.Command{
		Use:   "plan [FILE]",
		Short: "Print what a deploy would change and why; changes nothing",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkEnvFlag(envName); err != nil {
				return err
			}
			l, req, err := load(args)
			if err != nil {
				return err
			}
			req.Env = envName
			c, err := e.clientFor(cmd.Context(), target, l, false)
			if err != nil {
				return err
			}
			var p plan.Plan
			if err := c.Plan(cmd.Context(), req, &p); err != nil {
				return err
			}
			for _, w := range p.Warnings {
				fmt.Fprintln(e.stderr, "warning:", w)
			}
			if asJSON {
				return printJSON(e.stdout, &p)
			}
			return p.WriteText(e.stdout)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the plan as JSON")
	addEnvFlag(cmd, &envName)
	addTargetFlag(cmd, &target)
	return cmd
}

// writeResult says what a deploy or rollback did: which generation is live,
// and, for one that failed after it did something, what was switched back
// and which versions failed.
func writeResult(w io.Writer, r *api.DeployResult) {
	switch {
	case r.RolledBack:
		fmt.Fprintf(w, "generation %d went live and was switched back: generation %d is live: %d started, %d stopped\n",
			r.RolledBackFrom, r.Generation, len(r.Started), len(r.Stopped))
	case r.Error != "" && r.Confirmation == "":
		// Failed before the switch (a rollback has no confirmation either).
		fmt.Fprintf(w, "nothing changed: generation %d is still live\n", r.Generation)
	default:
		fmt.Fprintf(w, "generation %d is live: %d started, %d stopped\n", r.Generation, len(r.Started), len(r.Stopped))
	}
	switch r.Confirmation {
	case "pending":
		fmt.Fprintln(w, "not confirmed yet: the daemon finishes the confirm window")
	case "superseded":
		fmt.Fprintln(w, "not confirmed: a later deploy or rollback ended the confirm window")
	}
	if r.Aborted > 0 {
		fmt.Fprintf(w, "%d requests to old versions were still running at their stop grace and were ended with 504\n", r.Aborted)
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "failed: %s %s (%s): %s\n", f.Service, f.Version, f.Step, firstLine(f.Reason))
	}
}

// firstLine is s up to its first newline: a reason's detail (log lines)
// goes with the error on stderr.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func deployCmd(e *env) *cobra.Command {
	var (
		asJSON    bool
		noConfirm bool
		confirm   time.Duration
		target    string
		envName   string
	)
	cmd := &cobra.Command{
		Use:   "deploy [FILE]",
		Short: "Plan, then apply: start new versions, health-check, switch atomically, drain old",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkEnvFlag(envName); err != nil {
				return err
			}
			l, preq, err := load(args)
			if err != nil {
				return err
			}
			preq.Env = envName
			c, err := e.clientFor(cmd.Context(), target, l, true)
			if err != nil {
				return err
			}
			req := api.DeployRequest{PlanRequest: preq}
			if noConfirm {
				req.Confirm = "0s"
			} else if cmd.Flags().Changed("confirm") {
				req.Confirm = confirm.String()
			}
			res, err := c.Deploy(cmd.Context(), req, func(line string) {
				fmt.Fprintln(e.stderr, line)
			})
			if res == nil {
				return err
			}
			// A deploy that failed after it did something says what it did,
			// then fails (exit 1).
			if asJSON {
				if jerr := printJSON(e.stdout, res); jerr != nil {
					return jerr
				}
				return err
			}
			if err == nil && res.Plan != nil && !res.Plan.Changed() && len(res.Started) == 0 {
				fmt.Fprintf(e.stdout, "generation %d: nothing changed\n", res.Generation)
				return nil
			}
			writeResult(e.stdout, res)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().BoolVar(&noConfirm, "no-confirm", false, "skip the confirm window after the switch")
	cmd.Flags().DurationVar(&confirm, "confirm", 30*time.Second, "how long new versions must stay healthy after the switch")
	addEnvFlag(cmd, &envName)
	addTargetFlag(cmd, &target)
	return cmd
}

func statusCmd(e *env) *cobra.Command {
	var asJSON, all bool
	var envName string
	cmd := &cobra.Command{
		Use:   "status [SERVICE]",
		Short: "Show the current generation and each service's version, state, pid and URLs",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkEnvFlag(envName); err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			var st *api.Status
			if all {
				st, err = c.AllStatus(cmd.Context(), envName)
			} else {
				st, err = c.EnvStatus(cmd.Context(), envName)
			}
			if err != nil {
				return err
			}
			if len(args) == 1 {
				var only []api.ServiceStatus
				for _, s := range st.Services {
					if s.Name == args[0] {
						only = append(only, s)
					}
				}
				if only == nil {
					return &api.Error{Kind: api.KindInvalid, Message: fmt.Sprintf("no service %q", args[0])}
				}
				st.Services = only
			}
			if asJSON {
				return printJSON(e.stdout, st)
			}
			fmt.Fprintf(e.stdout, "generation %d%s, http %s\n", st.Generation, confirmNote(st), st.Listen.HTTP)
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tVERSION\tSTATE\tPID\tREADY\tDOMAINS\tURL")
			for _, s := range st.Services {
				pid := "-"
				if s.PID > 0 {
					pid = fmt.Sprint(s.PID)
				}
				doms := strings.Join(s.Domains, ",")
				if doms == "" {
					doms = "-"
				}
				state := s.State
				if p := s.Paused; p != nil {
					state += fmt.Sprintf(" (paused since %s, requests held up to %s)", p.Since.Local().Format(time.DateTime), time.Duration(p.MaxSeconds*float64(time.Second)))
				} else if h := s.Health; h != nil && !h.OK && s.State == "running" {
					// Failing, not yet as many times in a row as make it unhealthy.
					state += " (last health check failed: " + h.Error + ")"
				} else if s.Error != "" {
					state += " (" + s.Error + ")"
				} else if (s.State == "idle" || s.State == "held") && s.LastRequest != nil {
					state += fmt.Sprintf(" (last request %s, %d wakes)", s.LastRequest.Local().Format(time.DateTime), s.Wakes)
				}
				version := s.Version
				if s.Kept {
					version += " (kept)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%s\n", s.Name, version, state, pid, s.Ready, doms, s.URL)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if err := writeCertificates(e.stdout, st); err != nil {
				return err
			}
			return writeDatabases(e.stdout, st)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print status as JSON")
	cmd.Flags().BoolVar(&all, "all", false, "add every version still kept (asleep, callable, draining)")
	addEnvFlag(cmd, &envName)
	return cmd
}

// confirmNote says, in the first line of `hostel status`, that the current
// generation is not confirmed yet, failed its confirmation, or was switched
// back to.
func confirmNote(st *api.Status) string {
	switch {
	case st.Confirmation == "pending":
		return " (confirm window open)"
	case st.Confirmation == "failed":
		return " (failed its confirmation: " + firstLine(st.ConfirmError) + ")"
	case st.SwitchedBackFrom != 0:
		return fmt.Sprintf(" (switched back from generation %d: %s)", st.SwitchedBackFrom, firstLine(st.SwitchBackReason))
	}
	return ""
}

func generationsCmd(e *env) *cobra.Command {
	var asJSON bool
	var envName string
	cmd := &cobra.Command{
		Use:   "generations",
		Short: "List the generations: number, time, spec hash, per-service versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkEnvFlag(envName); err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			gs, err := c.EnvGenerations(cmd.Context(), envName)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, gs)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "GEN\tTIME\tSPEC\tSERVICES\tCONFIRMED")
			for _, g := range gs.Generations {
				mark := ""
				if g.Current {
					mark = " (current)"
				}
				fmt.Fprintf(tw, "%d%s\t%s\t%.12s\t%d\t%s\n", g.Number, mark, g.Time.Local().Format("2006-01-02 15:04:05"), g.SpecHash, len(g.Versions), confirmedMark(g))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print generations as JSON")
	addEnvFlag(cmd, &envName)
	return cmd
}

// confirmedMark is the CONFIRMED column of `hostel generations`: "yes", or
// "no" and why not.
func confirmedMark(g api.Generation) string {
	switch {
	case g.Confirmed:
		return "yes"
	case g.Confirmation == "":
		return "unknown"
	case g.ConfirmError != "":
		return "no (" + g.Confirmation + ": " + firstLine(g.ConfirmError) + ")"
	default:
		return "no (" + g.Confirmation + ")"
	}
}

func rollbackCmd(e *env) *cobra.Command {
	var to uint64
	var envName string
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Switch to generation N (default: the one before the current)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkEnvFlag(envName); err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := c.Rollback(cmd.Context(), api.RollbackRequest{To: to, Env: envName}, func(line string) {
				fmt.Fprintln(e.stderr, line)
			})
			if res != nil {
				writeResult(e.stdout, res)
			}
			return err
		},
	}
	cmd.Flags().Uint64Var(&to, "to", 0, "the generation to switch to")
	addEnvFlag(cmd, &envName)
	return cmd
}

func logsCmd(e *env) *cobra.Command {
	var (
		follow  bool
		access  bool
		version string
		lines   int
		envName string
	)
	cmd := &cobra.Command{
		Use:   "logs SERVICE",
		Short: "Print a service's captured stdout and stderr",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkEnvFlag(envName); err != nil {
				return err
			}
			if access && version != "" {
				return usageError{errors.New("--access: the access log is the service's, of every version; drop --version")}
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			if access {
				return c.AccessLogs(cmd.Context(), envName, args[0], lines, follow, e.stdout)
			}
			return c.EnvLogs(cmd.Context(), envName, args[0], version, lines, follow, e.stdout)
		},
	}
	cmd.Flags().BoolVar(&access, "access", false, "print the service's access log instead: one JSON line per request")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing what the service writes")
	cmd.Flags().StringVar(&version, "version", "", "a version other than the current one")
	cmd.Flags().IntVarP(&lines, "lines", "n", 100, "how many lines from the end")
	addEnvFlag(cmd, &envName)
	return cmd
}

func restartCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "restart SERVICE",
		Short: "Restart one service's running version in place",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			if err := c.Restart(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "restarted %s\n", args[0])
			return nil
		},
	}
}

func gcCmd(e *env) *cobra.Command {
	var keep int
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Drop generations older than the newest N; never the current one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := c.GC(cmd.Context(), keep)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "removed %d generations %v, kept %v\n", len(res.Removed), res.Removed, res.Kept)
			if len(res.Unpinned) > 0 || res.FreedPaths > 0 {
				fmt.Fprintf(e.stdout, "unpinned %d versions; the Nix garbage collector freed %d store paths, %.2f MiB\n",
					len(res.Unpinned), res.FreedPaths, float64(res.FreedBytes)/(1<<20))
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&keep, "keep", 5, "how many of the newest generations to keep")
	return cmd
}
