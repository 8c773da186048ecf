package agent

import (
	"context"
	"fmt"
	"time"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// Exclusive services (`exclusive: true`): two versions never run at once.
// Before the new version's process starts, the old one's requests are
// held (the router's pause), the ones in flight finish, and its process
// stops; once the new one is ready, the old one's backend is pointed at
// it and the held requests are released to it. If the new one fails, it
// is stopped and the old one is started again and gets them.

// exclusiveMargin is added to the old version's stop grace and the new
// one's health timeout to bound how long a request is held.
const exclusiveMargin = 5 * time.Second

// holder is the router's pause, which an exclusive start holds the old
// version's requests with.
type holder interface {
	Pause(key spec.VersionKey, bound time.Duration) error
	Resume(key spec.VersionKey) error
}

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
		inst, running := a.procs.Get(k)
		asleep := a.asleep != nil && a.asleep(k)
		if !running && !asleep {
			continue
		}
		if err := h.Pause(k, bound); err != nil {
			a.releaseExclusive(ctx, ho, "", progress)
			return nil, err
		}
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
		h.Resume(s.key)
	}
}

// serviceOf is the service of a key (SERVICE-VERSION; a version has no
// "-").
func serviceOf(k spec.VersionKey) string { return k.Service() }
