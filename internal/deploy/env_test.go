package deploy

import (
	"errors"
	"io"
	"net/http"
	"slices"
	"testing"

	"hostel/internal/spec"
)

// deployEnv deploys s to environment env.
func (w *world) deployEnv(env string, s *spec.Spec) (*Result, error) {
	w.t.Helper()
	return w.engine.Deploy(w.t.Context(), Request{Source: "test.json", Env: env, Spec: s}, w.progress)
}

// pids returns the pid of every running version, by key.
func (w *world) pids() map[spec.VersionKey]int {
	out := map[spec.VersionKey]int{}
	for _, st := range w.sup.List() {
		out[st.Key] = st.PID
	}
	return out
}

// call GETs url and returns the body.
func call(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestEnvironments: a deploy to another environment starts only the
// versions that run nowhere, leaves production's processes and domains as
// they are, and a version runs while any environment's current generation
// holds it: a production deploy that replaces api leaves the old api
// running for the preview that still calls it.
func TestEnvironments(t *testing.T) {
	w := newWorld(t)
	prod := mkSpec(map[string]*spec.Service{
		"api": app("api-1"),
		"web": app("web-1", needs("api"), domains("web.test")),
	})
	w.mustDeploy(prod)
	before := w.pids()

	preview := mkSpec(map[string]*spec.Service{
		"api": app("api-1"),
		"web": app("web-preview", needs("api"), domains("web.test")),
	})
	res, err := w.deployEnv("pr-1", preview)
	if err != nil {
		t.Fatalf("deploy --env pr-1: %v", err)
	}
	if len(res.Started) != 1 || len(res.Stopped) != 0 {
		t.Errorf("preview started %v and stopped %v, want exactly its own web started", res.Started, res.Stopped)
	}
	after := w.pids()
	for k, pid := range before {
		if after[k] != pid {
			t.Errorf("%s: pid %d before the preview, %d after", k, pid, after[k])
		}
	}
	if len(after) != len(before)+1 {
		t.Errorf("%d processes run with the preview, want %d", len(after), len(before)+1)
	}
	if _, id, _ := w.get("web.test", "/"); id != "web-1" {
		t.Errorf("production's domain answered by %q after a preview deploy", id)
	}
	prodGen, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	prevGen, _ := w.store.Current(t.Context(), "pr-1")
	if prodGen.Number != 1 || prevGen == nil || prevGen.Number != 2 || prevGen.Env != "pr-1" {
		t.Fatalf("current generations: production %+v, pr-1 %+v", prodGen, prevGen)
	}

	// Production replaces api (and web with it); pr-1's web still calls
	// the api it was built against, which keeps running.
	oldAPI := spec.Key("api", prodGen.Versions["api"])
	w.mustDeploy(mkSpec(map[string]*spec.Service{
		"api": app("api-2"),
		"web": app("web-1", needs("api"), domains("web.test")),
	}))
	running := w.engine.Running()
	if !slices.Contains(running, oldAPI) {
		t.Errorf("%s stopped while pr-1 holds it; running: %v", oldAPI, running)
	}
	if slices.Contains(running, spec.Key("web", prodGen.Versions["web"])) {
		t.Errorf("production's old web, which no environment holds, still runs")
	}
	pw, ok := w.sup.Get(spec.Key("web", prevGen.Versions["web"]))
	if !ok {
		t.Fatal("pr-1's web is not running")
	}
	if got := call(t, pw.Config().Env["API_URL"]+"/"); got != "api-1" {
		t.Errorf("pr-1's web reaches %q through API_URL, want api-1", got)
	}
	if _, id, _ := w.get("web.test", "/"); id != "web-1" {
		t.Errorf("web.test answered by %q", id)
	}

	// Rolling pr-1 back is refused: it has no generation before its one.
	if _, err := w.engine.Rollback(t.Context(), "pr-1", 0, w.progress); !errors.Is(err, ErrInvalid) {
		t.Errorf("rollback of pr-1 with nothing to go back to: %v, want an input error", err)
	}
	// A production generation is not pr-1's to roll back to.
	if _, err := w.engine.Rollback(t.Context(), "pr-1", 1, w.progress); !errors.Is(err, ErrInvalid) {
		t.Errorf("rollback of pr-1 to production's generation 1: %v, want an input error", err)
	}
}

// TestBadEnvironment: a bad environment name is an input error, and
// nothing runs or is stored.
func TestBadEnvironment(t *testing.T) {
	for _, env := range []string{"PR-1", "pr_1", "a-name-far-too-long-for-one", " "} {
		t.Run(env, func(t *testing.T) {
			w := newWorld(t)
			_, err := w.deployEnv(env, mkSpec(map[string]*spec.Service{"web": app("web-1")}))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("deploy --env %q: %v, want an input error", env, err)
			}
			if gens, _ := w.store.List(t.Context()); len(gens) != 0 || len(w.sup.List()) != 0 {
				t.Errorf("a refused deploy stored %d generations and runs %d processes", len(gens), len(w.sup.List()))
			}
		})
	}
}
