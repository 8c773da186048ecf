package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"hostel/internal/idle"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

const zone = "hostel.internal"

// sleepyNode is a node whose router wakes versions through an
// idle.Sleeper the agent registers versions asleep with.
type sleepyNode struct {
	node
	sleeper *idle.Sleeper
	pub     string
	policy  map[spec.VersionKey]idle.Policy
}

func newSleepyNode(t *testing.T) *sleepyNode {
	t.Helper()
	return newSleepyNodeAt(t, t.TempDir())
}

// newSleepyNodeAt is newSleepyNode on root: the next daemon of a node
// that ran there.
func newSleepyNodeAt(t *testing.T, root string) *sleepyNode {
	t.Helper()
	n := &sleepyNode{policy: map[spec.VersionKey]idle.Policy{}}
	n.sup = supervisor.New(supervisor.Options{Root: root, Logf: t.Logf})
	n.router = router.New(router.Options{Zone: zone, Logf: t.Logf, Waker: wakeVia{n},
		Internal: func(a netip.Addr) bool { return a.IsLoopback() }})
	// The catalog is read by Check only, called by the test goroutine.
	n.sleeper = idle.New(n.sup, n.router, func() (map[spec.VersionKey]idle.Policy, bool) { return n.policy, true }, t.Logf)
	n.agent = New(n.sup, n.router)
	n.agent.SetSleeper(n.sleeper)
	n.agent.SetAsleep(func(k spec.VersionKey) bool { sl, _ := n.router.Sleeping(k); return sl.Asleep })
	if err := n.router.Swap(router.Table{Zone: zone}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: n.router}
	go srv.Serve(l)
	n.pub = "http://" + l.Addr().String()
	t.Cleanup(func() {
		srv.Close()
		n.agent.StopAll(context.Background())
		n.router.Close()
	})
	return n
}

// wakeVia breaks the cycle between the router (made first) and the Sleeper.
type wakeVia struct{ n *sleepyNode }

func (w wakeVia) Wake(ctx context.Context, key spec.VersionKey) (string, error) {
	return w.n.sleeper.Wake(ctx, key)
}

// get sends GET path to key's immutable name.
func (n *sleepyNode) get(t *testing.T, key spec.VersionKey, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", n.pub+path, nil)
	req.Host = string(key) + "." + zone // production's instance key is its immutable name
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRegisterAsleep: versions registered asleep have no process; a
// request to the dependent's immutable name starts it, with the
// <NEED>_URL of an endpoint opened at registration, and the version it
// needs is reached through that endpoint; an idle version goes back to
// sleep; unregistered, neither has a backend, an endpoint or a sleeper
// entry, and no process is left.
func TestRegisterAsleep(t *testing.T) {
	n := newSleepyNode(t)
	g := generation(t, spec.DefaultEnv, map[string]*spec.Service{"upstream": svc("upstream-1"), "api": svc("api-1", "upstream")})
	up, api := g.Instance("upstream"), g.Instance("api")
	for _, name := range []string{"upstream", "api"} {
		if err := n.agent.RegisterAsleep(t.Context(), g, name, t.Logf); err != nil {
			t.Fatal(err)
		}
	}
	if l := n.sup.List(); len(l) != 0 {
		t.Fatalf("processes of versions registered asleep: %+v", l)
	}
	// Registered asleep, they are running versions: a reconcile to their
	// generation starts nothing.
	rep := n.reconcile(t, Desired{Generations: []*spec.Generation{g}}, Options{})
	if len(rep.Started) != 0 || len(n.sup.List()) != 0 {
		t.Fatalf("reconcile after RegisterAsleep started %v; processes %+v", rep.Started, n.sup.List())
	}

	if code, body := n.get(t, api, "/call"); code != 200 || body != "upstream-1" {
		t.Fatalf("first request to %s: %d %q, want 200 %q through its UPSTREAM_URL", api, code, body, "upstream-1")
	}
	inst, ok := n.sup.Get(api)
	if !ok {
		t.Fatalf("%s has no process after its wake", api)
	}
	endpoint, err := url.Parse(inst.Config().Env["UPSTREAM_URL"])
	if err != nil || endpoint.Host == "" {
		t.Fatalf("UPSTREAM_URL %q: %v", inst.Config().Env["UPSTREAM_URL"], err)
	}

	// Idle: back to sleep, its process gone.
	n.policy[api] = idle.Policy{Idle: time.Nanosecond}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n.sleeper.Check()
		if _, ok := n.sup.Get(api); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still runs 15s after going idle", api)
		}
	}
	if sl, _ := n.router.Sleeping(api); !sl.Asleep {
		t.Fatalf("%s after idle: %+v, want asleep", api, sl)
	}
	delete(n.policy, api)

	for _, k := range []spec.VersionKey{api, up} {
		n.agent.Unregister(t.Context(), k, t.Logf)
		if _, ok := n.router.Sleeping(k); ok {
			t.Errorf("%s: backend still registered after Unregister", k)
		}
		if _, err := n.sleeper.Wake(t.Context(), k); !errors.Is(err, idle.ErrNotAsleep) {
			t.Errorf("%s: Wake after Unregister: %v, want ErrNotAsleep", k, err)
		}
	}
	if c, err := net.DialTimeout("tcp", endpoint.Host, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("the endpoint %s still accepts after Unregister", endpoint.Host)
	}
	if l := n.sup.List(); len(l) != 0 {
		t.Errorf("processes left after Unregister: %+v", l)
	}
	if r := n.agent.Running(); len(r) != 0 {
		t.Errorf("the agent still runs %v", r)
	}
}

