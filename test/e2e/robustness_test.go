package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"hostel/internal/failpoint"
	"hostel/internal/nix"
)

var chaos = flag.Bool("chaos", false, "TestRobustness: every store failpoint with every action on both stores (make chaos), not the short sample")

// TestRobustness injects faults into a real daemon — on bbolt and on an
// etcd member of its own (--etcd-embed) — while a service mix answers
// light traffic: for a failpoint and an action (kill: SIGKILL at the
// line; error: the step fails there — for the store's writes, before the
// change is made, or after, the caller never learning that it was), it
// arms the point in a daemon, runs the operation that reaches it
// (deploy, rollback, a confirm window, pause, gc, env rm), starts the
// daemon again without it and checks what must hold whatever happened:
// no generation lost or half applied; the current generation one the CLI
// was told of, or the one the operation was going to; exactly its
// versions running, each once, and nothing else of the root: no GC root
// but those of kept generations' versions (and all of those), no
// credential file but those of running instances; every domain
// answering from it; every answer the traffic got a 200 from a version
// some generation held. Then a deploy goes through, checked the same
// way. docs/failpoints.md lists the points.
//
// `make test` runs a sample: an operation of each kind under a store
// fault, spread over the two stores, a failed switch, a kill with
// credentials written and an ambiguous gc. `make chaos` (-chaos) runs every
// point of the catalogue with each of kill and error it takes, on both.
func TestRobustness(t *testing.T) {
	sample := map[string]bool{
		"bbolt/store-after-commit=kill":        true,
		"bbolt/store-before-set-current=error": true,
		"bbolt/store-after-txn=error":          true,
		"etcd/store-after-commit=error":        true,
		"etcd/store-after-set-confirm=kill":    true,
		"etcd/store-before-drop-env=kill":      true,
		"etcd/router-before-swap=error":        true,
		"bbolt/credentials-after-write=kill":   true,
		"etcd/store-after-delete=error":        true,
	}
	stores := []struct {
		name string
		args []string
	}{
		{"bbolt", nil},
		{"etcd", []string{"--etcd-embed"}},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			for _, p := range failpoint.Catalogue() {
				op, skip, why := reaching(p.Name)
				if op == nil && why == "" {
					t.Errorf("%s: no operation of this test reaches it: say which in reach (or why none in unreached)", p.Name)
					continue
				}
				for _, action := range []failpoint.Action{failpoint.Kill, failpoint.Error} {
					name := p.Name + "=" + action.String()
					if p.Actions&action == 0 || !*chaos && !sample[st.name+"/"+name] {
						continue
					}
					t.Run(name, func(t *testing.T) {
						if op == nil {
							t.Skip(why)
						}
						newRobust(t, st.args).run(*op, p.Name, skip, action.String())
					})
				}
			}
		})
	}
}

// reach names the operation that reaches each failpoint outside the
// store (whose store-before-WRITE and store-after-WRITE are reached by
// the operation of that write), and how many times the daemon passes it
// after it is armed before it fires.
var reach = map[string]struct {
	op   string
	skip int
}{
	"router-before-swap":              {"deploy", 0},
	"launch-before-start":             {"deploy", 0},
	"launch-after-start":              {"deploy", 0},
	"launch-after-record":             {"deploy", 0},
	"supervisor-before-record":        {"deploy", 0},
	"supervisor-before-record-remove": {"deploy", 0},
	"atomicfile-before-rename":        {"deploy", 0},
	"atomicfile-after-rename":         {"deploy", 0},
	"env-rm-after-drop":               {"env-rm", 0},
	"env-rm-before-certs":             {"env-rm", 0},
	"engine-before-desired":           {"deploy", 0},
	"engine-before-commit":            {"deploy", 0},
	"engine-after-commit":             {"deploy", 0},
	"node-before-reconcile":           {"deploy", 0},
	"node-before-report":              {"deploy", 0},
	"store-watch-deliver":             {"deploy", 0},
	"credentials-after-write":         {"deploy", 0},
	"gcroots-before-pin":              {"deploy", 0},
	"gcroots-after-pin":               {"deploy", 0},
	"gcroots-before-prune":            {"gc", 0},
}

