package deploy

import (
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"hostel/internal/plan"
	"hostel/internal/spec"
	"hostel/internal/store"
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
	running := w.node.Agent.Running()
	if !slices.Contains(running, oldAPI) {
		t.Errorf("%s stopped while pr-1 holds it; running: %v", oldAPI, running)
	}
	if slices.Contains(running, spec.Key("web", prodGen.Versions["web"])) {
		t.Errorf("production's old web, which no environment holds, still runs")
	}
	pw, ok := w.sup.Get(prevGen.Instance("web"))
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

// TestPreviewOwnInstance: a preview's own version runs as the preview's
// instance (SERVICE-VERSION@ENV, its own state directory), answers on
// SERVICE.ENV.ZONE to loopback clients, and when production later deploys
// the same version, production starts its own instance with its own data
// rather than take over the preview's.
func TestPreviewOwnInstance(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{
		"api": app("api-1"),
		"web": app("web-1", needs("api"), domains("web.test")),
	}))
	next := mkSpec(map[string]*spec.Service{
		"api": app("api-1"),
		"web": app("web-2", needs("api"), domains("web.test")),
	})
	res, err := w.deployEnv("pr-1", next)
	if err != nil {
		t.Fatalf("deploy --env pr-1: %v", err)
	}
	actions := map[string]plan.Action{}
	for _, c := range res.Plan.Services {
		actions[c.Name] = c.Action
	}
	if want := map[string]plan.Action{"api": plan.Shared, "web": plan.Start}; !maps.Equal(actions, want) {
		t.Errorf("preview plan: %v, want %v", actions, want)
	}
	pr, _ := w.store.Current(t.Context(), "pr-1")
	own := pr.Instance("web")
	if own.Owner() != "pr-1" || own.Version() != spec.Key("web", pr.Versions["web"]) {
		t.Fatalf("pr-1's web is instance %q, want one of its own", own)
	}
	inst, ok := w.sup.Get(own)
	if !ok {
		t.Fatalf("%s does not run; running: %v", own, w.node.Agent.Running())
	}
	if got, want := inst.Config().Owner, "pr-1"; got != want {
		t.Errorf("owner of %s: %q, want %q", own, got, want)
	}
	if _, id, _ := w.get("web.pr-1."+spec.DefaultZone, "/"); id != "web-2" {
		t.Errorf("web.pr-1.%s answered by %q, want web-2", spec.DefaultZone, id)
	}
	if _, id, _ := w.get("web.test", "/"); id != "web-1" {
		t.Errorf("production's domain answered by %q after a preview deploy", id)
	}
	previewPID := inst.Status().PID

	// Production deploys the very version pr-1 owns: it gets an instance
	// of its own; pr-1's keeps running, same process.
	w.mustDeploy(next)
	prod, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	if prod.Instance("web") == own {
		t.Fatalf("production uses pr-1's instance %s", own)
	}
	pi, ok := w.sup.Get(prod.Instance("web"))
	if !ok {
		t.Fatalf("production's %s does not run", prod.Instance("web"))
	}
	if pi.Status().PID == previewPID {
		t.Errorf("production's web is pr-1's process %d", previewPID)
	}
	if st, ok := w.sup.Status(own); !ok || st.PID != previewPID {
		t.Errorf("pr-1's web: %+v (known %v), want pid %d still running", st, ok, previewPID)
	}
	if _, id, _ := w.get("web.test", "/"); id != "web-2" {
		t.Errorf("web.test answered by %q, want production's web-2", id)
	}
}

// TestShare: which instance each service of a preview uses.
func TestShare(t *testing.T) {
	svcs := map[string]*spec.Service{"api": app("a"), "web": app("w", needs("api"))}
	g := func(env string, api, web spec.Version, shares map[string]string) *spec.Generation {
		x := gen(env, map[string]spec.Version{"api": api, "web": web}, svcs)
		x.Shares = shares
		return x
	}
	tests := []struct {
		name     string
		currents map[string]*spec.Generation
		next     *spec.Generation
		want     map[string]string
	}{
		{"production never shares",
			map[string]*spec.Generation{"pr-1": g("pr-1", "a1", "w1", nil)},
			g(spec.DefaultEnv, "a1", "w1", nil), nil},
		{"production's versions are shared",
			map[string]*spec.Generation{spec.DefaultEnv: g(spec.DefaultEnv, "a1", "w1", nil)},
			g("pr-1", "a1", "w2", nil), map[string]string{"api": spec.DefaultEnv}},
		{"another preview's own version is shared when production lacks it",
			map[string]*spec.Generation{spec.DefaultEnv: g(spec.DefaultEnv, "a1", "w1", nil), "pr-2": g("pr-2", "a2", "w2", nil)},
			g("pr-1", "a2", "w3", nil), map[string]string{"api": "pr-2"}},
		{"a redeploy keeps the preview's own instance",
			map[string]*spec.Generation{spec.DefaultEnv: g(spec.DefaultEnv, "a1", "w2", nil), "pr-1": g("pr-1", "a1", "w2", map[string]string{"api": spec.DefaultEnv})},
			g("pr-1", "a1", "w2", nil), map[string]string{"api": spec.DefaultEnv}},
		{"a sharer's instance is the owner's, not the sharer's",
			map[string]*spec.Generation{spec.DefaultEnv: g(spec.DefaultEnv, "a1", "w1", nil), "pr-2": g("pr-2", "a2", "w2", nil), "pr-3": g("pr-3", "a2", "w9", map[string]string{"api": "pr-2"})},
			g("pr-1", "a2", "w3", nil), map[string]string{"api": "pr-2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			Share(tt.next, tt.currents)
			if !maps.Equal(tt.next.Shares, tt.want) {
				t.Errorf("shares %v, want %v", tt.next.Shares, tt.want)
			}
		})
	}
}