// TestRegisterAsleepNeedsSleeper: an agent given no Sleeper refuses to
// register a version asleep, and registers nothing.
func TestRegisterAsleepNeedsSleeper(t *testing.T) {
	n := newNode(t, t.TempDir())
	g := generation(t, spec.DefaultEnv, map[string]*spec.Service{"api": svc("api-1")})
	err := n.agent.RegisterAsleep(t.Context(), g, "api", t.Logf)
	if !errors.Is(err, ErrNoSleeper) {
		t.Fatalf("RegisterAsleep without a Sleeper: %v, want ErrNoSleeper", err)
	}
	if _, ok := n.router.Sleeping(g.Instance("api")); ok || len(n.agent.Running()) != 0 {
		t.Error("something was registered")
	}
}

// callables lists g's services as versions to keep callable, in order.
func callables(g *spec.Generation, names ...string) []Callable {
	var out []Callable
	for _, n := range names {
		out = append(out, Callable{Generation: g, Service: n})
	}
	return out
}

// TestReconcileAsleep: versions Desired.Asleep names are held (Keys),
// registered asleep without a process, and woken by a request to their
// name; reconciling again changes nothing; no longer desired, they are
// unregistered: no backend, no sleeper entry, no process.
func TestReconcileAsleep(t *testing.T) {
	n := newSleepyNode(t)
	g := generation(t, spec.DefaultEnv, map[string]*spec.Service{"upstream": svc("upstream-1"), "api": svc("api-1", "upstream")})
	up, api := g.Instance("upstream"), g.Instance("api")
	d := Desired{Asleep: callables(g, "upstream", "api")}
	if keys := d.Keys(); !keys[up] || !keys[api] || len(keys) != 2 {
		t.Fatalf("Keys %v, want %s and %s", keys, up, api)
	}
	rep := n.reconcile(t, d, Options{})
	if want := []string{string(api), string(up)}; !slices.Equal(rep.Asleep, want) || len(rep.Started) != 0 {
		t.Fatalf("registered asleep %v and started %v, want %v and none", rep.Asleep, rep.Started, want)
	}
	if l := n.sup.List(); len(l) != 0 {
		t.Fatalf("processes of versions registered asleep: %+v", l)
	}
	for _, k := range []spec.VersionKey{up, api} {
		if sl, ok := n.router.Sleeping(k); !ok || !sl.Asleep {
			t.Errorf("%s: %+v %v, want routed asleep", k, sl, ok)
		}
	}
	if code, body := n.get(t, api, "/call"); code != 200 || body != "upstream-1" {
		t.Fatalf("request to %s: %d %q, want 200 %q", api, code, body, "upstream-1")
	}

	rep = n.reconcile(t, d, Options{})
	if len(rep.Asleep)+len(rep.Started)+len(rep.Stopped) != 0 {
		t.Errorf("reconciling again: %+v, want nothing done", rep)
	}

	rep = n.reconcile(t, Desired{}, Options{})
	if len(rep.Stopped) != 2 {
		t.Errorf("stopped %v, want both", rep.Stopped)
	}
	for _, k := range []spec.VersionKey{up, api} {
		if _, ok := n.router.Sleeping(k); ok {
			t.Errorf("%s: still routed", k)
		}
		if _, err := n.sleeper.Wake(t.Context(), k); !errors.Is(err, idle.ErrNotAsleep) {
			t.Errorf("%s: Wake after it went: %v, want ErrNotAsleep", k, err)
		}
	}
	if l := n.sup.List(); len(l) != 0 {
		t.Errorf("processes left: %+v", l)
	}
}