// unreached are the failpoints no operation of this test reaches, and
// why.
var unreached = map[string]string{
	"store-lease-keepalive":   "a node whose lease is lost is the cluster's failure half: the daemon says so; the engine's side is TestFleetNodeDies",
	"release-claimed":         "the service mix has no release step (TestReleaseCrashRestart)",
	"release-ran":             "the service mix has no release step (TestReleaseCrashRestart)",
	"api-socket-bound":        "it is in the daemon's start (TestAPISocketBornPrivate)",
	"holder-after-spawn":      "it is in the daemon's start (TestKilledWhileHolderStarts)",
	"store-before-load-batch": "it is in the first start on etcd, moving bbolt's state (TestMoveToEtcdCutShort)",
	"node-after-campaign":     "it is in the daemon's start (TestKilledAfterCampaign)",
	"db-before-provision":     "the service mix has no database (TestDatabaseProvisionCutShort)",
	"db-after-provision":      "the service mix has no database (TestDatabaseProvisionCutShort)",
	"acme-before-store":       "the service mix has no certificate (TestFailpointStoreCert, internal/acme)",
}

// reaching returns the operation that reaches point and how many times
// the armed daemon passes it before, or why none does.
func reaching(point string) (op *robustOp, skip int, why string) {
	name := reach[point].op
	skip = reach[point].skip
	if rest, ok := strings.CutPrefix(point, "store-"); ok {
		_, write, _ := strings.Cut(rest, "-")
		for _, o := range robustOps {
			if o.write == write {
				name = o.name
			}
		}
	}
	for i := range robustOps {
		if robustOps[i].name == name {
			return &robustOps[i], skip, ""
		}
	}
	return nil, 0, unreached[point]
}

// robustOp is an operation of the robustness test.
type robustOp struct {
	name string
	// write is the store write it reaches: its failpoints are
	// store-before-WRITE and store-after-WRITE.
	write string
	// setup readies the deployment, on a daemon without failpoints.
	setup func(r *robust)
	// run runs the operation with the CLI, on the armed daemon, and
	// returns its exit code.
	run func(r *robust) int
	// settle checks, on the next daemon (without failpoints), what the
	// operation must have left given the CLI's exit code, before the
	// common checks; the current generation before it ran was before.
	settle func(r *robust, code int, before uint64)
}

