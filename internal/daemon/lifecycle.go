package daemon

import (
	"context"
	"slices"
	"sync"
	"time"

	"hostel/internal/api"
	"hostel/internal/spec"
)

// minDrain is the least time a stopping daemon gives requests in flight.
const minDrain = 30 * time.Second

// drainBound is how long a stopping daemon lets requests in flight finish:
// the largest stop_grace of the current generations its router last
// switched to (noteDrain), at least minDrain. It reads no store: an etcd
// without a quorum — the last members of a cluster stopping — would not
// answer.
func (d *Daemon) drainBound() time.Duration {
	return max(minDrain, time.Duration(d.grace.Load()))
}

// noteDrain keeps the largest stop_grace of currents, the generations the
// router switched to, for drainBound.
func (d *Daemon) noteDrain(currents map[string]*spec.Generation) {
	var bound time.Duration
	for _, g := range currents {
		for _, svc := range g.Spec.Services {
			bound = max(bound, svc.StopGraceOrDefault())
		}
	}
	d.grace.Store(int64(bound))
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
		wg.Go(func() { s.Stop(ctx) })
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
