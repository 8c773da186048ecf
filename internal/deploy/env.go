package deploy

import (
	"context"
	"errors"
	"fmt"

	"hostel/internal/failpoint"
	"hostel/internal/node"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// ErrProductionEnv is why production cannot be removed as a preview is.
var ErrProductionEnv = errors.New("production is not a preview environment and cannot be removed")

// EnvRemoved says what removing an environment did.
type EnvRemoved struct {
	// Generation is the environment's current generation when it was
	// removed.
	Generation *spec.Generation
	// Stopped are the instances that stopped: those only the environment
	// held. Instances another environment still uses keep running.
	Stopped []string
	// Aborted counts requests still in flight to them at their stop
	// grace; they were ended with 504.
	Aborted int64
}

// RemoveEnv removes preview environment env: its generations leave the
// store in one change, its names leave the route table, and the instances
// only it held drain and stop (the topmost first), their preparations'
// bookkeeping with them. Production (ErrProductionEnv), a bad name and an
// environment with nothing deployed (ErrNoEnv) are input errors, and then
// nothing changed. What the environment's own instances kept outside the
// processes — databases, state directories, GC roots — is the caller's to
// remove once RemoveEnv returns (Stopped names them). With from not 0,
// the environment is removed only while from is its current generation
// (else store.ErrConflict, nothing changed): an expiry decided on one
// generation never removes a preview deployed again meanwhile.
func (e *Engine) RemoveEnv(ctx context.Context, env string, from uint64, progress Progress) (*EnvRemoved, error) {
	env, err := checkEnv(env)
	if err != nil {
		return nil, err
	}
	if env == spec.DefaultEnv {
		return nil, invalid(ErrProductionEnv)
	}
	if err := e.lead(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	cur := v.snap.Currents[env]
	if cur == nil {
		return nil, invalid(fmt.Errorf("environment %q: %w", env, ErrNoEnv))
	}
	if from != 0 && cur.Number != from {
		return nil, fmt.Errorf("remove environment %s: generation %d is current, not %d: %w", env, cur.Number, from, store.ErrConflict)
	}
	// An open window of env would switch back to a generation about to be
	// dropped: end it first.
	e.endWindowLocked(ctx, env, spec.ConfirmSuperseded, fmt.Sprintf("environment %s was removed", env), progress)
	e.disarmLocked(env)
	// The environment goes, and every node's Desired keeps callable only
	// what the rest keeps, in one transaction: the nodes drain what only
	// the environment held, once no router routes its names.
	after := v.without(func(g *spec.Generation) bool { return g.EnvOrDefault() == env })
	rev, err := e.commit(ctx, after, e.keptByWindows(), nil, func(also []store.Write) error {
		return e.writer().DropEnv(ctx, env, cur.Number, also...)
	})
	if err != nil {
		// The drop may have been made all the same (an answer lost after
		// the write), with the nodes' Desired in its transaction: if the
		// store no longer holds the environment, it is removed — finish,
		// so that its instances drain and the caller sweeps what they
		// kept, rather than leave that to the next start.
		var r store.Record
		if now, cerr := e.st.Current(ctx, env); cerr != nil || now != nil {
			return nil, fmt.Errorf("remove environment %s: %w", env, err)
		} else if r, cerr = e.st.Record(ctx, node.KindDesired, after.names()[0]); cerr != nil {
			return nil, fmt.Errorf("remove environment %s: %w", env, errors.Join(err, cerr))
		}
		progress("environment %s is gone from the store, though its removal answered: %v", env, err)
		rev = r.Revision
	}
	// A daemon that dies from here on leaves the preview's instances and
	// data to the next start: it stops what no environment holds and
	// sweeps the data of previews that are gone (daemon).
	failpoint.Hit("env-rm-after-drop")
	e.routesAt(ctx, rev, progress)
	progress("environment %s removed from the store and the routes", env)
	stopped, aborted := e.drained(context.WithoutCancel(ctx), after, rev, progress)
	progress("environment %s removed: %d instances stopped", env, len(stopped))
	return &EnvRemoved{Generation: cur, Stopped: stopped, Aborted: aborted}, nil
}