var robustOps = []robustOp{
	{name: "deploy", write: "commit",
		run: func(r *robust) int { return r.deploy("", "--no-confirm") },
		settle: func(r *robust, code int, before uint64) {
			r.currentIs(code, before, r.doubt)
			// A generation is stored and made current in one step.
			cur, gens := r.generations("")
			for n, g := range gens {
				if g.SpecHash == r.doubt && n != cur.Number {
					r.t.Errorf("generation %d of the deploy is stored, but %d is current", n, cur.Number)
				}
			}
		}},
	{name: "rollback", write: "set-current",
		setup: func(r *robust) { r.mustDeploy("") },
		run: func(r *robust) int {
			_, _, code := r.e.Run("rollback")
			return code
		},
		settle: func(r *robust, code int, before uint64) {
			r.currentIs(code, before, r.hashOf(before-1))
		}},
	{name: "confirm", write: "set-confirm",
		// The window's end (confirmed) is what SetConfirm records; the
		// next daemon finishes a window left pending.
		run: func(r *robust) int { return r.deploy("", "--confirm", "1s") },
		settle: func(r *robust, code int, before uint64) {
			eventually(r.t, 30*time.Second, "the confirm window to end", func() bool {
				cur, _ := r.generations("")
				return cur.Confirmation != "pending"
			})
			cur, _ := r.generations("")
			if cur.SpecHash != r.doubt || cur.Confirmation != "confirmed" {
				r.t.Errorf("after the window: generation %d (%s, %s) current, want the new one confirmed", cur.Number, cur.SpecHash, cur.Confirmation)
			}
		}},
	{name: "pause", write: "txn",
		run: func(r *robust) int {
			_, _, code := r.e.Run("pause", "wiki")
			return code
		},
		settle: func(r *robust, code int, before uint64) {
			_, svcs := r.e.Status()
			paused := strings.Contains(r.e.MustRun("status", "wiki"), "paused")
			if code == 0 && !paused {
				r.t.Errorf("pause went through, but wiki is not paused after the restart: %+v", svcs["wiki"])
			}
			if paused {
				r.e.MustRun("resume", "wiki")
			}
			r.currentIs(code, before, "")
		}},
	{name: "gc", write: "delete",
		setup: func(r *robust) { r.mustDeploy("") },
		run: func(r *robust) int {
			r.mayBeGone = map[uint64]bool{1: true}
			_, _, code := r.e.Run("gc", "--keep", "1")
			return code
		},
		settle: func(r *robust, code int, before uint64) {
			if _, gens := r.generations(""); code == 0 && gens[1].Number != 0 {
				r.t.Errorf("gc --keep 1 went through, but generation 1 is still there")
			}
			r.currentIs(code, before, "")
		}},
	{name: "env-rm", write: "drop-env",
		setup: func(r *robust) { r.mustDeploy("pr") },
		run: func(r *robust) int {
			_, gens := r.generations("pr")
			for n := range gens {
				r.mayBeGone[n] = true
			}
			_, _, code := r.e.Run("env", "rm", "pr")
			return code
		},
		settle: func(r *robust, code int, before uint64) {
			if _, gens := r.generations("pr"); code == 0 && len(gens) > 0 {
				r.t.Errorf("env rm went through, but environment pr has generations %v", slices.Sorted(maps.Keys(gens)))
			}
			r.currentIs(code, before, "")
		}},
}

// robust is one run of TestRobustness: a daemon on its own root, its
// history as the CLI saw it, and traffic.
type robust struct {
	t *testing.T
	e *Env
	// listen is serve's flags: a fixed port, so that the traffic reaches
	// every daemon of the run.
	listen []string
	// deploys counts the deploys, each of a spec of its own.
	deploys int
	// planned are the versions each spec plans, by spec hash: what a whole
	// generation of it holds.
	planned map[string]map[string]string
	// committed are the generations the CLI was told were committed, or
	// that the store showed since, with their spec hash.
	committed map[uint64]string
	// doubt is the spec hash of the deploy under the fault: its
	// generation may or may not be there.
	doubt string
	// mayBeGone are the generations the operation under the fault may
	// have removed.
	mayBeGone map[uint64]bool
	traffic   *load
	// store is the Nix store path shop names.
	store string
	// rootsMayLinger lets GC roots no generation holds stay: after a
	// removal of roots that failed.
	rootsMayLinger bool
}

