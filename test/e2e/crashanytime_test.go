package e2e

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	crashSeed = flag.Uint64("crash-seed", 0, "TestCrashAnyTime: the seed of the kills, to replay a run (0: a new one, printed)")
	crashes   = flag.Int("crashes", 0, "TestCrashAnyTime: how many kills (0: the short version of make test; make chaos: 500 on each store)")
)

// shortCrashes is TestCrashAnyTime's number of kills in `make test`.
const shortCrashes = 6

// TestCrashAnyTime kills the daemon (kill -9) at random points in time,
// not only at named failpoints: during a deploy, a rollback, a gc and the
// daemon's own start, after a delay drawn from a seed. Each time it starts
// the daemon again at once, as a supervisor would (a CLI waiting on the
// held API socket is answered by it), and checks what TestRobustness checks — no generation
// lost or half applied; the current one the old or the new; exactly its
// versions running, each once, answering; no orphan process, runtime
// directory, GC root or credential file — then a deploy goes through.
// One root takes every crash, so that each is cheap: `make chaos` runs
// 500 on bbolt and 500 on etcd (-crashes 500), `make test` a few. The seed is printed;
// -crash-seed S -crashes N replays the same draws (the timing is the
// machine's).
func TestCrashAnyTime(t *testing.T) {
	seed := *crashSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	n := *crashes
	if n == 0 {
		n = shortCrashes
	}
	t.Logf("seed %d: replay with -args -crash-seed %d -crashes %d", seed, seed, n)
	rng := rand.New(rand.NewPCG(seed, 0))

	r := newRobust(t, nil)
	r.mustDeploy("") // a generation to roll back to
	// Each operation's window is how long it takes here: the shorter of
	// two runs uncut at first (the first may be slow, caches cold), then
	// a running mean of the times it ended before the kill (a machine's
	// load changes it). A kill lands at a drawn fraction of it.
	window := map[string]time.Duration{}
	for _, op := range crashOps {
		window[op.name] = min(r.timeOp(op), r.timeOp(op))
		t.Logf("%s takes %v here", op.name, window[op.name])
	}
	began := time.Now()
	// inside counts, by operation, the kills and those that cut it short
	// (its CLI had not exited 0; the daemon's start: it was not serving).
	inside := map[string][2]int{}
	for i := range n {
		op := crashOps[rng.IntN(len(crashOps))]
		delay := time.Duration(rng.Float64() * float64(window[op.name]))
		cut, took := r.crashDuring(op, delay, fmt.Sprintf("crash %d of %d (seed %d): %s, killed after %v", i+1, n, seed, op.name, delay))
		if took > 0 {
			window[op.name] = (3*window[op.name] + took) / 4
		}
		c := inside[op.name]
		c[0]++
		if cut {
			c[1]++
		}
		inside[op.name] = c
		if t.Failed() {
			t.Fatalf("stopped at crash %d: replay with -args -crash-seed %d -crashes %d", i+1, seed, i+1)
		}
	}
	elapsed := time.Since(began)
	t.Logf("%d crashes, 0 violations, in %v (%.2f s a crash)", n, elapsed.Round(time.Second), elapsed.Seconds()/float64(n))
	for _, op := range crashOps {
		t.Logf("%s: %d kills, %d of them before it finished", op.name, inside[op.name][0], inside[op.name][1])
	}
	r.traffic.stop()
	r.traffic.check(t, r.planned)
	r.e.Shutdown()
	r.e.checkShutDown()
}

// crashOp is an operation TestCrashAnyTime kills the daemon during.
type crashOp struct {
	name string
	// start begins the operation and returns what ends with it (a CLI
	// command, or nil for the daemon's own start); before is the current
	// generation. It returns, for check, the spec hash of the generation
	// the operation may make current ("" for none).
	start func(r *robust, before generation) (cmd *exec.Cmd, to string)
}

var crashOps = []crashOp{
	{name: "deploy", start: func(r *robust, _ generation) (*exec.Cmd, string) {
		cmd := r.startDeploy()
		return cmd, r.doubt
	}},
	{name: "rollback", start: func(r *robust, before generation) (*exec.Cmd, string) {
		_, gens := r.generations("")
		var prev uint64 // the newest kept generation before the current one
		for n := range gens {
			if n < before.Number && n > prev {
				prev = n
			}
		}
		return r.e.command("rollback"), gens[prev].SpecHash
	}},
	{name: "gc", start: func(r *robust, before generation) (*exec.Cmd, string) {
		_, gens := r.generations("")
		nums := slices.Sorted(maps.Keys(gens))
		for i, n := range nums {
			if i < len(nums)-2 && n != before.Number {
				r.mayBeGone[n] = true
			}
		}
		return r.e.command("gc", "--keep", "2"), ""
	}},
	{name: "restart", start: func(r *robust, _ generation) (*exec.Cmd, string) {
		r.e.StopDaemon()
		r.e.spawnDaemon(r.listen...)
		return nil, ""
	}},
}

// crashDuring runs op, kills the daemon after delay, starts it again and
// checks; then a deploy goes through. It reports whether the kill cut the
// operation short, and if not how long its CLI took (0: not known).
func (r *robust) crashDuring(op crashOp, delay time.Duration, when string) (cut bool, took time.Duration) {
	t, e := r.t, r.e
	t.Helper()
	before, _ := r.generations("")
	cmd, to := op.start(r, before)
	ended := make(chan time.Duration, 1)
	if cmd != nil {
		began := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { cmd.Wait(); ended <- time.Since(began) }()
	}
	time.Sleep(delay)
	if cmd == nil {
		// The daemon's start: cut short if it was not serving yet.
		cut = !strings.Contains(e.DaemonLog(), "serving HTTP on")
	}
	e.killDaemon()
	if cmd != nil {
		select {
		case took = <-ended: // before the kill
		default:
			cut = true
		}
	}
	// The machine's supervisor starts the next daemon at once: a CLI
	// whose request waits on the held API socket is answered by it.
	t0 := time.Now()
	e.StartDaemonArgs(r.listen...)
	code := 0
	if cmd != nil {
		if cut {
			<-ended
		}
		code = cmd.ProcessState.ExitCode()
		if code != 0 {
			cut, took = true, 0
		}
		if op.name == "deploy" {
			r.deployed(cmd, code)
		}
	}
	t1 := time.Now()
	r.currentIs(code, before.Number, to)
	r.check(fmt.Sprintf("%s (CLI exit %d), after the restart", when, code))
	t2 := time.Now()
	r.mustDeploy("")
	t.Logf("%s: CLI exit %d; start %v, checks %v, deploy %v", when, code,
		t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond), time.Since(t2).Round(time.Millisecond))
	return cut, took
}

// timeOp runs op once, to its end, and returns how long it took.
func (r *robust) timeOp(op crashOp) time.Duration {
	t, e := r.t, r.e
	t.Helper()
	before, _ := r.generations("")
	began := time.Now()
	cmd, to := op.start(r, before)
	if cmd == nil {
		began = time.Now() // from the spawn: the stop before is not the start's
		e.waitDaemon()
	} else {
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v\n%s", op.name, err, errOut.String())
		}
	}
	took := time.Since(began)
	if op.name == "deploy" {
		r.deployed(cmd, 0)
	}
	r.currentIs(0, before.Number, to)
	return took
}

// command is the CLI with args, in the spec directory, not started.
func (e *Env) command(args ...string) *exec.Cmd {
	cmd := exec.Command(e.Bin, append([]string{"--root", e.Root}, args...)...)
	cmd.Dir = e.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}