// TestRemoveEnv: removing a preview stops what only it held, and nothing
// else; an instance another preview shares keeps running until that one
// goes too; production, a bad name and an unknown environment are refused
// with nothing changed.
func TestRemoveEnv(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{
		"api": app("api-1"),
		"web": app("web-1", needs("api"), domains("web.test")),
	}))
	preview := mkSpec(map[string]*spec.Service{
		"api": app("api-1"),
		"web": app("web-2", needs("api"), domains("web.test")),
	})
	for _, env := range []string{"pr-1", "pr-2"} {
		if _, err := w.deployEnv(env, preview); err != nil {
			t.Fatalf("deploy --env %s: %v", env, err)
		}
	}
	pr1, _ := w.store.Current(t.Context(), "pr-1")
	pr2, _ := w.store.Current(t.Context(), "pr-2")
	own := pr1.Instance("web")
	if pr2.Instance("web") != own {
		t.Fatalf("pr-2's web is %s, want pr-1's %s shared", pr2.Instance("web"), own)
	}
	prod := w.pids()
	delete(prod, own)

	for _, tc := range []struct{ name, env string }{
		{"production", spec.DefaultEnv}, {"empty name", ""}, {"bad name", "PR_1"}, {"unknown", "pr-9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, gens := w.pids(), w.generations()
			if _, err := w.engine.RemoveEnv(t.Context(), tc.env, 0, w.progress); !errors.Is(err, ErrInvalid) {
				t.Errorf("RemoveEnv(%q): %v, want an input error", tc.env, err)
			}
			if !maps.Equal(w.pids(), before) || w.generations() != gens {
				t.Errorf("a refused RemoveEnv(%q) changed processes or generations", tc.env)
			}
		})
	}

	// pr-1 goes; its web instance stays, pr-2 uses it.
	res, err := w.engine.RemoveEnv(t.Context(), "pr-1", 0, w.progress)
	if err != nil {
		t.Fatalf("RemoveEnv(pr-1): %v", err)
	}
	if len(res.Stopped) != 0 {
		t.Errorf("removing pr-1 stopped %v, which pr-2 still uses", res.Stopped)
	}
	if code, _, _ := w.get("web.pr-1."+spec.DefaultZone, "/"); code != http.StatusNotFound {
		t.Errorf("web.pr-1 answers %d after pr-1 was removed, want 404", code)
	}
	if _, id, _ := w.get("web.pr-2."+spec.DefaultZone, "/"); id != "web-2" {
		t.Errorf("web.pr-2 answered by %q, want web-2", id)
	}
	if g, _ := w.store.Current(t.Context(), "pr-1"); g != nil {
		t.Errorf("pr-1 still has a current generation: %d", g.Number)
	}

	// pr-2 goes; the instance only it held now stops; production's
	// processes are the same ones.
	// An expiry decided on another generation of pr-2 removes nothing.
	if _, err := w.engine.RemoveEnv(t.Context(), "pr-2", pr2.Number+100, w.progress); !errors.Is(err, store.ErrConflict) {
		t.Errorf("RemoveEnv(pr-2) from a generation not current: %v, want ErrConflict", err)
	}
	res, err = w.engine.RemoveEnv(t.Context(), "pr-2", pr2.Number, w.progress)
	if err != nil {
		t.Fatalf("RemoveEnv(pr-2): %v", err)
	}
	if want := []string{string(own)}; !slices.Equal(res.Stopped, want) {
		t.Errorf("removing pr-2 stopped %v, want %v", res.Stopped, want)
	}
	if got := w.pids(); !maps.Equal(got, prod) {
		t.Errorf("processes after both previews left: %v, want production's %v", got, prod)
	}
	if _, id, _ := w.get("web.test", "/"); id != "web-1" {
		t.Errorf("web.test answered by %q, want web-1", id)
	}
}

// generations returns how many generations the store holds.
func (w *world) generations() int {
	w.t.Helper()
	gens, err := w.store.List(w.t.Context())
	if err != nil {
		w.t.Fatal(err)
	}
	return len(gens)
}

// TestPreviewSleepers: a preview's own instances may sleep after
// previews.idle (10m by default, or a service's shorter idle); the
// instances it shares sleep only as their owner's spec says.
func TestPreviewSleepers(t *testing.T) {
	tests := []struct {
		name     string
		previews *spec.Previews
		webIdle  time.Duration
		want     time.Duration
	}{
		{"default", nil, 0, spec.DefaultPreviewIdle},
		{"previews.idle", &spec.Previews{Idle: spec.Duration(time.Minute)}, 0, time.Minute},
		{"a service's shorter idle", &spec.Previews{Idle: spec.Duration(time.Hour)}, 2 * time.Minute, 2 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			w.mustDeploy(mkSpec(map[string]*spec.Service{"api": app("api-1"), "web": app("web-1", needs("api"))}))
			s := mkSpec(map[string]*spec.Service{"api": app("api-1"), "web": app("web-2", needs("api"))})
			s.Services["web"].Idle = spec.Duration(tt.webIdle)
			s.Previews = tt.previews
			if _, err := w.deployEnv("pr-1", s); err != nil {
				t.Fatalf("deploy --env pr-1: %v", err)
			}
			pr, _ := w.store.Current(t.Context(), "pr-1")
			got, ok := w.node.Follower.Sleepers()
			if !ok {
				t.Fatal("Sleepers: busy after the deploy")
			}
			if len(got) != 1 || got[pr.Instance("web")].Idle != tt.want {
				t.Errorf("Sleepers = %v, want only %s after %s", got, pr.Instance("web"), tt.want)
			}
		})
	}
}
