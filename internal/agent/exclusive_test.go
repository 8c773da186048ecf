package agent

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// exclusiveGens returns two generations of one exclusive service x: the
// old (x-1) and the new (x-2).
func exclusiveGens(t *testing.T) (g1, g2 *spec.Generation) {
	t.Helper()
	x := func(id string) *spec.Service { s := svc(id); s.Exclusive = true; return s }
	return generation(t, spec.DefaultEnv, map[string]*spec.Service{"x": x("x-1")}),
		generation(t, spec.DefaultEnv, map[string]*spec.Service{"x": x("x-2")})
}

// alive reports whether pid is a live process, not a zombie (the test
// process is every app's parent, and may not have reaped it yet).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if pid <= 0 || err != nil {
		return false
	}
	// pid (comm) STATE ...: comm may hold spaces, not ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// appID asks key's immutable name which app answers (X-App).
func appID(t *testing.T, n *sleepyNode, key spec.VersionKey) string {
	t.Helper()
	req, _ := http.NewRequest("GET", n.pub+"/", nil)
	req.Host = string(key) + "." + zone
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.Header.Get("X-App")
}

// TestResumeExclusiveInWindow: a daemon restarted inside a confirm window
// of an exclusive service's deploy (the previous generation desired
// beside the current one, for a switch back) adopts the current version
// and does not start the previous one beside it; the previous version's
// name reaches the running one, as after a handover; a switch back then
// stops the current one before the previous one starts.
func TestResumeExclusiveInWindow(t *testing.T) {
	root := t.TempDir()
	g1, g2 := exclusiveGens(t)
	k1, k2 := g1.Instance("x"), g2.Instance("x")
	first := newSleepyNodeAt(t, root)
	if _, err := first.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g1}}, Options{}, t.Logf); err != nil {
		t.Fatal(err)
	}
	// The deploy of g2: a handover stops x-1, starts x-2.
	if _, err := first.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g1, g2}}, Options{}, t.Logf); err != nil {
		t.Fatal(err)
	}
	pid2 := first.pids()[k2]
	first.sup.Detach() // the daemon dies in the window

	next := newSleepyNodeAt(t, root)
	if _, err := next.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g2, g1}}, Options{Adopt: true}, t.Logf); err != nil {
		t.Fatal(err)
	}
	pids := next.pids()
	if _, ok := pids[k1]; ok || pids[k2] != pid2 {
		t.Fatalf("after the resume: running %v, want only %s adopted (pid %d)", pids, k2, pid2)
	}
	if got := appID(t, next, k1); got != "x-2" {
		t.Errorf("%s's name answered by %q, want the running x-2", k1, got)
	}

	// The switch back: x-2 is stopped before x-1 starts.
	overlap := false
	progress := func(format string, args ...any) {
		if line := fmt.Sprintf(format, args...); strings.HasPrefix(line, "starting "+string(k1)) && alive(pid2) {
			overlap = true
		}
		t.Logf(format, args...)
	}
	if _, err := next.agent.Reconcile(context.Background(), Desired{Generations: []*spec.Generation{g1}}, Options{}, progress); err != nil {
		t.Fatal(err)
	}
	if overlap {
		t.Errorf("%s started while %s (pid %d) still ran", k1, k2, pid2)
	}
	if pids := next.pids(); len(pids) != 1 || pids[k1] == 0 {
		t.Errorf("after the switch back: running %v, want only %s", pids, k1)
	}
}

// TestResumeExclusiveAfterHandoverCrash: a daemon killed in a handover,
// before the commit, leaves the new version running and the old one
// stopped; the next daemon stops the new one before it starts the old
// (current) one, never beside it.
func TestResumeExclusiveAfterHandoverCrash(t *testing.T) {
	root := t.TempDir()
	g1, g2 := exclusiveGens(t)
	k1, k2 := g1.Instance("x"), g2.Instance("x")
	first := newSleepyNodeAt(t, root)
	for _, d := range []Desired{{Generations: []*spec.Generation{g1}}, {Generations: []*spec.Generation{g1, g2}}} {
		if _, err := first.agent.Reconcile(t.Context(), d, Options{}, t.Logf); err != nil {
			t.Fatal(err)
		}
	}
	pid2 := first.pids()[k2]
	first.sup.Detach() // killed before g2 was committed: g1 is current

	next := newSleepyNodeAt(t, root)
	overlap := false
	progress := func(format string, args ...any) {
		if line := fmt.Sprintf(format, args...); strings.HasPrefix(line, "starting "+string(k1)) && alive(pid2) {
			overlap = true
		}
		t.Logf(format, args...)
	}
	if _, err := next.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g1}}, Options{Adopt: true}, progress); err != nil {
		t.Fatal(err)
	}
	if overlap {
		t.Errorf("%s started while %s (pid %d), left running, still ran", k1, k2, pid2)
	}
	if pids := next.pids(); len(pids) != 1 || pids[k1] == 0 || alive(pid2) {
		t.Errorf("after the resume: running %v (x-2's pid %d alive: %v), want only %s", pids, pid2, alive(pid2), k1)
	}
}