func newRobust(t *testing.T, storeArgs []string) *robust {
	e := newShortEnv(t)
	r := &robust{t: t, e: e, planned: map[string]map[string]string{}, committed: map[uint64]string{}, mayBeGone: map[uint64]bool{},
		listen: append([]string{"--http", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--https", ""}, storeArgs...)}
	e.StartDaemonArgs(r.listen...)
	r.store = robustStorePath(t)
	t.Cleanup(func() { nix.RootsFor(e.Root).RemoveAll() }) // the roots outlive the root
	writeSecret(t, e, "token", "robust-"+t.Name())
	r.mustDeploy("")
	r.traffic = startLoad(e.HTTP, "blog.example", "shop.example")
	t.Cleanup(r.traffic.stop)
	return r
}

// newShortEnv is NewEnv with a root of a short name: the root's unix
// sockets (a service's NOTIFY_SOCKET) must fit in 108 bytes, which a root
// named after a test's long name would not.
func newShortEnv(t *testing.T) *Env {
	t.Helper()
	e := NewEnv(t)
	base, err := os.MkdirTemp("", "robust-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	e.Root, e.Dir = filepath.Join(base, "root"), filepath.Join(base, "repo")
	if err := os.Mkdir(e.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

// robustSpec is the service mix: quotes, which blog needs; blog and
// shop, whose domains the traffic asks; wiki, which never changes. Each
// deploy changes quotes, blog and shop. shop has a secret (credential
// files while it runs) and names a Nix store path (GC roots while a
// generation keeps it): robustStorePath's, when store is not "".
func robustSpec(e *Env, n int, store string) map[string]any {
	health := map[string]any{"path": "/healthz"}
	shopEnv := map[string]string{"SHOP_TITLE": fmt.Sprint("Shop ", n)}
	if store != "" {
		shopEnv["SHOP_ASSETS"] = store
	}
	return map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"env": map[string]string{"GREETING": fmt.Sprint("Hi ", n)}, "health": health}),
		"blog":   e.App("blog", map[string]any{"needs": []string{"quotes"}, "domains": []string{"blog.example"}, "health": health}),
		"shop":   e.App("shop", map[string]any{"env": shopEnv, "domains": []string{"shop.example"}, "secrets": []string{"token"}}),
		"wiki":   e.App("wiki", map[string]any{"domains": []string{"wiki.example"}}),
	}}
}

// robustServicesPinned and robustServicesWithSecrets are the services of
// robustSpec whose versions have GC roots and credential files.
var (
	robustServicesPinned      = map[string]bool{"shop": true}
	robustServicesWithSecrets = map[string]bool{"shop": true}
)

var robustStore struct {
	once sync.Once
	path string
	err  error
}

// robustStorePath is a store path of this machine's Nix store (a file
// added once, offline, by nix-store --add), for shop to name: the
// cheapest real store path there is.
func robustStorePath(t testing.TB) string {
	t.Helper()
	robustStore.once.Do(func() {
		if !nix.Available() {
			robustStore.err = fmt.Errorf("Nix is not installed (apt-get install nix-bin; .ci/run does it)")
			return
		}
		// Its own directory, not the first test's: the GC root in it
		// must outlive that test (another test's Nix GC may run
		// between two that name the path).
		dir, err := os.MkdirTemp("", "hostel-robust-")
		if err != nil {
			robustStore.err = err
			return
		}
		f := filepath.Join(dir, "hostel-robust-assets")
		if err := os.WriteFile(f, []byte("assets of the robustness tests' shop\n"), 0o644); err != nil {
			robustStore.err = err
			return
		}
		robustStore.path, robustStore.err = addToStoreRooted(f, dir)
	})
	if robustStore.err != nil {
		t.Fatalf("a store path for the robustness tests: %v", robustStore.err)
	}
	return robustStore.path
}

// writeSecret writes secret name (value, encrypted to the daemon's
// machine key) and the recipients file in the spec directory's secrets/.
func writeSecret(t testing.TB, e *Env, name, value string) {
	t.Helper()
	key, _, _ := strings.Cut(strings.TrimSpace(e.MustRun("secrets", "recipients")), "  #")
	rcpt, err := age.ParseX25519Recipient(key)
	if err != nil {
		t.Fatalf("secrets recipients: %q: %v", key, err)
	}
	dir := filepath.Join(e.Dir, "secrets")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "recipients.txt"), []byte(key+" # this machine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var ct bytes.Buffer
	w, err := age.Encrypt(&ct, rcpt)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, value)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".age"), ct.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// deploy writes the next spec, plans it (keeping its versions) and
// deploys it to env ("" is production) with args, and returns the CLI's
// exit code; the generation is committed if it is 0, in doubt otherwise.
func (r *robust) deploy(env string, args ...string) int {
	r.t.Helper()
	envArgs := r.planNext(env)
	out, _, code := r.e.Run(append(append([]string{"deploy", "--json"}, envArgs...), args...)...)
	r.committedBy(out, code)
	return code
}

// planNext writes the next spec and plans it for env, keeping its
// versions; the deploy's generation is in doubt until the CLI says. It
// returns the CLI's flags for env.
func (r *robust) planNext(env string) (envArgs []string) {
	r.t.Helper()
	r.deploys++
	r.e.WriteSpec(robustSpec(r.e, r.deploys, r.store))
	if env != "" {
		envArgs = []string{"--env", env}
	}
	var p struct {
		SpecHash string `json:"spec_hash"`
		Versions map[string]string
	}
	if err := json.Unmarshal([]byte(r.e.MustRun(append([]string{"plan", "--json"}, envArgs...)...)), &p); err != nil {
		r.t.Fatal(err)
	}
	r.planned[p.SpecHash] = p.Versions
	r.doubt = p.SpecHash
	return envArgs
}

// committedBy records the generation a deploy that printed out (--json)
// and exited code committed: none unless code is 0.
func (r *robust) committedBy(out string, code int) {
	r.t.Helper()
	if code != 0 {
		return
	}
	var res struct{ Generation uint64 }
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		r.t.Fatalf("deploy --json: %v: %q", err, out)
	}
	r.committed[res.Generation] = r.doubt
}

