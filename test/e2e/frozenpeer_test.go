package e2e

import (
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestClusterFrozenPeer (issue 22): a daemon frozen (SIGSTOP) with its
// etcd member, which leads neither the engine nor etcd's raft, holds up
// no other node: each of theirs reads the store at once throughout, as
// each daemon's client talks to its own member (etcd.Member.Endpoints).
// A client of every member sent a request in three to the frozen one,
// which held it until a keep-alive ping went unanswered (up to 12 s,
// TestClusterLeavesFrozenMember): a command that reads the store waited
// that long, or gave up.
func TestClusterFrozenPeer(t *testing.T) {
	c := startCluster(t)
	lead := c.leader(t)
	raft := raftLeader(c)
	victim := slices.IndexFunc(c.envs, func(e *Env) bool { return e != lead })
	if victim == raft {
		victim = slices.IndexFunc(c.envs, func(e *Env) bool { return e != lead && e != c.envs[raft] })
	}
	pid := c.envs[victim].daemon.Process.Pid
	syscall.Kill(pid, syscall.SIGSTOP)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	frozenAt := time.Now()
	// Under the node's lease (NodeTTL): what the others read is the
	// cluster as it was.
	var slowest time.Duration
	for reads := 0; time.Since(frozenAt) < 5*time.Second; reads++ {
		for i, e := range c.envs {
			if i == victim {
				continue
			}
			t0 := time.Now()
			_, errOut, code := e.Run("nodes", "--json")
			took := time.Since(t0)
			slowest = max(slowest, took)
			if code != 0 || took > 3*time.Second {
				t.Fatalf("%s froze (its member led no raft); %s after, hostel nodes on %s took %s: exit %d %s",
					c.names[victim], time.Since(frozenAt).Round(time.Millisecond), c.names[i], took.Round(time.Millisecond), code, errOut)
			}
		}
	}
	t.Logf("%s frozen 5 s: hostel nodes on the others answered within %s", c.names[victim], slowest.Round(time.Millisecond))
	syscall.Kill(pid, syscall.SIGCONT)
}
