package deploy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"hostel/internal/spec"
)

var appBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hostel-deploy-app-")
	if err != nil {
		panic(err)
	}
	appBin = filepath.Join(dir, "app")
	if out, err := exec.Command("go", "build", "-o", appBin, "./testdata/app").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building test app: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func (w *world) progress(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, fmt.Sprintf(format, args...))
}

// index returns the position of the first progress line with prefix, or -1.
func (w *world) index(prefix string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.IndexFunc(w.lines, func(l string) bool { return strings.HasPrefix(l, prefix) })
}

func (w *world) deploy(s *spec.Spec, confirm time.Duration) (*Result, error) {
	w.t.Helper()
	return w.engine.Deploy(context.Background(), Request{Source: "test.json", Spec: s, Confirm: confirm}, w.progress)
}

// deployOutcome is what a deploy run in the background returned.
type deployOutcome struct {
	res *Result
	err error
}

// deployInWindow deploys s with a confirm window of confirm in the
// background and returns once the window is open; the deploy's outcome
// arrives on the channel.
func (w *world) deployInWindow(s *spec.Spec, confirm time.Duration) <-chan deployOutcome {
	w.t.Helper()
	deployed := make(chan deployOutcome, 1)
	go func() {
		res, err := w.deploy(s, confirm)
		deployed <- deployOutcome{res, err}
	}()
	waitFor(w.t, 30*time.Second, "the confirm window to open", func() bool { return w.index("confirming for") >= 0 })
	return deployed
}

func (w *world) mustDeploy(s *spec.Spec) *Result {
	w.t.Helper()
	res, err := w.deploy(s, 0)
	if err != nil {
		w.t.Fatalf("deploy: %v\n%s", err, strings.Join(w.lines, "\n"))
	}
	return res
}

func (w *world) get(host, path string) (int, string, string) {
	w.t.Helper()
	req, _ := http.NewRequest("GET", w.front.URL+path, nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-App"), string(b)
}

type svcOpt func(*spec.Service)

func app(id string, opts ...svcOpt) *spec.Service {
	s := &spec.Service{Exec: []string{appBin}, Env: map[string]string{"APP_ID": id},
		Health: &spec.Health{Path: "/healthz", Timeout: spec.Duration(5 * time.Second)}, StopGrace: spec.Duration(3 * time.Second)}
	for _, o := range opts {
		o(s)
	}
	return s
}

func needs(n ...string) svcOpt   { return func(s *spec.Service) { s.Needs = n } }
func domains(d ...string) svcOpt { return func(s *spec.Service) { s.Domains = d } }
func env(k, v string) svcOpt     { return func(s *spec.Service) { s.Env[k] = v } }

// healthEvery has the supervisor check the version's health every d,
// failures in a row making it unhealthy.
func healthEvery(d time.Duration, failures int) svcOpt {
	return func(s *spec.Service) { s.Health.Interval, s.Health.Failures = spec.Duration(d), &failures }
}
func mkSpec(svcs map[string]*spec.Service) *spec.Spec { return &spec.Spec{Services: svcs} }

// TestOrder: new versions start dependencies first; old ones stop topmost first.
func TestOrder(t *testing.T) {
	w := newWorld(t)
	gen := func(id string) *spec.Spec {
		return mkSpec(map[string]*spec.Service{
			"db":  app("db-" + id),
			"api": app("api-"+id, needs("db")),
			"web": app("web-"+id, needs("api"), domains("web.test")),
		})
	}
	r1 := w.mustDeploy(gen("1"))
	v1 := r1.Plan.Versions
	r2 := w.mustDeploy(gen("2"))
	v2 := r2.Plan.Versions
	if len(r2.Started) != 3 || len(r2.Stopped) != 3 {
		t.Fatalf("second deploy started %v, stopped %v", r2.Started, r2.Stopped)
	}
	start := func(n string, v map[string]spec.Version) int { return w.index("starting " + string(spec.Key(n, v[n]))) }
	stop := func(n string) int { return w.index("stopped " + string(spec.Key(n, v1[n]))) }
	if !(start("db", v2) < start("api", v2) && start("api", v2) < start("web", v2)) {
		t.Errorf("start order wrong:\n%s", strings.Join(w.lines, "\n"))
	}
	if !(stop("web") < stop("api") && stop("api") < stop("db")) || stop("db") < 0 {
		t.Errorf("stop order wrong (want web, api, db):\n%s", strings.Join(w.lines, "\n"))
	}
	if code, id, _ := w.get("web.test", "/"); code != 200 || id != "web-2" {
		t.Errorf("web.test answered %d from %q", code, id)
	}
	// What will start is said before the wait for it (a watcher sees a
	// slow start coming), and before the switch.
	want := "to start: " + string(spec.Key("api", v1["api"])) + ", " + string(spec.Key("db", v1["db"])) + ", " + string(spec.Key("web", v1["web"]))
	if i := w.index(want); i < 0 || i > w.index("started ") || i > w.index("switched") {
		t.Errorf("no %q before the first deploy's start and switch:\n%s", want, strings.Join(w.lines, "\n"))
	}
}

// TestDrainWaitsForInFlight: a request accepted by the old version finishes
// there, and the old process stops only after it.
func TestDrainWaitsForInFlight(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("old", domains("web.test"))}))
	type answer struct {
		code int
		id   string
		at   time.Time
	}
	done := make(chan answer)
	go func() {
		code, id, _ := w.get("web.test", "/slow?d=1500ms")
		done <- answer{code, id, time.Now()}
	}()
	time.Sleep(200 * time.Millisecond) // the slow request is in flight
	res := w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("new", domains("web.test"))}))
	deployed := time.Now()
	a := <-done
	if a.code != 200 || a.id != "old" {
		t.Fatalf("in-flight request: %d from %q, want 200 from old", a.code, a.id)
	}
	if deployed.Before(a.at) {
		t.Errorf("deploy returned (stopped the old version) %s before the in-flight request finished", a.at.Sub(deployed))
	}
	if len(res.Stopped) != 1 {
		t.Errorf("stopped %v\n%s", res.Stopped, strings.Join(w.lines, "\n"))
	}
	if _, id, _ := w.get("web.test", "/"); id != "new" {
		t.Errorf("after deploy, web.test is served by %q", id)
	}
}