// startDeploy is deploy of production with --no-confirm, not started:
// Start it, Wait for it, then pass it to deployed.
func (r *robust) startDeploy() *exec.Cmd {
	r.t.Helper()
	r.planNext("")
	cmd := r.e.command("deploy", "--json", "--no-confirm")
	cmd.Stdout = &bytes.Buffer{}
	return cmd
}

// deployed records what a deploy of startDeploy that exited code did.
func (r *robust) deployed(cmd *exec.Cmd, code int) {
	r.committedBy(cmd.Stdout.(*bytes.Buffer).String(), code)
}

func (r *robust) mustDeploy(env string) {
	r.t.Helper()
	if code := r.deploy(env, "--no-confirm"); code != 0 {
		r.t.Fatalf("deploy: exit %d\n%s", code, r.e.DaemonLog())
	}
	r.doubt = ""
}

// hashOf is the spec hash of committed generation n.
func (r *robust) hashOf(n uint64) string { return r.committed[n] }

// run runs op with point armed with action: setup, a daemon armed, the
// operation, the next daemon without failpoints, and the checks; then a
// deploy, checked again.
func (r *robust) run(op robustOp, point string, skip int, action string) {
	t, e := r.t, r.e
	if op.setup != nil {
		op.setup(r)
	}
	before, _ := r.generations("")
	terms := "1*" + action
	if skip > 0 {
		terms = fmt.Sprintf("%d*off->%s", skip, terms)
	}
	// Armed in the running daemon, right before the operation: a daemon
	// armed at its start would meet the point in its own start (every
	// node follows the store, and reports to it, from the start).
	e.armFailpoint(point, terms)
	code := op.run(r)
	fired := "failpoint " + point + ": " + action
	if action == "kill" {
		select {
		case <-e.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("the daemon did not die at %s (the CLI exited %d)\n%s", point, code, e.DaemonLog())
		}
		e.daemon = nil
	} else {
		if !strings.Contains(e.DaemonLog(), fired) {
			t.Fatalf("the operation did not reach %s (the CLI exited %d):\n%s", point, code, e.DaemonLog())
		}
		// The daemon lives on: what it runs and serves converges to what
		// the store holds, without a restart (every node follows the
		// store, whatever the engine was told).
		doubt, mayBeGone := r.doubt, maps.Clone(r.mayBeGone)
		// A removal of roots that failed (the CLI says so) leaves them to
		// the next gc or start.
		r.rootsMayLinger = point == "gcroots-before-prune"
		op.settle(r, code, before.Number)
		r.check(fmt.Sprintf("after %s (CLI exit %d), without a restart", fired, code))
		r.doubt, r.mayBeGone, r.rootsMayLinger = doubt, mayBeGone, false
		e.StopDaemon()
	}
	if !strings.Contains(e.DaemonLog(), fired) {
		t.Fatalf("the operation did not reach %s (the CLI exited %d):\n%s", point, code, e.DaemonLog())
	}
	e.StartDaemonArgs(r.listen...)
	op.settle(r, code, before.Number)
	r.check(fmt.Sprintf("after %s (CLI exit %d) and a restart", fired, code))

	r.mustDeploy("")
	r.check("after the next deploy")
	r.traffic.stop()
	r.traffic.check(t, r.planned)
	e.Shutdown()
	e.checkShutDown()
}

