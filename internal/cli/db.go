package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"hostel/internal/api"
	"hostel/internal/postgres"
)

func init() { commands = append(commands, dbCmd) }

func dbCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "db",
		Short: "The service's PostgreSQL database: shell, backup, restore, drop",
	}
	cmd.AddCommand(dbShellCmd(e), dbBackupCmd(e), dbRestoreCmd(e), dbDropCmd(e))
	return cmd
}

func dbShellCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "shell SERVICE [-- PSQL-ARGS...]",
		Short: "Open psql on the service's database, as the service's role",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// psql runs here and reaches the server as the daemon's
			// machine does (its socket, its host names).
			if e.api != "" {
				return &api.Error{Kind: api.KindInvalid, Message: fmt.Sprintf("db shell %s: --api: psql would run on this machine, and the database is reached from the daemon's; run it there (ssh HOST hostel db shell %s)", args[0], args[0])}
			}
			dc, err := e.client()
			if err != nil {
				return err
			}
			info, err := dc.DBInfo(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			psql, err := postgres.Tool("psql")
			if err != nil {
				return err
			}
			argv := append([]string{psql}, args[1:]...)
			if info.OSUser != "" {
				// Peer authentication: psql must run as the service's user.
				if os.Geteuid() != 0 {
					return fmt.Errorf("db shell %s: the role %s authenticates as the system user %s; run this as root", args[0], info.Role, info.OSUser)
				}
				argv = append([]string{"runuser", "-u", info.OSUser, "--"}, argv...)
			}
			c := exec.CommandContext(cmd.Context(), argv[0], argv[1:]...)
			c.Env = append(os.Environ(), "PGHOST="+info.Host, "PGPORT="+strconv.Itoa(info.Port),
				"PGDATABASE="+info.Database, "PGUSER="+info.Role)
			c.Env = append(c.Env, info.TLSEnv...)
			if info.Password != "" {
				c.Env = append(c.Env, "PGPASSWORD="+info.Password)
			}
			if info.OSUser != "" {
				c.Dir = "/" // the service's user may not reach the current directory
			}
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, e.stdout, e.stderr
			if err := c.Run(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					return fmt.Errorf("psql exited with status %d", ee.ExitCode())
				}
				return err
			}
			return nil
		},
	}
}

func dbBackupCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "backup SERVICE [FILE]",
		Short: "Back up the service's database (pg_dump -Fc) to FILE, or under ROOT/backups",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				c, err := e.client()
				if err != nil {
					return err
				}
				b, err := c.DBBackup(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "backed up %s to %s (%d bytes)\n", args[0], b.File, b.Size)
				return nil
			}
			file := args[1]
			f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
			if err != nil {
				return err
			}
			defer os.Remove(f.Name())
			c, err := e.client()
			if err != nil {
				return err
			}
			err = c.DBDump(cmd.Context(), args[0], f)
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(f.Name(), file)
			}
			if err != nil {
				return err
			}
			st, _ := os.Stat(file)
			fmt.Fprintf(e.stdout, "backed up %s to %s (%d bytes)\n", args[0], file, st.Size())
			return nil
		},
	}
}

func dbRestoreCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "restore SERVICE FILE",
		Short: "Restore a backup into the service's database, with the service stopped meanwhile",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[1])
			if err != nil {
				return usageError{err}
			}
			defer f.Close()
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := c.DBRestore(cmd.Context(), args[0], f)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "restored %s from %s (the database as it was is in %s)\n", args[0], args[1], res.SafetyBackup)
			if res.Restarted != "" {
				fmt.Fprintf(e.stdout, "restarted %s\n", res.Restarted)
			}
			return nil
		},
	}
}

func dbDropCmd(e *env) *cobra.Command {
	var really bool
	cmd := &cobra.Command{
		Use:   "drop SERVICE --yes-really",
		Short: "Remove the database and role of a service no longer in the spec (backups are kept)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !really {
				return usageError{fmt.Errorf("db drop %s removes the database and all its data: pass --yes-really", args[0])}
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			if err := c.DBDrop(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "dropped the database of %s\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&really, "yes-really", false, "really remove the database and its data")
	return cmd
}

// writeDatabases prints the databases of a status, if any has one.
func writeDatabases(w io.Writer, st *api.Status) error {
	seen := map[string]bool{}
	var rows []api.ServiceStatus
	for _, s := range st.Services {
		if s.Database != nil && !seen[s.Name] {
			seen[s.Name] = true
			rows = append(rows, s)
		}
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tDATABASE\tSIZE\tLAST BACKUP")
	for _, s := range rows {
		size := "?"
		if s.Database.SizeBytes > 0 {
			size = humanBytes(s.Database.SizeBytes)
		}
		last := "never"
		if s.Database.LastBackup != nil {
			last = s.Database.LastBackup.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Database.Name, size, last)
	}
	return tw.Flush()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
