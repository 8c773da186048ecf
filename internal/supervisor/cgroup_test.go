package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"hostel/internal/cgroup"
)

// cgroupSupervisor is newSupervisor with cgroups; it skips where there are
// none to test with (not root, controllers missing).
func cgroupSupervisor(t *testing.T) *Supervisor {
	t.Helper()
	root, err := os.MkdirTemp("", "hs")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(root, 0o755)
	h, err := cgroup.Open(root)
	if errors.Is(err, cgroup.ErrUnavailable) {
		os.RemoveAll(root)
		t.Skipf("no cgroups to test with: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Root: root, Logf: t.Logf, Cgroups: h})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.StopAll(ctx); err != nil {
			t.Errorf("StopAll: %v", err)
		}
		if err := h.Remove(); err != nil {
			t.Errorf("a group is left after every instance stopped: %v", err)
		}
		os.RemoveAll(root)
	})
	return s
}

// A process that allocates past its memory limit is killed by the kernel,
// and status and log say so.
func TestMemoryLimitKillsAndReportsOOM(t *testing.T) {
	s := cgroupSupervisor(t)
	cfg := appConfig("oom")
	cfg.Memory = 64 << 20
	i := startReady(t, s, cfg)
	if st := i.Status(); st.MemoryBytes <= 0 {
		t.Errorf("MemoryBytes = %d for a running process, want > 0", st.MemoryBytes)
	}
	resp, err := http.Get("http://" + i.Addr() + "/alloc?mb=256")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("allocating 256 MiB under a 64 MiB limit answered %s; want the process killed", resp.Status)
	}
	waitFor(t, "last_exit oom", func() bool { return i.Status().LastExit == "oom" })
	b, err := os.ReadFile(i.Status().LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "killed by the kernel for exceeding its memory limit") {
		t.Errorf("the log does not say the process was killed for its memory; log:\n%s", b)
	}
	// It is restarted as after any crash, in the same group.
	if err := i.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// cpu 0.5 holds a busy loop near half a core.
func TestCPULimitHoldsABusyLoop(t *testing.T) {
	s := cgroupSupervisor(t)
	cfg := appConfig("cpu")
	cfg.CPU = 0.5
	i := startReady(t, s, cfg)
	get(t, i.Addr(), "/spin")
	time.Sleep(200 * time.Millisecond) // let the loop start
	c0, t0 := i.Status().CPUSeconds, time.Now()
	time.Sleep(2 * time.Second)
	c1, t1 := i.Status().CPUSeconds, time.Now()
	cores := (c1 - c0) / t1.Sub(t0).Seconds()
	// The bound that matters is the upper one; the lower one only checks
	// that the loop ran at all (the machine is shared).
	t.Logf("a busy loop under cpu 0.5 used %.2f cores", cores)
	if cores > 0.7 || cores < 0.05 {
		t.Errorf("a busy loop under cpu 0.5 used %.2f cores, want 0.05–0.7", cores)
	}
}

// A version's group goes when it stops.
func TestCgroupRemovedAfterStop(t *testing.T) {
	s := cgroupSupervisor(t)
	cfg := appConfig("gone", "-child")
	i := startReady(t, s, cfg)
	g := s.opts.Cgroups.Group(string(i.Key()))
	pids, err := g.PIDs()
	if err != nil || len(pids) != 2 {
		t.Errorf("group holds pids %v (%v), want the app and its child", pids, err)
	}
	stop(t, s, i.Key())
	if g.Exists() {
		t.Errorf("group %s exists after Stop", g.Name())
	}
}

// A process is in its version's cgroup before its program runs, whether
// it was stopped at its exec to be put there (v1, tracing allowed) or
// started through the launch helper (v1, tracing refused); and it runs
// as the service's user, with the environment it was given.
func TestInItsGroupFromItsFirstInstruction(t *testing.T) {
	for _, tc := range []struct {
		name   string
		helper bool
	}{
		{"stopped at its exec", false},
		{"launch helper", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := traceRefused.Load()
			traceRefused.Store(tc.helper)
			t.Cleanup(func() { traceRefused.Store(prev) })
			s := cgroupSupervisor(t)
			if s.opts.Cgroups.V2() {
				t.Skip("cgroup v2 places the child as it is created; no stop or helper")
			}
			s.opts.RunAsUsers = os.Geteuid() == 0
			cfg := appConfig("first")
			cfg.Env = map[string]string{"FIRST": "yes"}
			i := startReady(t, s, cfg)
			lines := strings.Split(strings.TrimSpace(string(get(t, i.Addr(), "/cgroup-at-start"))), "\n")
			in := map[string]bool{}
			for _, l := range lines {
				// "ID:CONTROLLERS:PATH"
				parts := strings.SplitN(l, ":", 3)
				if len(parts) == 3 && strings.HasSuffix(parts[2], "/"+string(i.Key())) {
					for _, c := range strings.Split(parts[1], ",") {
						in[c] = true
					}
				}
			}
			for _, c := range []string{"memory", "cpu", "pids"} {
				if !in[c] {
					t.Errorf("the program's first code ran outside its %s group; /proc/self/cgroup:\n%s", c, strings.Join(lines, "\n"))
				}
			}
			if !strings.Contains(string(get(t, i.Addr(), "/env")), `"FIRST":"yes"`) {
				t.Error("the program did not get its environment")
			}
			if s.opts.RunAsUsers {
				pid := i.Status().PID
				st, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
				if err != nil {
					t.Fatal(err)
				}
				if uid := st.Sys().(*syscall.Stat_t).Uid; uid == 0 {
					t.Errorf("the program runs as root, want its service's user")
				}
			}
			if traceRefused.Load() != tc.helper {
				t.Errorf("tracing refused = %v after the start, want %v", traceRefused.Load(), tc.helper)
			}
		})
	}
}

