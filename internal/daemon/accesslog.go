package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"hostel/internal/accesslog"
	"hostel/internal/api"
)

// AccessLogs implements api.AccessLogs: the access log of the instance
// environment env uses of service (hostel logs SERVICE --access), its
// JSON lines as written. A service not requested yet has an empty log;
// following it waits for its first line.
func (d *Daemon) AccessLogs(ctx context.Context, env, service string, n int, follow bool, w io.Writer) error {
	cur, err := d.envCurrent(ctx, env)
	if err != nil {
		return err
	}
	if cur == nil || cur.Spec.Services[service] == nil {
		return api.Invalid(fmt.Errorf("no service %q in the current generation", service))
	}
	path := accesslog.Path(d.opts.Root, service, cur.Owner(service))
	f, err := os.Open(path)
	for errors.Is(err, fs.ErrNotExist) && follow {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		f, err = os.Open(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	defer func() { f.Close() }()
	if err := tail(f, n, w); err != nil || !follow {
		return err
	}
	return followLog(ctx, &f, path, w)
}
