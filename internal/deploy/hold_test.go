package deploy

import (
	"errors"
	"testing"
	"time"

	"hostel/internal/spec"
)

// TestPauseLastsAcrossDeploys: a pause by hand is the store's: a deploy
// that changes the paused service keeps it paused (the new version too),
// one that removes the service ends its pause, and bad bounds or
// unknown services are input errors that change nothing.
func TestPauseLastsAcrossDeploys(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"api": app("api-1", domains("api.test")), "web": app("web-1")}))
	ctx := t.Context()
	for _, tc := range []struct {
		service string
		max     time.Duration
	}{{"api", 0}, {"api", -time.Second}, {"api", MaxPause + time.Second}, {"nope", time.Minute}} {
		if err := w.engine.PauseService(ctx, tc.service, tc.max); !errors.Is(err, ErrInvalid) {
			t.Errorf("PauseService(%s, %s) = %v, want an input error", tc.service, tc.max, err)
		}
	}
	if ps, _ := w.engine.Pauses(ctx); len(ps) != 0 {
		t.Fatalf("pauses after refused pauses: %v", ps)
	}

	if err := w.engine.PauseService(ctx, "api", time.Minute); err != nil {
		t.Fatal(err)
	}
	w.mustDeploy(mkSpec(map[string]*spec.Service{"api": app("api-2", domains("api.test")), "web": app("web-1")}))
	g, _ := w.store.Current(ctx, spec.DefaultEnv)
	if sl, _ := w.router.Sleeping(g.Instance("api")); !sl.Paused {
		t.Errorf("api's new version after a deploy: %+v, want paused", sl)
	}
	if ps, _ := w.engine.Pauses(ctx); ps["api"].Max != time.Minute {
		t.Errorf("pauses after the deploy: %v, want api's", ps)
	}

	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("web-1")}))
	if ps, _ := w.engine.Pauses(ctx); len(ps) != 0 {
		t.Errorf("pauses after api was removed: %v, want none", ps)
	}
	w.mustDeploy(mkSpec(map[string]*spec.Service{"api": app("api-2", domains("api.test")), "web": app("web-1")}))
	g, _ = w.store.Current(ctx, spec.DefaultEnv)
	if sl, _ := w.router.Sleeping(g.Instance("api")); sl.Paused {
		t.Errorf("api deployed again: %+v, want not paused", sl)
	}
}