// currentIs checks the current generation after an operation whose CLI
// exited code: with 0, the one it went to (the generation of spec hash
// to; "" for an operation that does not move it), else that or before.
func (r *robust) currentIs(code int, before uint64, to string) {
	r.t.Helper()
	cur, _ := r.generations("")
	switch {
	case to == "" && cur.Number != before:
		r.t.Errorf("generation %d current, want %d: the operation does not switch", cur.Number, before)
	case to != "" && code == 0 && cur.SpecHash != to:
		r.t.Errorf("generation %d current (spec %.12s), want the one the CLI was told of (spec %.12s)", cur.Number, cur.SpecHash, to)
	case to != "" && cur.Number != before && cur.SpecHash != to:
		r.t.Errorf("generation %d current (spec %.12s), want %d or the operation's (spec %.12s)", cur.Number, cur.SpecHash, before, to)
	}
}

// generation is one of `hostel generations --json`.
type generation struct {
	Number       uint64
	SpecHash     string `json:"spec_hash"`
	Current      bool
	Versions     map[string]string
	Confirmation string
}

// generations returns env's current generation and every generation it
// keeps; none for an environment that is gone.
func (r *robust) generations(env string) (cur generation, gens map[uint64]generation) {
	r.t.Helper()
	args := []string{"generations", "--json"}
	if env != "" {
		args = append(args, "--env", env)
	}
	out, errOut, code := r.e.Run(args...)
	gens = map[uint64]generation{}
	if code != 0 {
		if env != "" && code == 2 {
			return cur, gens // no such environment
		}
		r.t.Fatalf("hostel generations: exit %d: %s", code, errOut)
	}
	var gs struct{ Generations []generation }
	if err := json.Unmarshal([]byte(out), &gs); err != nil {
		r.t.Fatal(err)
	}
	for _, g := range gs.Generations {
		gens[g.Number] = g
		if g.Current {
			cur = g
		}
	}
	return cur, gens
}

// check checks what must hold at any time the daemon is up: the history,
// what runs, what answers.
func (r *robust) check(when string) {
	t, e := r.t, r.e
	t.Helper()
	cur, prod := r.generations("")
	_, pr := r.generations("pr")
	all := maps.Clone(prod)
	maps.Copy(all, pr)

	// No generation half applied: each holds exactly what its spec plans.
	// None lost: every one the CLI was told of is there, but those the
	// operation was removing. None made up: each is one the CLI was told
	// of, or the one the operation in doubt was committing.
	for n, g := range all {
		want, ok := r.planned[g.SpecHash]
		switch {
		case !ok:
			t.Errorf("%s: generation %d has spec %.12s, which was never deployed", when, n, g.SpecHash)
		case !maps.Equal(g.Versions, want):
			t.Errorf("%s: generation %d holds %v, want its spec's versions %v", when, n, g.Versions, want)
		}
		if _, told := r.committed[n]; !told {
			if g.SpecHash != r.doubt {
				t.Errorf("%s: generation %d (spec %.12s) is there, which no deploy committed", when, n, g.SpecHash)
			}
			r.committed[n] = g.SpecHash // committed: the store says so now
		}
	}
	for n := range r.committed {
		if _, ok := all[n]; !ok {
			if !r.mayBeGone[n] {
				t.Errorf("%s: generation %d, committed, is gone", when, n)
			}
			delete(r.committed, n)
		}
	}
	r.doubt, r.mayBeGone = "", map[uint64]bool{}
	if cur.Number == 0 {
		t.Fatalf("%s: no current generation", when)
	}

	// Exactly the current generations' instances run, each once: the
	// daemon converges to them within seconds (a drain, a window's end
	// may still be under way when it answers).
	msg := r.runsExactly(cur, len(pr) > 0)
	for deadline := time.Now().Add(20 * time.Second); msg != "" && time.Now().Before(deadline); msg = r.runsExactly(cur, len(pr) > 0) {
		time.Sleep(200 * time.Millisecond)
	}
	if msg != "" {
		t.Errorf("%s: %s", when, msg)
	}

	gen, svcs := e.Status()
	if gen != cur.Number {
		t.Errorf("%s: status says generation %d, generations %d", when, gen, cur.Number)
	}
	for name, v := range cur.Versions {
		if s := svcs[name]; s.Version != v || s.State != "running" {
			t.Errorf("%s: %s is %s %s, want %s running", when, name, s.Version, s.State, v)
		}
	}
	for _, host := range []string{"blog.example", "shop.example", "wiki.example"} {
		service, _, _ := strings.Cut(host, ".")
		code, h, body := e.Get(host, "/")
		if v := cur.Versions[service]; code != 200 || h.Get("X-Hostel-Version") != v && !strings.Contains(body, v) {
			t.Errorf("%s: %s answers %d from version %q (%.60q), want 200 from %s", when, host, code, h.Get("X-Hostel-Version"), body, v)
		}
	}
}