// A program that cannot be run is reported as without cgroups, and does
// not make the supervisor take tracing for refused.
func TestUnrunnableProgramInCgroup(t *testing.T) {
	prev := traceRefused.Load()
	t.Cleanup(func() { traceRefused.Store(prev) })
	traceRefused.Store(false)
	s := cgroupSupervisor(t)
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/notexec", []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := appConfig("unrunnable")
	cfg.Dir, cfg.Exec = dir, []string{"notexec"}
	_, err := s.Start(cfg)
	if !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("Start of a program without exec permission: %v, want a permission error", err)
	}
	if traceRefused.Load() {
		t.Error("a program that cannot run made the supervisor take tracing for refused")
	}
}

// Where tracing is refused, the launch falls back to the helper: the
// process starts in its group all the same, and later launches go
// straight to the helper.
func TestTracingRefusedFallsBackToTheHelper(t *testing.T) {
	prev := traceRefused.Load()
	t.Cleanup(func() { traceRefused.Store(prev); traceStart = startTraced })
	traceRefused.Store(false)
	// As a refusal looks: the Cmd was started, and its child reported
	// EPERM before its exec.
	traceStart = func(cmd *exec.Cmd, g *cgroup.Group) error {
		cmd.SysProcAttr.Ptrace = true
		defer func() { cmd.SysProcAttr.Ptrace = false }()
		cmd.Path = "/nonexistent/" + cmd.Path
		cmd.Start()
		return &os.SyscallError{Syscall: "ptrace", Err: syscall.EPERM}
	}
	s := cgroupSupervisor(t)
	if s.opts.Cgroups.V2() {
		t.Skip("cgroup v2 needs neither")
	}
	i := startReady(t, s, appConfig("refused"))
	if !strings.Contains(string(get(t, i.Addr(), "/cgroup-at-start")), "/"+string(i.Key())) {
		t.Error("the program's first code ran outside its group")
	}
	if !traceRefused.Load() {
		t.Error("tracing refused is not remembered")
	}
}

// A start whose set-up fails leaves no group behind (the cleanup's
// removal of the daemon's groups would also fail on one).
func TestFailedSetUpLeavesNoGroup(t *testing.T) {
	s := cgroupSupervisor(t)
	cfg := appConfig("badcred")
	cfg.Credentials = map[string][]byte{"../escape": []byte("x")}
	if _, err := s.Start(cfg); err == nil {
		t.Fatal("Start with a bad credential name succeeded")
	}
	if g := s.opts.Cgroups.Group(string(cfg.Key())); g.Exists() {
		t.Errorf("group %s left after a failed start", g.Name())
	}
}

// TestRunOnceInItsGroup: a one-shot step (a release) runs under the
// version's limits, in a group of its own, and nothing it started
// outlives it — not even a process that left its process group.
func TestRunOnceInItsGroup(t *testing.T) {
	s := cgroupSupervisor(t)
	cfg := appConfig("once")
	cfg.Memory = 32 << 20
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A child in a session of its own: the process group's kill misses it.
	out, err := s.RunOnce(ctx, cfg, []string{"/bin/sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & p=$!; " +
		// Once it leads its own session (field 6 of its stat).
		"while [ \"$(cut -d' ' -f6 /proc/$p/stat)\" != $p ]; do sleep 0.01; done; echo $p"})
	if err != nil {
		t.Fatalf("RunOnce: %v\n%s", err, out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !bytes.Contains(b, []byte(") Z ")) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("pid %d, started by the step in a session of its own, outlived it", pid)
	}

	// 100 MiB touched under a 32 MiB limit: the kernel ends the step.
	out, err = s.RunOnce(ctx, cfg, []string{"/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"})
	if err == nil {
		t.Errorf("a step using 100 MiB under a 32 MiB limit succeeded: %s", out)
	}
	if left, err := s.opts.Cgroups.Groups(); err != nil || len(left) != 0 {
		t.Errorf("groups left after the steps: %v (%v)", left, err)
	}
}
