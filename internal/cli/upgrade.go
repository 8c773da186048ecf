package cli

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"hostel/internal/api"
)

func init() { commands = append(commands, upgradeCmd) }

// upgradeCmd replaces the running daemon by a new binary without refusing
// a connection (docs/daemon-restart.md).
func upgradeCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "upgrade [PATH]",
		Short: "Replace the running daemon by the binary at PATH (default its own path) without refusing a connection",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := e.local(cmd); err != nil {
				return err
			}
			var req api.UpgradeRequest
			if len(args) > 0 {
				p, err := filepath.Abs(args[0])
				if err != nil {
					return usageError{err}
				}
				req.Path = p
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := c.Upgrade(cmd.Context(), req)
			if err != nil {
				return err
			}
			// The new daemon serves the API once it said it was ready; wait
			// until it answers, so that a script may go on at once.
			for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if _, err := c.Status(cmd.Context()); err == nil {
					break
				}
			}
			fmt.Fprintf(e.stdout, "upgraded the daemon at %s: pid %d → %d, hostel %s\n", c.Name(), res.OldPID, res.PID, res.Version)
			return nil
		},
	}
}