// runsExactly returns what is wrong with what runs, "" if nothing: every
// instance of production's current generation cur runs once; so does
// every instance of preview pr's (if it is there), and nothing else of
// the root, and ROOT/run holds only their runtime directories.
func (r *robust) runsExactly(cur generation, preview bool) string {
	want := map[string]bool{}
	for name, v := range cur.Versions {
		want[name+"-"+v] = true
	}
	allowed := maps.Clone(want)
	if preview {
		for name, s := range r.e.envStatus("pr") {
			key := name + "-" + s.Version
			if s.Env == "pr" {
				key += "@pr"
			}
			allowed[key] = true
		}
	}
	count := map[string]int{}
	for _, key := range r.e.processes() {
		count[key]++
	}
	var wrong []string
	for key, n := range count {
		switch {
		case !allowed[key]:
			wrong = append(wrong, fmt.Sprintf("%s runs, which no current generation holds", key))
		case n > 1:
			wrong = append(wrong, fmt.Sprintf("%s runs %d processes", key, n))
		}
	}
	for key := range want {
		if count[key] == 0 {
			wrong = append(wrong, key+" does not run")
		}
	}
	for _, dir := range runtimeDirs(r.t, r.e.Root) {
		if !allowed[dir] {
			wrong = append(wrong, "ROOT/run/"+dir+" is left")
		}
	}
	wrong = append(wrong, r.rootsAndCredentials(count)...)
	slices.Sort(wrong)
	return strings.Join(wrong, "; ")
}

// rootsAndCredentials returns what is wrong with the root's GC roots and
// credential files, given the instances that run (by key, as
// runsExactly counts them): the roots must be exactly the versions of
// the pinned services that a kept generation (production's or the
// preview's) holds or a process runs — no orphan root, none missing —
// and credential files must be there for exactly the running instances
// of the services with secrets.
func (r *robust) rootsAndCredentials(running map[string]int) []string {
	var wrong []string
	want := map[string]bool{}
	_, prod := r.generations("")
	_, pr := r.generations("pr")
	for _, gens := range []map[uint64]generation{prod, pr} {
		for _, g := range gens {
			for name, v := range g.Versions {
				if robustServicesPinned[name] {
					want[name+"-"+v] = true
				}
			}
		}
	}
	held := maps.Clone(want)
	for key := range running {
		version, _, _ := strings.Cut(key, "@")
		if name, _, _ := strings.Cut(version, "-"); robustServicesPinned[name] {
			held[version] = true
		}
	}
	names, err := nix.RootsFor(r.e.Root).Names()
	if err != nil {
		return []string{fmt.Sprintf("reading the GC roots: %v", err)}
	}
	pinned := map[string]bool{}
	for _, n := range names {
		pinned[n] = true
		if !held[n] && !r.rootsMayLinger {
			wrong = append(wrong, "GC root "+n+" is left, which no kept generation or process holds")
		}
	}
	for n := range want {
		if !pinned[n] {
			wrong = append(wrong, "no GC root for "+n+", which a kept generation holds")
		}
	}

	creds := credentialDirs(r.e.Root)
	for key := range creds {
		if running[key] == 0 {
			wrong = append(wrong, "credentials of "+key+" are left, which does not run")
		}
	}
	for key := range running {
		name, _, _ := strings.Cut(key, "-")
		if robustServicesWithSecrets[name] && !creds[key] {
			wrong = append(wrong, key+" runs without its credentials")
		}
	}
	return wrong
}

