package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hostel/internal/api"
)

// TestThroughStandby: the CLI may talk to any node of a cluster. Two
// daemons share Debian's etcd, each with a node-to-node port; a leads the
// engine, b is a standby. A deploy through b is carried out by a, its
// progress streamed back as it comes (the confirm window's line while the
// window is still open); so are a restart and a rollback. When a dies in
// the confirm window of a deploy through b, the deploy ends with an error
// that says a was lost; b takes over, and a, back as a standby, passes a
// deploy to b.
func TestThroughStandby(t *testing.T) {
	url := startEtcd(t)
	a, b := NewEnv(t), NewEnv(t)
	aArgs := []string{"--http", "127.0.0.1:0", "--https", "", "--etcd", url, "--node", "a", "--advertise", "127.0.0.1:0"}
	a.StartDaemonArgs(aArgs...)
	b.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--etcd", url, "--node", "b", "--advertise", "127.0.0.1:0")
	if l := leaderOf(t, b); l != "a" {
		t.Fatalf("node %q leads, want a (started first)", l)
	}
	shop := func(title string) map[string]any {
		return map[string]any{"services": map[string]any{
			"shop": a.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": title}, "domains": []string{"shop.example"},
				"stop_grace": "3s", "placement": map[string]any{"node": "a"}}),
		}}
	}

	// A deploy through b; then another, whose confirm window's line
	// comes while the command still waits on the window.
	b.WriteSpec(shop("Shop one"))
	if out, errOut, code := b.Run("deploy"); code != 0 || !strings.Contains(errOut, "started shop") || !strings.Contains(errOut, "switched: generation 1 is live") {
		t.Fatalf("deploy through b: exit %d, want 0 with its progress\n%s%s", code, out, errOut)
	}
	if code, _, body := b.Get("shop.example", "/"); code != 200 || !strings.Contains(body, "Shop one") {
		t.Errorf("shop through b: %d %q", code, body)
	}
	if log := a.DaemonLog(); !strings.Contains(log, "node b passed POST /v1/deploy to this one") {
		t.Errorf("a's log does not say b passed it the deploy:\n%s", log)
	}
	// Its progress is a's, which b asks for the followers of its own
	// socket (the dashboard's).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	var followed []string
	err := api.NewClient(filepath.Join(b.Root, "hostel.sock")).FollowDeploys(ctx, func(ev api.DeployEvent) {
		followed = append(followed, ev.Progress)
		if ev.End {
			cancel()
		}
	})
	cancel()
	if err != nil || !slices.Contains(followed, "switched: generation 1 is live") {
		t.Errorf("the deploys followed through b: %q (%v), want the deploy's lines", followed, err)
	}
	b.WriteSpec(shop("Shop two"))
	d := b.startCLI("deploy", "--confirm", "4s")
	if !d.waitLine(t, "confirming for 4s") {
		t.Fatalf("no confirm window line from the deploy through b:\n%s", d.stderr())
	}
	if d.exited() {
		t.Errorf("the confirm window's line came only after the deploy ended: not streamed")
	}
	if code := d.wait(t); code != 0 || !strings.Contains(d.stderr(), "confirmed: generation 2") {
		t.Fatalf("deploy through b: exit %d, want 0 and generation 2 confirmed\n%s", code, d.stderr())
	}
	if code, _, body := b.Get("shop.example", "/"); code != 200 || !strings.Contains(body, "Shop two") {
		t.Errorf("shop through b after the second deploy: %d %q", code, body)
	}

	t.Run("restart through b", func(t *testing.T) {
		before := a.pidOf("shop")
		b.MustRun("restart", "shop")
		if after := a.pidOf("shop"); after == before || after == 0 {
			t.Errorf("shop's pid %d before, %d after the restart through b", before, after)
		}
	})
	t.Run("rollback through b", func(t *testing.T) {
		b.MustRun("rollback")
		if code, _, body := b.Get("shop.example", "/"); code != 200 || !strings.Contains(body, "Shop one") {
			t.Errorf("shop through b after the rollback: %d %q", code, body)
		}
	})

	t.Run("the leader lost in the confirm window", func(t *testing.T) {
		b.WriteSpec(shop("Shop three"))
		d := b.startCLI("deploy", "--confirm", "30s")
		if !d.waitLine(t, "confirming for 30s") {
			t.Fatalf("no confirm window line:\n%s", d.stderr())
		}
		// a's machine vanishes: its daemon frozen, its connections open
		// with nothing coming (TCP never ends them). The relay ends with
		// a's lease, and b takes over.
		frozen := a.daemon.Process
		frozen.Signal(syscall.SIGSTOP)
		t.Cleanup(func() { frozen.Signal(syscall.SIGCONT) }) // a failed test still stops it
		if code := d.wait(t); code != 1 || !strings.Contains(d.stderr(), "lost node a, which leads the engine, mid-operation: it no longer leads the engine") ||
			!strings.Contains(d.stderr(), "hostel generations") {
			t.Errorf("deploy through b when a froze: exit %d, want 1 saying a was lost and where to look\n%s", code, d.stderr())
		}
		eventually(t, 40*time.Second, "b to lead", func() bool { return leaderOf(t, b) == "b" })
		// a comes back as a standby and passes a deploy to b.
		a.stopDaemonWith(os.Kill)
		a.StartDaemonArgs(aArgs...)
		a.WriteSpec(shop("Shop four"))
		out, errOut, code := a.Run("deploy", "--no-confirm")
		if code != 0 {
			t.Fatalf("deploy through a, now a standby: exit %d\n%s%s", code, out, errOut)
		}
		if code, _, body := a.Get("shop.example", "/"); code != 200 || !strings.Contains(body, "Shop four") {
			t.Errorf("shop through a: %d %q", code, body)
		}
		if log := b.DaemonLog(); !strings.Contains(log, "node a passed POST /v1/deploy to this one") {
			t.Errorf("b's log does not say a passed it the deploy")
		}
	})
}

