package cli

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"hostel/internal/atomicfile"
	"hostel/internal/handover"
)

// unitDirEnv overrides where hostel install writes its units (tests, or a
// distribution's own directory).
const unitDirEnv = "HOSTEL_UNIT_DIR"

func init() { commands = append(commands, installCmd) }

func installCmd(e *env) *cobra.Command {
	var httpAddr, httpsAddr string
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Write systemd units (hostel.socket, hostel.service) that run hostel serve with systemd holding its listeners",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := e.local(cmd); err != nil {
				return err
			}
			for _, f := range []struct{ flag, addr string }{{"http", httpAddr}, {"https", httpsAddr}} {
				if f.addr == "" && f.flag == "https" {
					continue
				}
				if _, port, err := net.SplitHostPort(f.addr); err != nil || port == "0" {
					return usageError{fmt.Errorf("--%s: %q is not an address systemd can listen on (want HOST:PORT or :PORT)", f.flag, f.addr)}
				}
			}
			root, err := filepath.Abs(e.root)
			if err != nil {
				return err
			}
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("install: the path of hostel: %w", err)
			}
			dir := os.Getenv(unitDirEnv)
			if dir == "" {
				dir = "/etc/systemd/system"
			}
			socket, service := handover.Units(handover.UnitOptions{Binary: bin, Root: root, HTTPAddr: httpAddr, HTTPSAddr: httpsAddr})
			for _, u := range []struct{ name, text string }{{"hostel.socket", socket}, {"hostel.service", service}} {
				path := filepath.Join(dir, u.name)
				if err := atomicfile.WriteFile(path, []byte(u.text), 0o644); err != nil {
					return fmt.Errorf("install: %w", err)
				}
				fmt.Fprintln(e.stdout, "wrote", path)
			}
			fmt.Fprintln(e.stderr, "Then: systemctl daemon-reload && systemctl enable --now hostel.socket hostel.service")
			return nil
		},
	}
	cmd.Flags().StringVar(&httpAddr, "http", ":80", "public HTTP listener")
	cmd.Flags().StringVar(&httpsAddr, "https", ":443", `public HTTPS listener; "" serves everything on HTTP`)
	return cmd
}
