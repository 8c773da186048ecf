package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"hostel/internal/daemon"
	"hostel/internal/dashboard"
)

func init() { commands = append(commands, dashboardCmd) }

// dashboardCmd serves the web dashboard from this process, a client of the
// daemon's API like every other command: the daemon's API is never exposed
// by it, and the pages are behind a one-time login token.
func dashboardCmd(e *env) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Serve the web dashboard on a local port and print its URL with a one-time login token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The same rule as --api-listen's: HOST:PORT or :PORT.
			if err := daemon.CheckAPIListen(listen); listen == "" || err != nil {
				if err == nil {
					err = errors.New("want HOST:PORT")
				}
				return usageError{fmt.Errorf("--listen: %w", err)}
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			// Fail now, not on the first page, when no daemon answers.
			if _, err := c.Status(cmd.Context()); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			d := dashboard.New(c, dashboard.Options{})
			go d.Sample(cmd.Context(), 10*time.Second)
			srv := &http.Server{Handler: d, ReadHeaderTimeout: 10 * time.Second}
			fmt.Fprintf(e.stdout, "http://%s/login?token=%s\n", ln.Addr(), d.Token())
			fmt.Fprintln(e.stderr, "The token works once; interrupt to stop.")
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
				srv.Close() // followers of logs and events do not end by themselves
			}()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "serve the dashboard on HOST:PORT")
	return cmd
}
