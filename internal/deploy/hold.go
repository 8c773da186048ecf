package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"hostel/internal/spec"
	"hostel/internal/store"
)

// Pauses by hand (hostel pause): a production service's requests are held
// — past the pause's bound one gets 503 — until hostel resume. A pause is
// a record in the store (store.KindPause), so it lasts across deploys and
// daemon restarts: the route table pauses the service whatever version
// serves it (Table), so requests held across a deploy are released to the
// version live at the resume.

// MaxPause bounds how long a pause may hold one request: a client waits
// no longer than this for an answer.
const MaxPause = time.Hour

// Pause is one pause by hand.
type Pause struct {
	// Max is how long a request is held before it gets 503.
	Max time.Duration `json:"max"`
	// Since is when the service was paused.
	Since time.Time `json:"since"`
}

// PauseService pauses production's service, holding each of its requests
// for up to max, until ResumeService; pausing a paused service sets its
// bound anew.
func (e *Engine) PauseService(ctx context.Context, service string, max time.Duration) error {
	if max <= 0 || max > MaxPause {
		return invalid(fmt.Errorf("--max: %s is not between 0 and %s", max, MaxPause))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.inProduction(ctx, service); err != nil {
		return err
	}
	p := Pause{Max: max, Since: time.Now().UTC().Truncate(time.Second)}
	rev := uint64(0)
	if r, err := e.store.Record(ctx, store.KindPause, service); err == nil {
		rev = r.Revision
		var old Pause
		if json.Unmarshal(r.Value, &old) == nil && !old.Since.IsZero() {
			p.Since = old.Since
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if _, err := e.store.PutRecord(ctx, store.KindPause, service, v, rev); err != nil {
		return fmt.Errorf("pause %s: %w", service, err)
	}
	return e.reroute(ctx)
}

// ResumeService ends the pause of production's service: its held requests
// go to the version live now. Resuming a service that is not paused does
// nothing.
func (e *Engine) ResumeService(ctx context.Context, service string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, err := e.store.Record(ctx, store.KindPause, service)
	if errors.Is(err, store.ErrNotFound) {
		if err := e.inProduction(ctx, service); err != nil {
			return err
		}
		return nil
	} else if err != nil {
		return err
	}
	if err := e.store.DeleteRecord(ctx, store.KindPause, service, r.Revision); err != nil {
		return fmt.Errorf("resume %s: %w", service, err)
	}
	return e.reroute(ctx)
}

// Pauses returns the services paused by hand, by name.
func (e *Engine) Pauses(ctx context.Context) (map[string]Pause, error) {
	recs, err := e.store.Records(ctx, store.KindPause)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Pause, len(recs))
	for _, r := range recs {
		var p Pause
		if err := json.Unmarshal(r.Value, &p); err != nil || p.Max <= 0 {
			// A record this daemon cannot read holds nothing.
			continue
		}
		out[r.Key] = p
	}
	return out, nil
}

// dropPausesOfGone ends the pauses of services production's generation g,
// live now, does not have: a service deployed again later starts unpaused.
func (e *Engine) dropPausesOfGone(ctx context.Context, g *spec.Generation) {
	recs, err := e.store.Records(ctx, store.KindPause)
	if err != nil {
		e.logf("reading pauses: %v", err)
		return
	}
	for _, r := range recs {
		if g.Spec.Services[r.Key] == nil {
			if err := e.store.DeleteRecord(ctx, store.KindPause, r.Key, r.Revision); err != nil && !errors.Is(err, store.ErrNotFound) {
				e.logf("ending the pause of %s, gone from generation %d: %v", r.Key, g.Number, err)
			}
		}
	}
}

// inProduction checks that service is one of production's current
// generation.
func (e *Engine) inProduction(ctx context.Context, service string) error {
	cur, err := e.store.Current(ctx, spec.DefaultEnv)
	if err != nil {
		return err
	}
	if cur == nil || cur.Spec.Services[service] == nil {
		return invalid(fmt.Errorf("no service %q in the current generation", service))
	}
	return nil
}

// reroute swaps in the route table of what the store holds now. e.mu
// must be held.
func (e *Engine) reroute(ctx context.Context) error {
	cs, err := e.store.Currents(ctx)
	if err != nil {
		return err
	}
	return e.routeTo(ctx, cs)
}

// routeTo swaps in the route table of currents, every environment's
// current generation, with the pauses by hand the store holds: the one
// place the engine switches routes.
func (e *Engine) routeTo(ctx context.Context, currents map[string]*spec.Generation) error {
	pauses, err := e.Pauses(ctx)
	if err != nil {
		return err
	}
	paused := make(map[string]time.Duration, len(pauses))
	for name, p := range pauses {
		paused[name] = p.Max
	}
	return e.route.Swap(Table(currents, paused))
}