// TestStandbyLeaderWithoutAddress: a leader that advertises no address
// cannot be passed a request: a deploy through a standby fails with one
// line naming the leader and why (exit 1), and reads still answer there.
func TestStandbyLeaderWithoutAddress(t *testing.T) {
	url := startEtcd(t)
	c, d := NewEnv(t), NewEnv(t)
	c.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--etcd", url, "--node", "c")
	d.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--etcd", url, "--node", "d", "--advertise", "127.0.0.1:0")
	if l := leaderOf(t, d); l != "c" {
		t.Fatalf("node %q leads, want c (started first)", l)
	}
	d.WriteSpec(map[string]any{"services": map[string]any{"shop": d.App("shop", map[string]any{"domains": []string{"shop.example"}})}})
	for _, args := range [][]string{{"deploy", "--no-confirm"}, {"restart", "shop"}, {"rollback"}} {
		out, errOut, code := d.Run(args...)
		want := "node c leads the engine and advertises no address (serve --advertise) for this node to pass the request to: run the command on node c\n"
		if code != 1 || errOut != want {
			t.Errorf("%s through d: exit %d, stderr %q; want 1 and %q (stdout %q)", args[0], code, errOut, want, out)
		}
	}
	if gen, _ := d.Status(); gen != 0 {
		t.Errorf("generation %d after the refused deploy, want none", gen)
	}
}

// leaderOf is the node that leads the engine, as e's `hostel nodes`
// says; "" if none.
func leaderOf(t *testing.T, e *Env) string {
	t.Helper()
	var ns struct {
		Nodes []struct {
			Name   string
			Leader bool
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("nodes", "--json")), &ns); err != nil {
		t.Fatal(err)
	}
	for _, n := range ns.Nodes {
		if n.Leader {
			return n.Name
		}
	}
	return ""
}

// pidOf is the pid of service's instance as e's status says; 0 if none.
func (e *Env) pidOf(service string) int {
	e.t.Helper()
	_, svcs := e.Status()
	return svcs[service].PID
}

// cli is a hostel command running in the background, its stderr read as
// it comes.
type cli struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	read  chan struct{} // closed when stderr ends
	done  chan struct{} // closed when the command exited
}

// startCLI starts `hostel ARGS` against e's daemon.
func (e *Env) startCLI(args ...string) *cli {
	e.t.Helper()
	c := &cli{cmd: exec.Command(e.Bin, append([]string{"--root", e.Root}, args...)...), read: make(chan struct{}), done: make(chan struct{})}
	c.cmd.Dir = e.Dir
	pipe, err := c.cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		defer close(c.read)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	go func() {
		<-c.read
		c.cmd.Wait()
		close(c.done)
	}()
	e.t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
	})
	return c
}

// waitLine waits up to a minute for a line of stderr holding s.
func (c *cli) waitLine(t *testing.T, s string) bool {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(c.stderr(), s) {
			return true
		}
		select {
		case <-c.read:
			return strings.Contains(c.stderr(), s)
		default:
		}
	}
	return false
}

// exited reports whether the command has ended.
func (c *cli) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// wait waits up to two minutes for the command's end and returns its exit
// code.
func (c *cli) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("hostel did not end within 2 minutes:\n%s", c.stderr())
	}
	return c.cmd.ProcessState.ExitCode()
}

func (c *cli) stderr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n") + "\n"
}
