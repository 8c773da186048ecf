package deploy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"hostel/internal/spec"
)

// WhileStopped stops production's running version of service on every
// node that runs it (after its in-flight requests finish, up to its stop
// grace; its new requests are held meanwhile), runs fn, and has the nodes
// start the same version again with the same configuration, waiting until
// it is ready. No deploy, rollback or restart runs meanwhile. fn runs even
// when the service is not running (or not in the current generation); its
// error is returned after the start again is attempted.
func (e *Engine) WhileStopped(ctx context.Context, service string, fn func() error) error {
	if err := e.lead(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return err
	}
	cur := v.snap.Currents[spec.DefaultEnv]
	if cur == nil || cur.Spec.Services[service] == nil {
		return fn()
	}
	key := spec.Key(service, cur.Versions[service])
	svc := cur.Spec.Services[service]
	stopped := func(on bool) (uint64, error) {
		return e.writeDesired(ctx, v, e.keptByWindows(), nil, func(d *nodeDesired) {
			d.Stopped = slices.DeleteFunc(d.Stopped, func(k spec.VersionKey) bool { return k == key })
			if on {
				d.Stopped = append(d.Stopped, key)
			}
		})
	}
	rev, err := stopped(true)
	if err != nil {
		// The write may have been made all the same (an answer lost).
		stopped(false)
		return fmt.Errorf("stopping %s: %w", key, err)
	}
	if _, err := e.applied(ctx, v, rev, e.opts.NodeWait+svc.StopGraceOrDefault()); err != nil {
		return fmt.Errorf("stopping %s: %w", key, err)
	}
	ferr := fn()
	rev, err = stopped(false)
	if err == nil {
		var infos map[string]nodeResult
		infos, err = e.applied(ctx, v, rev, e.opts.NodeWait+svc.HealthTimeout())
		var errs []error
		for _, name := range slices.Sorted(maps.Keys(infos)) {
			for _, f := range infos[name].Failures {
				if f.Service == service {
					errs = append(errs, fmt.Errorf("on %s: %s", name, f.Reason))
				}
			}
		}
		err = errors.Join(append([]error{err}, errs...)...)
	}
	if err != nil {
		if ferr != nil {
			return fmt.Errorf("%w; starting %s again failed too: %w", ferr, key, err)
		}
		return fmt.Errorf("starting %s again: %w", key, err)
	}
	return ferr
}