// TestFailedStartChangesNothing: a version that never gets ready fails the
// deploy before the switch; what ran keeps running and serving.
func TestFailedStartChangesNothing(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{
		"api": app("api-1"),
		"web": app("web-1", needs("api"), domains("web.test")),
	}))
	before := w.sup.List()
	_, err := w.deploy(mkSpec(map[string]*spec.Service{
		"api": app("api-2", env("CRASH", "1")),
		"web": app("web-1", needs("api"), domains("web.test")),
	}), 0)
	if err == nil || !strings.Contains(err.Error(), `service "api"`) {
		t.Fatalf("deploy of a crashing version: %v", err)
	}
	cur, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	if cur.Number != 1 {
		t.Errorf("current generation %d after a failed deploy", cur.Number)
	}
	after := w.sup.List()
	if len(after) != len(before) {
		t.Errorf("processes before %d, after %d", len(before), len(after))
	}
	for i := range after {
		if after[i].PID != before[i].PID {
			t.Errorf("%s restarted", after[i].Key)
		}
	}
	if code, id, _ := w.get("web.test", "/"); code != 200 || id != "web-1" {
		t.Errorf("web.test: %d from %q", code, id)
	}
}

// TestConfirmRollsBack: a new version that turns unhealthy within the
// confirm window brings the previous generation back by itself.
func TestConfirmRollsBack(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("good", domains("web.test"))}))
	res, err := w.deploy(mkSpec(map[string]*spec.Service{"web": app("bad", domains("web.test"), env("UNHEALTHY_AFTER", "300ms"), healthEvery(100*time.Millisecond, 3))}), 3*time.Second)
	if err == nil || !strings.Contains(err.Error(), "rolled back to generation 1") {
		t.Fatalf("deploy of a version that turns sick: %v", err)
	}
	if !res.RolledBack {
		t.Error("result does not say rolled back")
	}
	cur, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	if cur.Number != 1 {
		t.Errorf("current generation %d, want 1", cur.Number)
	}
	if _, id, _ := w.get("web.test", "/"); id != "good" {
		t.Errorf("web.test served by %q after rollback", id)
	}
	if n := len(w.sup.List()); n != 1 {
		t.Errorf("%d processes run, want 1 (the bad version stopped)", n)
	}
	// A healthy deploy passes the same window.
	if _, err := w.deploy(mkSpec(map[string]*spec.Service{"web": app("better", domains("web.test"))}), time.Second); err != nil {
		t.Fatalf("healthy deploy: %v", err)
	}
	if _, id, _ := w.get("web.test", "/"); id != "better" {
		t.Errorf("web.test served by %q", id)
	}
}

// TestNeedURL: a dependent reaches exactly the version it was built against,
// through the router, even while a newer version of what it needs exists.
func TestNeedURL(t *testing.T) {
	w := newWorld(t)
	w.mustDeploy(mkSpec(map[string]*spec.Service{
		"api": app("api-1"),
		"web": app("web-1", needs("api"), domains("web.test")),
	}))
	// A newer api in the next generation does not move web-1's API_URL...
	// but web changes with it (Merkle), so check the URL of the current web.
	w.mustDeploy(mkSpec(map[string]*spec.Service{
		"api": app("api-2"),
		"web": app("web-1", needs("api"), domains("web.test")),
	}))
	cur, _ := w.store.Current(t.Context(), spec.DefaultEnv)
	inst, ok := w.sup.Get(spec.Key("web", cur.Versions["web"]))
	if !ok {
		t.Fatal("web not running")
	}
	url := inst.Config().Env["API_URL"]
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("API_URL = %q", url)
	}
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "api-2" {
		t.Errorf("API_URL reached %q, want api-2", b)
	}
	apiKey := spec.Key("api", cur.Versions["api"])
	if n := w.router.InFlight(apiKey); n != 0 {
		t.Errorf("in flight after the call: %d", n)
	}
}

// TestDrainGraceEnds504: a request still running at the old version's stop
// grace is ended with 504 and the deploy counts it.
func TestDrainGraceEnds504(t *testing.T) {
	w := newWorld(t)
	short := func(s *spec.Service) { s.StopGrace = spec.Duration(spec.MinGrace) }
	w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("old", domains("web.test"), short)}))
	done := make(chan int)
	go func() {
		code, _, _ := w.get("web.test", "/slow?d=10s")
		done <- code
	}()
	time.Sleep(200 * time.Millisecond)
	t0 := time.Now()
	res := w.mustDeploy(mkSpec(map[string]*spec.Service{"web": app("new", domains("web.test"), short)}))
	if code := <-done; code != http.StatusGatewayTimeout {
		t.Errorf("request past the stop grace got %d, want 504", code)
	}
	if res.Aborted != 1 {
		t.Errorf("deploy reports %d aborted requests, want 1", res.Aborted)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("deploy took %s: the grace did not bound the drain", d)
	}
}
