package e2e

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Fencing by the lease (issue 22, docs/architecture.md "Fencing"): an
// exclusive service's old version must be gone from a node that lost
// its lease before the engine starts its next version elsewhere — with
// the node's daemon killed (its services left running, as a crash leaves
// them) or frozen. Each test moves lock by a deploy while the fault
// lasts, and watches every node's processes for two versions of it at
// once.

// lockSpec is lock alone, exclusive, at version v.
func lockSpec(lock string, v int) map[string]any {
	return map[string]any{"services": map[string]any{
		"lock": map[string]any{"package": lock, "exec": []string{"bin/lockapp"}, "env": map[string]string{"V": fmt.Sprint(v)}, "exclusive": true,
			"health": map[string]any{"path": "/healthz"}, "domains": []string{"lock.test"}},
	}}
}

// lockWatch notes, every 20 ms, every time two versions of lock run at
// once across the nodes (a frozen process does not run).
type lockWatch struct {
	stop, done chan struct{}
	mu         sync.Mutex
	two        []string
}

func watchLocks(c *cluster) *lockWatch {
	w := &lockWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var running []string
			versions := map[string]bool{}
			for i, e := range c.envs {
				for pid, key := range e.processes() {
					if strings.HasPrefix(key, "lock-") && !frozen(pid) {
						running = append(running, c.names[i]+":"+key)
						versions[key] = true
					}
				}
			}
			if len(versions) > 1 {
				w.mu.Lock()
				w.two = append(w.two, fmt.Sprintf("%v at %s", running, time.Now().Format("15:04:05.000")))
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// end stops the watch and returns what it saw.
func (w *lockWatch) end() []string {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.two
}

// lockOn returns the index of the node lock is placed on.
func lockOn(t *testing.T, c *cluster, asker *Env) int {
	t.Helper()
	for name, n := range asker.nodes() {
		if slices.ContainsFunc(n.Instances, func(in string) bool { return strings.HasPrefix(in, "lock-") }) {
			return slices.Index(c.names, name)
		}
	}
	t.Fatal("lock is placed nowhere")
	return -1
}

// fenceRound deploys lock v1, inflicts fault on the node that runs it,
// deploys v2 through another node meanwhile (tried again while refused),
// waits until v2 answers there, heals, and checks that two versions never
// ran at once and that the node runs no lock of its own once healed.
func fenceRound(t *testing.T, fault func(e *Env), heal func(e *Env)) {
	fenceRoundOn(t, startCluster(t), func(_ *cluster, e *Env) { fault(e) }, func(_ *cluster, e *Env) { heal(e) })
}

// fenceRoundOn is fenceRound on cluster c.
func fenceRoundOn(t *testing.T, c *cluster, fault func(c *cluster, e *Env), heal func(c *cluster, e *Env)) {
	lock := lockApp(t)
	lead := c.leader(t)
	lead.WriteSpec(lockSpec(lock, 1))
	lead.MustRun("deploy", "--no-confirm")
	x := lockOn(t, c, lead)
	e, asker := c.envs[x], c.envs[(x+1)%len(c.envs)]
	w := watchLocks(c)
	fault(c, e)
	at := time.Now()
	asker.WriteSpec(lockSpec(lock, 2))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, errOut, code := asker.Run("deploy", "--no-confirm")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deploy of v2 through %s refused for 30 s: exit %d: %s", c.names[(x+1)%len(c.envs)], code, out+errOut)
		}
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code, _, body := asker.Get("lock.test", "/"); code == 200 && strings.HasPrefix(body, "v2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lock v2 does not answer through %s", c.names[(x+1)%len(c.envs)])
		}
	}
	t.Logf("lock v2 answers %s after the fault on %s", time.Since(at).Round(time.Millisecond), c.names[x])
	heal(c, e)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left := []string{}
		for _, key := range e.processes() {
			if strings.HasPrefix(key, "lock-") {
				left = append(left, key)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s, healed, still runs %v; lock v2 runs elsewhere", c.names[x], left)
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	if two := w.end(); len(two) > 0 {
		t.Errorf("two versions of lock (exclusive) ran at once, seen %d times: %s", len(two), strings.Join(two[:min(3, len(two))], "; "))
	}
}

// TestFenceDaemonKilled: a node's daemon killed (its etcd member with
// it), its services left running: its holder stops lock before the
// node's lease can end, so the deploy's v2 never runs beside it; the
// daemon started again starts no lock of its own.
func TestFenceDaemonKilled(t *testing.T) {
	fenceRound(t, func(e *Env) { e.killDaemon() }, func(e *Env) { e.StartDaemonArgs(e.args...) })
}

// TestFenceDaemonFrozen: a node's daemon (and its etcd member) frozen
// past its lease, its services running: its holder stops lock, and the
// daemon thawed neither starts it again nor lets it run beside v2.
func TestFenceDaemonFrozen(t *testing.T) {
	var pid int
	fenceRound(t, func(e *Env) {
		pid = e.daemon.Process.Pid
		syscall.Kill(pid, syscall.SIGSTOP)
		t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	}, func(e *Env) { syscall.Kill(pid, syscall.SIGCONT) })
}