// TestExclusiveHandoverHoldsWakes: while a deploy hands an exclusive
// service over from its version asleep to a new one still starting, a
// wake of the old version — what a dependent's wake asks of its needs —
// waits for the handover instead of starting the old version beside the
// new one, and then finds the old name reaching the new version.
func TestExclusiveHandoverHoldsWakes(t *testing.T) {
	n := newSleepyNode(t)
	g1, _ := exclusiveGens(t)
	ready := filepath.Join(t.TempDir(), "ready")
	x2 := svc("x-2")
	x2.Exclusive = true
	x2.Env["AWAIT_FILE"] = ready
	x2.Health.Timeout = spec.Duration(spec.MaxHealthTimeout)
	g2 := generation(t, spec.DefaultEnv, map[string]*spec.Service{"x": x2})
	k1, k2 := g1.Instance("x"), g2.Instance("x")
	n.reconcile(t, Desired{Asleep: callables(g1, "x")}, Options{})

	deployed := make(chan error, 1)
	go func() {
		_, err := n.agent.Reconcile(context.Background(), Desired{Generations: []*spec.Generation{g1, g2}}, Options{}, t.Logf)
		deployed <- err
	}()
	for {
		if _, ok := n.sup.Get(k2); ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	woke := make(chan error, 1)
	go func() { woke <- n.router.Wake(context.Background(), k1) }()
	// The old version must not start while the new one does: look for a
	// while, as long as a wake takes many times over.
	for range 100 {
		if _, ok := n.sup.Get(k1); ok {
			t.Fatalf("%s started while %s, exclusive, was starting", k1, k2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.WriteFile(ready, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-deployed; err != nil {
		t.Fatal(err)
	}
	if err := <-woke; err != nil {
		t.Errorf("the wake held by the handover: %v", err)
	}
	if _, ok := n.sup.Get(k1); ok {
		t.Errorf("%s runs beside %s", k1, k2)
	}
	if got := appID(t, n, k1); got != "x-2" {
		t.Errorf("%s's name answered by %q, want x-2", k1, got)
	}
}

// TestExclusiveHandoverAwaitsWake: a wake of an exclusive service's
// version asleep that began before a deploy's handover — still waking
// the version it needs — ends before the handover goes on, which then
// stops what it started: the old version never runs beside the new one,
// and its name reaches the new one.
func TestExclusiveHandoverAwaitsWake(t *testing.T) {
	n := newSleepyNode(t)
	upReady := filepath.Join(t.TempDir(), "up-ready")
	up := svc("up-1")
	up.Env["AWAIT_FILE"] = upReady
	up.Health.Timeout = spec.Duration(spec.MaxHealthTimeout)
	x := func(id string) *spec.Service { s := svc(id, "up"); s.Exclusive = true; return s }
	g1 := generation(t, spec.DefaultEnv, map[string]*spec.Service{"up": up, "x": x("x-1")})
	g2 := generation(t, spec.DefaultEnv, map[string]*spec.Service{"up": up, "x": x("x-2")})
	k1, k2 := g1.Instance("x"), g2.Instance("x")
	n.reconcile(t, Desired{Asleep: callables(g1, "up", "x")}, Options{})

	woke := make(chan error, 1)
	go func() { woke <- n.router.Wake(context.Background(), k1) }()
	for { // the wake waits for up, which waits for its file
		if _, ok := n.sup.Get(g1.Instance("up")); ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	deployed := make(chan error, 1)
	go func() {
		_, err := n.agent.Reconcile(context.Background(), Desired{Generations: []*spec.Generation{g1, g2}}, Options{}, t.Logf)
		deployed <- err
	}()
	for { // the handover holds x-1's requests
		if sl, _ := n.router.Sleeping(k1); sl.Held {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.WriteFile(upReady, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-deployed; err != nil {
		t.Fatal(err)
	}
	if err := <-woke; err != nil {
		t.Logf("the wake that began before the handover: %v", err)
	}
	if _, ok := n.sup.Get(k1); ok {
		t.Errorf("%s runs beside %s", k1, k2)
	}
	if got := appID(t, n, k1); got != "x-2" {
		t.Errorf("%s's name answered by %q, want x-2", k1, got)
	}
}

// probePreparer calls at with each version it prepares.
type probePreparer struct{ at func(key spec.VersionKey) }

func (p probePreparer) Prepare(_ context.Context, g *spec.Generation, service string, _ *supervisor.Config) error {
	p.at(g.Instance(service))
	return nil
}

// TestExclusivePreparesAfterTheOldStops: a new version of an exclusive
// service is prepared — its release step runs there — only once the old
// version's process has stopped: a migration never runs beside the
// single writer it migrates.
func TestExclusivePreparesAfterTheOldStops(t *testing.T) {
	n := newSleepyNode(t)
	g1, g2 := exclusiveGens(t)
	k2 := g2.Instance("x")
	var oldPID int
	besideOld := false
	n.agent.Use(probePreparer{at: func(key spec.VersionKey) {
		if key == k2 && alive(oldPID) {
			besideOld = true
		}
	}})
	if _, err := n.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g1}}, Options{}, t.Logf); err != nil {
		t.Fatal(err)
	}
	oldPID = n.pids()[g1.Instance("x")]
	if _, err := n.agent.Reconcile(t.Context(), Desired{Generations: []*spec.Generation{g1, g2}}, Options{}, t.Logf); err != nil {
		t.Fatal(err)
	}
	if besideOld {
		t.Errorf("%s was prepared while the old version (pid %d) still ran", k2, oldPID)
	}
	if pids := n.pids(); pids[k2] == 0 || alive(oldPID) {
		t.Errorf("after the handover: running %v, old pid %d alive %v", pids, oldPID, alive(oldPID))
	}
}
