package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"hostel/internal/routes"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// Pauses by hand (hostel pause): a production service's requests are held
// — past the pause's bound one gets 503 — until hostel resume. A pause is
// a record in the store (store.KindPause), so it lasts across deploys and
// daemon restarts: every node's router follows it (routes.Table pauses
// the service whatever version serves it), so requests held across a
// deploy are released to the version live at the resume.

// MaxPause bounds how long a pause may hold one request: a client waits
// no longer than this for an answer.
const MaxPause = time.Hour

// Pause is one pause by hand.
type Pause = routes.Pause

// PauseService pauses production's service, holding each of its requests
// for up to max, until ResumeService; pausing a paused service sets its
// bound anew. It returns once every router holds them.
func (e *Engine) PauseService(ctx context.Context, service string, max time.Duration) error {
	if max <= 0 || max > MaxPause {
		return invalid(fmt.Errorf("--max: %s is not between 0 and %s", max, MaxPause))
	}
	if err := e.lead(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.inProduction(ctx, service); err != nil {
		return err
	}
	p := Pause{Max: max, Since: time.Now().UTC().Truncate(time.Second)}
	rev := uint64(0)
	if r, err := e.st.Record(ctx, store.KindPause, service); err == nil {
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
	at, err := e.writer().Txn(ctx, store.Write{Kind: store.KindPause, Key: service, Value: v, Rev: rev})
	if err != nil {
		return fmt.Errorf("pause %s: %w", service, err)
	}
	e.routesAt(ctx, at, e.logf)
	return nil
}

// ResumeService ends the pause of production's service: its held requests
// go to the version live now. Resuming a service that is not paused does
// nothing. It returns once every router released them.
func (e *Engine) ResumeService(ctx context.Context, service string) error {
	if err := e.lead(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	r, err := e.st.Record(ctx, store.KindPause, service)
	if errors.Is(err, store.ErrNotFound) {
		return e.inProduction(ctx, service)
	} else if err != nil {
		return err
	}
	at, err := e.writer().Txn(ctx, store.Write{Kind: store.KindPause, Key: service, Rev: r.Revision, Delete: true})
	if err != nil {
		return fmt.Errorf("resume %s: %w", service, err)
	}
	e.routesAt(ctx, at, e.logf)
	return nil
}

// Pauses returns the services paused by hand, by name.
func (e *Engine) Pauses(ctx context.Context) (map[string]Pause, error) {
	recs, err := e.st.Records(ctx, store.KindPause)
	if err != nil {
		return nil, err
	}
	return routes.Pauses(recs), nil
}

// paused reports whether production's service is paused by hand.
func (e *Engine) paused(ctx context.Context, service string) (bool, error) {
	_, err := e.st.Record(ctx, store.KindPause, service)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// pausesOfGone returns the writes that end the pauses of services that
// production's generation g, about to go live, does not have: a service
// deployed again later starts unpaused. Nil for another environment's.
func pausesOfGone(v *view, g *spec.Generation) []store.Write {
	if g == nil || g.EnvOrDefault() != spec.DefaultEnv {
		return nil
	}
	var out []store.Write
	for _, r := range v.snap.Records[store.KindPause] {
		if g.Spec.Services[r.Key] == nil {
			out = append(out, store.Write{Kind: store.KindPause, Key: r.Key, Rev: r.Revision, Delete: true})
		}
	}
	return out
}

// inProduction checks that service is one of production's current
// generation.
func (e *Engine) inProduction(ctx context.Context, service string) error {
	cur, err := e.st.Current(ctx, spec.DefaultEnv)
	if err != nil {
		return err
	}
	if cur == nil || cur.Spec.Services[service] == nil {
		return invalid(fmt.Errorf("no service %q in the current generation", service))
	}
	return nil
}
