package deploy

import (
	"context"
	"fmt"

	"hostel/internal/spec"
)

// WhileStopped stops the running version of service in the current generation
// (after its in-flight requests finish, up to its stop grace), runs fn, and
// starts the same version again with the same configuration, waiting until
// it is ready. No deploy, rollback or restart runs meanwhile. fn runs even
// when the service is not running (or not in the current generation); its
// error is returned after the restart is attempted.
func (e *Engine) WhileStopped(ctx context.Context, service string, fn func() error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.store.Current(ctx, spec.DefaultEnv)
	if err != nil {
		return err
	}
	if cur == nil || cur.Spec.Services[service] == nil {
		return fn()
	}
	key := spec.Key(service, cur.Versions[service])
	inst, ok := e.procs.Get(key)
	if !ok {
		return fn()
	}
	cfg := inst.Config()
	grace := cur.Spec.Services[service].StopGraceOrDefault()
	wctx, cancel := context.WithTimeout(ctx, grace)
	_ = e.route.WaitIdle(wctx, key)
	cancel()
	if err := e.procs.Stop(ctx, key); err != nil {
		return fmt.Errorf("stopping %s: %w", key, err)
	}
	ferr := fn()
	ni, err := e.procs.Start(cfg)
	if err == nil {
		err = ni.WaitReady(ctx)
	}
	if err != nil {
		if ferr != nil {
			return fmt.Errorf("%w; restarting %s failed too: %w", ferr, key, err)
		}
		return fmt.Errorf("restarting %s: %w", key, err)
	}
	e.route.AddBackend(key, ni.Addr())
	return ferr
}
