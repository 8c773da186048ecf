package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func init() { commands = append(commands, shutdownCmd) }

// shutdownCmd stops every service and then the daemon. Stopping the daemon
// alone (SIGTERM) leaves the services running: the next `hostel serve`
// adopts them.
// statusWait bounds each call of shutdown's wait for the daemon to be gone.
const statusWait = 2 * time.Second

func shutdownCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "shutdown",
		Short: "Stop every service, then the daemon (a plain stop of the daemon keeps services running)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := c.Shutdown(cmd.Context())
			if err != nil {
				return err
			}
			for _, k := range res.Stopped {
				fmt.Fprintf(e.stdout, "stopped %s\n", k)
			}
			// Wait until the daemon no longer answers, so that a script may
			// start another at once. A socket held for the next daemon
			// (systemd's hostel.socket) takes a connection and answers
			// nothing: a call that has no answer within statusWait counts
			// as none.
			deadline := time.Now().Add(2 * time.Minute)
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(cmd.Context(), statusWait)
				_, err := c.Status(ctx)
				cancel()
				if err != nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			fmt.Fprintf(e.stdout, "daemon at %s stopped\n", c.Name())
			return nil
		},
	}
}