// credentialDirs lists the credentials directories of root's instances,
// by instance key: in /dev/shm/hostel-ROOTHASH/KEY (where RUNTIME_DIRECTORY
// is on disk) or ROOT/run/KEY/credentials.
func credentialDirs(root string) map[string]bool {
	out := map[string]bool{}
	abs, _ := filepath.Abs(root)
	sum := sha256.Sum256([]byte(abs))
	ents, _ := os.ReadDir(filepath.Join("/dev/shm", "hostel-"+hex.EncodeToString(sum[:6])))
	for _, e := range ents {
		out[e.Name()] = true
	}
	dirs, _ := filepath.Glob(filepath.Join(root, "run", "*", "credentials"))
	for _, d := range dirs {
		out[filepath.Base(filepath.Dir(d))] = true
	}
	return out
}

// load asks hosts for / on a daemon's HTTP address all the time, and
// keeps what answered.
type load struct {
	done, stopped chan struct{}
	once          sync.Once
	mu            sync.Mutex
	// answers counts the answers by host, status and version.
	answers map[[3]string]int
	// refused counts the requests that got no answer (the daemon down).
	refused int
}

func startLoad(addr string, hosts ...string) *load {
	tr := &load{done: make(chan struct{}), stopped: make(chan struct{}), answers: map[[3]string]int{}}
	client := &http.Client{Timeout: 10 * time.Second}
	go func() {
		defer close(tr.stopped)
		for i := 0; ; i++ {
			select {
			case <-tr.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			host := hosts[i%len(hosts)]
			req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			req.Host = host
			resp, err := client.Do(req)
			tr.mu.Lock()
			if err != nil {
				tr.refused++
			} else {
				resp.Body.Close()
				tr.answers[[3]string{host, fmt.Sprint(resp.StatusCode), resp.Header.Get("X-Hostel-Version")}]++
			}
			tr.mu.Unlock()
		}
	}()
	return tr
}

func (tr *load) stop() {
	tr.once.Do(func() { close(tr.done) })
	<-tr.stopped
}

// check fails t unless every answer was a 200 from a version a planned
// spec holds: no 5xx, no 404, at any time.
func (tr *load) check(t *testing.T, planned map[string]map[string]string) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	ok := 0
	for a, n := range tr.answers {
		host, code, version := a[0], a[1], a[2]
		service, _, _ := strings.Cut(host, ".")
		known := false
		for _, vs := range planned {
			known = known || vs[service] == version
		}
		if code != "200" || !known {
			t.Errorf("traffic: %s answered %s from version %q %d times, want 200 from a deployed version", host, code, version, n)
			continue
		}
		ok += n
	}
	if ok == 0 {
		t.Errorf("traffic: no answer (%d requests refused)", tr.refused)
	}
	t.Logf("traffic: %d answers, %d requests refused (the daemon down)", ok, tr.refused)
}

// armFailpoint arms failpoint name with terms in the running daemon
// (PUT /v1/failpoints/NAME on its API socket: a binary built with
// -tags failpoints only).
func (e *Env) armFailpoint(name, terms string) {
	e.t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(e.Root, "hostel.sock"))
	}}}
	req, _ := http.NewRequest("PUT", "http://hostel/v1/failpoints/"+name, strings.NewReader(terms))
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("arming %s: %v", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("arming %s=%s: %s %s", name, terms, resp.Status, b)
	}
}
