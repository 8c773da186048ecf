package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"hostel/internal/api"
)

func pauseCmd(e *env) *cobra.Command {
	var bound time.Duration
	cmd := &cobra.Command{
		Use:   "pause SERVICE",
		Short: "Hold a service's requests (maintenance); past --max a held request gets 503",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bound <= 0 {
				return &api.Error{Kind: api.KindInvalid, Message: fmt.Sprintf("--max: %s is not a positive duration", bound)}
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			if err := c.Pause(cmd.Context(), api.PauseRequest{Service: args[0], Max: bound.String()}); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "paused %s: requests are held for up to %s until hostel resume %s\n", args[0], bound, args[0])
			return nil
		},
	}
	cmd.Flags().DurationVar(&bound, "max", 30*time.Second, "how long a request is held before it gets 503")
	return cmd
}

func resumeCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "resume SERVICE",
		Short: "Release the requests a pause holds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			if err := c.Resume(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "resumed %s\n", args[0])
			return nil
		},
	}
}

func init() { commands = append(commands, pauseCmd, resumeCmd) }
