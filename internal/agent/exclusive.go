package agent

import (
	"context"
	"fmt"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// Exclusive services (`exclusive: true`): two versions never run at once.
// Before the new version is prepared (its release step is the service's
// code too, and writes its data) and started, the old one's requests are
// held (the router's Hold), the ones in flight finish, and its process
// stops; once the new one is ready, the old one's backend is pointed at
// it and the held requests are released to it. If the new one fails, it
// is stopped and the old one is started again and gets them.

// exclusiveMargin is added to the old version's stop grace and the new
// one's health timeout to bound how long a request is held.
const exclusiveMargin = 5 * time.Second

// wakeWaiter is the router's scale to zero, which a handover waits on for
// a wake of the old version under way as it pauses it.
type wakeWaiter interface {
	AwaitWake(ctx context.Context, key spec.VersionKey)
}

var _ wakeWaiter = (*router.Router)(nil)

// handover is what an exclusive start stopped for the new version: the
// old versions of the service, and how each ran.
type handover struct {
	old []stopped
}

type stopped struct {
	key spec.VersionKey
	cfg supervisor.Config
	had bool // it had a process (not asleep)
}

// holdExclusive holds the requests of every other version of an exclusive
// service that runs (or sleeps), waits for those in flight (up to its
// stop grace; the rest end with 504) and stops its process. bound is how
// long a request may be held. It returns nil for a service that is not
// exclusive or has no other version.
func (a *Agent) holdExclusive(ctx context.Context, name string, svc *spec.Service, key spec.VersionKey, bound time.Duration, progress Progress) (*handover, error) {
	h, ok := a.route.(holder)
	if !svc.Exclusive || !ok {
		return nil, nil
	}
	var others []spec.VersionKey
	a.runMu.Lock()
	for k := range a.running {
		// Exclusive is per data owner: a preview's own instance has its
		// own data and never stops production's.
		if k != key && serviceOf(k) == name && k.Owner() == key.Owner() {
			others = append(others, k)
		}
	}
	a.runMu.Unlock()
	ho := &handover{}
	for _, k := range others {
		_, running := a.procs.Get(k)
		asleep := a.asleep != nil && a.asleep(k)
		if !running && !asleep {
			continue
		}
		if err := h.Hold(k, bound); err != nil {
			a.releaseExclusive(ctx, ho, "", progress)
			return nil, err
		}
		if w, ok := a.route.(wakeWaiter); ok {
			// A wake that began before the pause starts the old version
			// whatever the pause: let it end, then stop what it started
			// (a failed wake leaves nothing running).
			w.AwaitWake(ctx, k)
		}
		inst, running := a.procs.Get(k)
		s := stopped{key: k}
		if running {
			s.cfg, s.had = inst.Config(), true
		}
		ho.old = append(ho.old, s)
		if !running {
			continue
		}
		progress("exclusive: holding %s's requests and stopping it before %s starts", k, key)
		wctx, cancel := context.WithTimeout(ctx, s.cfg.StopGrace)
		if err := a.route.WaitIdle(wctx, k); err != nil {
			n := a.route.Abort(k)
			progress("%s: %d requests still in flight after its stop grace: ended with 504", k, n)
		}
		cancel()
		if err := a.procs.Stop(context.WithoutCancel(ctx), k); err != nil {
			a.releaseExclusive(ctx, ho, "", progress)
			return nil, fmt.Errorf("stopping %s: %w", k, err)
		}
	}
	return ho, nil
}

// releaseExclusive ends a handover: with the new version ready at addr,
// the old versions' held requests go to it; with addr "" (the new one
// failed, and was stopped), the old versions that ran are started again
// and get them.
func (a *Agent) releaseExclusive(ctx context.Context, ho *handover, addr string, progress Progress) {
	if ho == nil {
		return
	}
	h := a.route.(holder)
	for _, s := range ho.old {
		switch {
		case addr != "":
			a.route.AddBackend(s.key, addr)
		case s.had:
			progress("exclusive: starting %s again", s.key)
			inst, err := a.procs.Start(s.cfg)
			if err == nil {
				err = inst.WaitReady(ctx)
			}
			if err != nil {
				progress("exclusive: %s did not start again: %v", s.key, err)
				a.procs.Stop(context.WithoutCancel(ctx), s.key)
			} else {
				a.route.AddBackend(s.key, inst.Addr())
			}
		}
		h.Unhold(s.key)
	}
}

// serviceOf is the service of a key (SERVICE-VERSION; a version has no
// "-").
func serviceOf(k spec.VersionKey) string { return k.Service() }

// besideExclusive keeps two versions of an exclusive service from running
// at once after a daemon restart (Options.Adopt), where no handover
// stands between them: the generations are resumed in order, the current
// ones first, so a version found running here is the one that serves,
// and g's version of name — the one a confirm window may switch back to —
// is left as a handover leaves an old version: not running, its backend
// pointed at the running one, started by a switch back through a
// handover (holdExclusive). Its own process, if a previous daemon left
// one, is stopped. It reports whether g's version is to be left so; when
// g's version is the one to run, other versions' processes left running
// are stopped first.
func (a *Agent) besideExclusive(ctx context.Context, g *spec.Generation, name string, progress Progress) bool {
	svc := g.Spec.Services[name]
	if !svc.Exclusive {
		return false
	}
	key := g.Instance(name)
	var other spec.VersionKey
	a.runMu.Lock()
	for k := range a.running {
		if k != key && serviceOf(k) == name && k.Owner() == key.Owner() {
			other = k
			break
		}
	}
	a.runMu.Unlock()
	inst, ok := a.procs.Get(other)
	if other == "" || !ok {
		// g's version is the one to run. A daemon killed in a handover
		// may have left another version's process running (the new one,
		// not yet committed): it goes first, never beside.
		for _, o := range a.procs.Orphans() {
			if o != key && serviceOf(o) == name && o.Owner() == key.Owner() {
				a.stopRecorded(context.WithoutCancel(ctx), o, progress)
			}
		}
		return false
	}
	a.stopRecorded(context.WithoutCancel(ctx), key, progress)
	needs := make([]spec.VersionKey, 0, len(svc.Needs))
	for _, n := range svc.Needs {
		needs = append(needs, g.Instance(n))
	}
	a.runMu.Lock()
	a.running[key] = &version{svc: svc, needs: needs}
	a.runMu.Unlock()
	a.route.AddBackend(key, inst.Addr())
	progress("exclusive: %s is not started beside %s; a switch back starts it", key, other)
	return true
}