// TestReconcileAsleepOnResume: after a daemon restart (Options.Adopt), a
// version Desired.Asleep names whose process the previous daemon left
// running is adopted (same pid), and one a generation holds whose process
// is gone is registered asleep rather than started; on a deploy (no
// Adopt) a generation's version is started though Asleep names it too.
func TestReconcileAsleepOnResume(t *testing.T) {
	root := t.TempDir()
	first := newNode(t, root)
	old := generation(t, spec.DefaultEnv, map[string]*spec.Service{"api": svc("api-1")})
	cur := generation(t, spec.DefaultEnv, map[string]*spec.Service{"api": svc("api-2"), "wiki": svc("wiki-1")})
	first.reconcile(t, Desired{Generations: []*spec.Generation{old, cur}}, Options{})
	left := first.pids()
	wiki := cur.Instance("wiki")
	// wiki slept when the daemon went: no process.
	if err := first.sup.Stop(t.Context(), wiki); err != nil {
		t.Fatal(err)
	}
	first.sup.Detach()
	first.router.Close()
	first.agent = New(first.sup, first.router)

	next := newSleepyNodeAt(t, root)
	d := Desired{Generations: []*spec.Generation{cur}, Asleep: append(callables(cur, "wiki"), callables(old, "api")...)}
	rep := next.reconcile(t, d, Options{Adopt: true})
	if want := []string{string(wiki)}; !slices.Equal(rep.Asleep, want) {
		t.Errorf("registered asleep %v, want %v", rep.Asleep, want)
	}
	got := next.pids()
	if _, ok := got[wiki]; ok {
		t.Errorf("%s, asleep when the daemon stopped, was started", wiki)
	}
	for _, k := range []spec.VersionKey{old.Instance("api"), cur.Instance("api")} {
		if got[k] == 0 || got[k] != left[k] {
			t.Errorf("%s: pid %d, was %d: not adopted", k, got[k], left[k])
		}
	}
	if code, body := next.get(t, wiki, "/"); code != 200 || body != "wiki-1" {
		t.Errorf("request to %s: %d %q, want it woken", wiki, code, body)
	}

	// A deploy: start wins.
	deploy := newSleepyNode(t)
	rep = deploy.reconcile(t, Desired{Generations: []*spec.Generation{cur}, Asleep: callables(cur, "wiki")}, Options{})
	if _, ok := deploy.pids()[wiki]; !ok || len(rep.Asleep) != 0 {
		t.Errorf("on a deploy: registered asleep %v, running %v; want %s started", rep.Asleep, deploy.pids(), wiki)
	}
}

// failingPreparer fails every preparation of one service.
type failingPreparer struct{ service string }

func (p failingPreparer) Prepare(_ context.Context, _ *spec.Generation, service string, _ *supervisor.Config) error {
	if service == p.service {
		return errors.New("no database for it")
	}
	return nil
}

// TestReconcileAsleepFailureFailsNothing: a version of Desired.Asleep
// that cannot be registered is left out and reported; the generations'
// versions start and the Reconcile succeeds.
func TestReconcileAsleepFailureFailsNothing(t *testing.T) {
	n := newSleepyNode(t)
	n.agent.Use(failingPreparer{service: "old"})
	g := generation(t, spec.DefaultEnv, map[string]*spec.Service{"api": svc("api-1")})
	old := generation(t, spec.DefaultEnv, map[string]*spec.Service{"old": svc("old-1")})
	var lines []string
	rep, err := n.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g}, Asleep: callables(old, "old")}, Options{},
		func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) })
	if err != nil {
		t.Fatalf("Reconcile failed for a version kept asleep: %v", err)
	}
	if _, ok := n.pids()[g.Instance("api")]; !ok || len(rep.Asleep) != 0 {
		t.Errorf("running %v, registered asleep %v; want api running, nothing asleep", n.pids(), rep.Asleep)
	}
	if _, ok := n.router.Sleeping(old.Instance("old")); ok {
		t.Error("the version that failed to register is routed")
	}
	if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "no database for it") }) {
		t.Errorf("the failure is not reported: %q", lines)
	}
}

// TestResumeAsleepNeedingAwake: after a daemon restart, a version that
// slept and needs a version that does not sleep is registered asleep
// again — not started — though its need is adopted only after: its first
// request wakes it, and it reaches its need through its <NEED>_URL.
func TestResumeAsleepNeedingAwake(t *testing.T) {
	root := t.TempDir()
	first := newNode(t, root)
	cur := generation(t, spec.DefaultEnv, map[string]*spec.Service{"upstream": svc("upstream-1"), "api": svc("api-1", "upstream")})
	up, api := cur.Instance("upstream"), cur.Instance("api")
	first.reconcile(t, Desired{Generations: []*spec.Generation{cur}}, Options{})
	left := first.pids()
	// api slept when the daemon went: no process.
	if err := first.sup.Stop(t.Context(), api); err != nil {
		t.Fatal(err)
	}
	first.sup.Detach()
	first.router.Close()
	first.agent = New(first.sup, first.router)

	next := newSleepyNodeAt(t, root)
	var lines []string
	rep, err := next.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{cur}, Asleep: callables(cur, "api")}, Options{Adopt: true},
		func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) })
	if err != nil {
		t.Fatalf("resume: %v\n%s", err, strings.Join(lines, "\n"))
	}
	if want := []string{string(api)}; !slices.Equal(rep.Asleep, want) {
		t.Errorf("registered asleep %v, want %v", rep.Asleep, want)
	}
	got := next.pids()
	if _, ok := got[api]; ok {
		t.Errorf("%s, asleep when the daemon stopped, was started", api)
	}
	if got[up] == 0 || got[up] != left[up] {
		t.Errorf("%s: pid %d, was %d: not adopted", up, got[up], left[up])
	}
	if code, body := next.get(t, api, "/call"); code != 200 || body != "upstream-1" {
		t.Errorf("request to %s: %d %q, want it woken, answering through upstream-1", api, code, body)
	}
}
