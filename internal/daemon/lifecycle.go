package daemon

import (
	"context"
	"slices"
	"sync"
	"time"

	"hostel/internal/api"
	"hostel/internal/spec"
)

// storeWait bounds what a stopping daemon waits for the store.
const storeWait = 5 * time.Second

// minDrain is the least time a stopping daemon gives requests in flight.
const minDrain = 30 * time.Second

// drainBound is how long a stopping daemon lets requests in flight finish:
// the largest stop_grace of the current generation, at least minDrain —
// minDrain if the store does not answer within storeWait (an etcd
// without a quorum waits for one as long as it is asked to: the last
// members of a cluster could never stop).
func (d *Daemon) drainBound() time.Duration {
	bound := minDrain
	if d.store == nil {
		return bound
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeWait)
	defer cancel()
	if cur, err := d.store.Current(ctx, spec.DefaultEnv); err == nil && cur != nil {
		for _, svc := range cur.Spec.Services {
			bound = max(bound, svc.StopGraceOrDefault())
		}
	}
	return bound
}

// stopServing closes every listener at once, so new connections are
// refused, and waits for the requests in flight (streams included) to
// finish, up to drainBound: first those from outside, then those between
// services through the router's endpoints, which the first may still use.
func (d *Daemon) stopServing() {
	ctx, cancel := context.WithTimeout(context.Background(), d.drainBound())
	defer cancel()
	var wg sync.WaitGroup
	if d.front != nil {
		wg.Go(func() {
			if d.front.Shutdown(ctx) != nil {
				d.front.Close()
			}
		})
	}
	for _, s := range d.servers {
		wg.Go(func() {
			if s.Shutdown(ctx) != nil {
				s.Close()
			}
		})
	}
	wg.Wait()
	if d.router != nil {
		d.router.ShutdownEndpoints(ctx)
	}
}

// Shutdown stops every service, topmost first, then makes Run return: what
// `hostel shutdown` asks for. A plain stop of the daemon (SIGTERM) leaves
// the services running for the next daemon to adopt.
func (d *Daemon) Shutdown(ctx context.Context) (*api.ShutdownResult, error) {
	res := &api.ShutdownResult{Stopped: []string{}}
	// The node no longer follows the store, which would start again
	// what stops; an open confirm window ends undecided, pending in the
	// store, for the next start to finish.
	d.stopNode()
	d.engine.Detach()
	for _, k := range d.agent.Running() {
		res.Stopped = append(res.Stopped, string(k))
	}
	d.agent.StopAll(context.WithoutCancel(ctx))
	// Whatever a previous daemon left behind and nothing adopted.
	for _, k := range d.sup.Orphans() {
		if _, ok, err := d.sup.AdoptRecorded(k); err == nil && ok {
			d.sup.Stop(context.WithoutCancel(ctx), k)
			res.Stopped = append(res.Stopped, string(k))
		}
	}
	// And whatever of this root still runs with no record: a process that
	// left its version's process group where there are no cgroups.
	for _, k := range d.sup.Leftovers() {
		if !slices.Contains(res.Stopped, string(k)) {
			res.Stopped = append(res.Stopped, string(k))
		}
	}
	d.stopHolder()
	d.logf("shutdown: stopped %d services; the daemon exits", len(res.Stopped))
	d.quitOnce.Do(func() { close(d.quit) })
	return res, nil
}
