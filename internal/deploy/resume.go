package deploy

import (
	"context"
	"net"
	"net/url"
	"sync"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// Service processes outlive the daemon. When it starts again, Resume adopts
// the versions of the current generation that still run (same pid, same
// port), reopens each needed version's endpoint on the port its dependents
// were given in <NEED>_URL, starts only what is missing, and stops what runs
// but no longer belongs to the current generation (a deploy that was cut
// short).

// endpointAddr is where the endpoint of need (service name n) for the
// version key is opened: a free port, unless a running process of key, to
// be adopted, was given one in its <NEED>_URL.
func (e *Engine) endpointAddr(key spec.VersionKey, n string, opts startOptions) string {
	const free = "127.0.0.1:0"
	if !opts.adopt {
		return free
	}
	rec, ok := e.procs.Recorded(key)
	if !ok {
		return free
	}
	u, err := url.Parse(rec.Env[spec.EnvName(n)])
	if err != nil || u.Host == "" {
		return free
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return free
	}
	return u.Host
}

// openEndpoint opens nk's endpoint at addr, or at a free port when that
// cannot be had.
func (e *Engine) openEndpoint(nk spec.VersionKey, addr string) (string, error) {
	u, err := e.route.OpenEndpoint(nk, addr)
	if err != nil && addr != "127.0.0.1:0" {
		return e.route.OpenEndpoint(nk, "127.0.0.1:0")
	}
	return u, err
}

// launch starts cfg, or, with opts.adopt, adopts its running process when
// that process was given the same <NEED>_URLs.
func (e *Engine) launch(ctx context.Context, cfg supervisor.Config, needs []string, opts startOptions, progress Progress) (*supervisor.Instance, error) {
	if opts.adopt {
		key := spec.Key(cfg.Service, cfg.Version)
		if rec, ok := e.procs.Recorded(key); ok {
			same := true
			for _, n := range needs {
				name := spec.EnvName(n)
				same = same && rec.Env[name] == cfg.Env[name]
			}
			if same {
				inst, ok, err := e.procs.Adopt(cfg)
				if err == nil && ok {
					progress("adopted %s (pid %d) on %s", key, inst.Status().PID, inst.Addr())
					return inst, nil
				}
				if err != nil {
					progress("adopting %s: %v; starting it again", key, err)
				}
			} else {
				progress("%s runs with other endpoints than can be had now; starting it again", key)
				e.stopRecorded(context.WithoutCancel(ctx), key, progress)
			}
		}
	}
	return e.procs.Start(cfg)
}

// stopRecorded stops a process a previous daemon left running.
func (e *Engine) stopRecorded(ctx context.Context, key spec.VersionKey, progress Progress) {
	if _, ok, err := e.procs.AdoptRecorded(key); err != nil || !ok {
		return
	}
	if err := e.procs.Stop(ctx, key); err != nil {
		progress("stopping %s: %v", key, err)
		return
	}
	progress("stopped %s: no generation runs it", key)
}

// stopOrphans stops what a previous daemon left running outside the
// current generation.
func (e *Engine) stopOrphans(ctx context.Context, progress Progress) {
	var wg sync.WaitGroup
	for _, k := range e.procs.Orphans() {
		wg.Go(func() { e.stopRecorded(ctx, k, progress) })
	}
	wg.Wait()
}
