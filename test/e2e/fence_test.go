package e2e

import (
	"fmt"
	"os/exec"
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

// TestFence moves lock by a deploy while its node is lost three ways in
// turn — its daemon killed (its etcd member with it, its services left
// running, as a crash leaves them), its daemon frozen past its lease, its
// network cut (the node in a network namespace of its own, its link down:
// the daemon alive, unable to renew) — and checks, watching every node's
// processes every 20 ms, that the old version is gone before the new one
// starts elsewhere (fenced by the node's holder, or by its daemon), and
// that the node, healed, runs no lock of its own. One cluster takes the
// three: make test runs it.
func TestFence(t *testing.T) {
	nn := newNodeNet(t)
	c := nn.startCluster(t)
	lock := lockApp(t)
	lead := c.leader(t)
	lead.WriteSpec(lockSpec(lock, 1))
	lead.MustRun("deploy", "--no-confirm")
	var frozen int
	faults := []struct {
		name        string
		fault, heal func(x int)
	}{
		{"its daemon killed, its services left running",
			func(x int) { c.envs[x].killDaemon() },
			func(x int) { c.envs[x].StartDaemonArgs(c.envs[x].args...) }},
		{"its daemon frozen past its lease",
			func(x int) {
				frozen = c.envs[x].daemon.Process.Pid
				syscall.Kill(frozen, syscall.SIGSTOP)
				t.Cleanup(func() { syscall.Kill(frozen, syscall.SIGCONT) })
			},
			func(x int) { syscall.Kill(frozen, syscall.SIGCONT) }},
		{"its network cut past its lease",
			func(x int) {
				nn.cut(t, x, false)
				t.Cleanup(func() { exec.Command("ip", "link", "set", nn.links[x], "up").Run() })
			},
			func(x int) { nn.cut(t, x, true) }},
	}
	for i, f := range faults {
		fenceRound(t, c, lock, i+2, f.name, f.fault, f.heal)
	}
}

// fenceRound inflicts fault on the node that runs lock, deploys lock v
// through another node meanwhile (tried again while refused), waits until
// v answers there, heals, and checks that two versions never ran at once
// and that the node runs no lock of its own once healed.
func fenceRound(t *testing.T, c *cluster, lock string, v int, name string, fault, heal func(x int)) {
	t.Helper()
	x := lockOn(t, c, c.leader(t))
	asker := c.envs[(x+1)%len(c.envs)]
	w := watchLocks(c)
	fault(x)
	at := time.Now()
	asker.WriteSpec(lockSpec(lock, v))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, errOut, code := asker.Run("deploy", "--no-confirm")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: deploy of v%d through %s refused for 30 s: exit %d: %s", name, v, c.names[(x+1)%len(c.envs)], code, out+errOut)
		}
	}
	want := fmt.Sprintf("v%d", v)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code, _, body := asker.Get("lock.test", "/"); code == 200 && strings.TrimSpace(body) == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: lock v%d does not answer through %s", name, v, c.names[(x+1)%len(c.envs)])
		}
	}
	t.Logf("%s: %s: lock v%d answers %s after the fault", c.names[x], name, v, time.Since(at).Round(time.Millisecond))
	heal(x)
	e := c.envs[x]
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
			t.Errorf("%s: %s, healed, still runs %v; lock v%d runs elsewhere", name, c.names[x], left, v)
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	if two := w.end(); len(two) > 0 {
		t.Errorf("%s: two versions of lock (exclusive) ran at once, seen %d times: %s", name, len(two), strings.Join(two[:min(3, len(two))], "; "))
	}
	settle(c)
}
