package cgroup

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// open returns the hierarchy for a fresh root, removed at cleanup; it skips
// where cgroups cannot be used (not root, controllers missing).
func open(t *testing.T) *Hierarchy {
	t.Helper()
	h, err := Open(t.TempDir())
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("no cgroups to test with: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Remove(); err != nil {
			t.Errorf("removing the root's parent group: %v", err)
		}
	})
	return h
}

func TestReadMounts(t *testing.T) {
	mountinfo := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:32 /sub /mnt/elsewhere rw,relatime - cgroup cgroup rw,pids
39 31 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /run/fav rw,relatime - cgroup cgroup rw,favordynmods,name=fav
`
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte(mountinfo), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readMounts(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
		"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids", "cgroup2": "/sys/fs/cgroup/unified",
		favorDynmods: "/run/fav",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("mount of %s = %q, want %q", k, got[k], v)
		}
	}
}

func TestNameIsPerRoot(t *testing.T) {
	a, b := Name("/var/lib/hostel"), Name("/var/lib/hostel2")
	if a == b || !strings.HasPrefix(a, "hostel-") {
		t.Errorf("Name = %q and %q; want distinct hostel-<hash> names", a, b)
	}
	if Name("/var/lib/hostel/") != a {
		t.Errorf("Name depends on a trailing slash")
	}
}

// A group's pids limit stops forks past it.
func TestPidsLimit(t *testing.T) {
	h := open(t)
	g := h.Group("pids-test")
	if err := g.Create(Limits{Pids: 5}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Kill(); g.Remove() })
	// The shell waits to be moved into the group, then forks 20 sleeps.
	cmd := exec.Command("/bin/sh", "-c", `read x; for i in $(seq 20); do sleep 100 & done; echo forked`)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	// A file, not a pipe: the sleeps would hold a pipe open, and Wait with it.
	out, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Join(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	stdin.Write([]byte("go\n"))
	stdin.Close()
	cmd.Wait()
	pids, err := g.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) > 5 || len(pids) == 0 {
		t.Errorf("%d processes in the group, want 1 to 5 (pids limit 5)", len(pids))
	}
	b, _ := os.ReadFile(out.Name())
	// dash says "Cannot fork", bash "Resource temporarily unavailable"; a
	// bare "fork" would match the "forked" of a shell that was never stopped.
	if !bytes.Contains(b, []byte("Cannot fork")) && !bytes.Contains(b, []byte("Resource temporarily unavailable")) {
		t.Errorf("the shell's forks past the limit did not fail; output:\n%s", b)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if g.Exists() {
		t.Errorf("group exists after Remove")
	}
}

// The v2 mechanics the supervisor relies on — a child placed in its group
// as the kernel creates it (CgroupFD), listed, killed at once through
// cgroup.kill, removed — tried on this machine's unified hierarchy, which
// has no controllers to limit with (they are bound to v1 here) but has the
// rest.
func TestV2PlacementAndKill(t *testing.T) {
	mounts, err := readMounts("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	unified, ok := mounts["cgroup2"]
	if os.Geteuid() != 0 || !ok {
		t.Skip("needs root and a cgroup2 mount")
	}
	parent := filepath.Join(unified, Name(t.TempDir()))
	if err := mkdir(parent); err != nil {
		t.Skipf("cannot make a group in %s: %v", unified, err)
	}
	h := &Hierarchy{v2: true, dirs: []string{parent}, memory: parent, cpu: parent, cpuacct: parent, pids: parent}
	t.Cleanup(func() { h.Remove() })
	g := h.Group("v2-test")
	if err := mkdir(filepath.Join(parent, "v2-test")); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(g.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("/bin/sh", "-c", "sleep 100 & sleep 100")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var pids []int
	for range 100 {
		if pids, _ = g.PIDs(); len(pids) == 3 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !slices.Contains(pids, cmd.Process.Pid) || len(pids) != 3 {
		t.Fatalf("group holds %v, want the shell %d and its two sleeps", pids, cmd.Process.Pid)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Error("the shell exited cleanly; want it killed")
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if g.Exists() {
		t.Error("group exists after Remove")
	}
}

// TestQuickMoves: on v1, a hierarchy favors quick moves exactly while some
// cgroup v1 mount has favordynmods (the kernel's one switch for all).
func TestQuickMoves(t *testing.T) {
	h := open(t)
	if h.V2() {
		if !h.QuickMoves() {
			t.Error("v2: QuickMoves false; processes are born in their group")
		}
		return
	}
	mounts, err := readMounts("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	_, on := mounts[favorDynmods]
	if h.QuickMoves() != on {
		t.Fatalf("QuickMoves = %v with favordynmods mounted: %v", h.QuickMoves(), on)
	}
	if on {
		return
	}
	dir := t.TempDir()
	if err := syscall.Mount("cgroup", dir, "cgroup", 0, "none,name=hostel-test-fav,favordynmods"); err != nil {
		t.Skipf("this kernel does not mount a v1 hierarchy with favordynmods: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	if h2 := open(t); !h2.QuickMoves() {
		t.Error("QuickMoves false with a favordynmods hierarchy mounted")
	}
}

// TestCPUQuota: a cpu becomes the quota it says, to the microsecond, and
// one past what the kernel takes is held at its bound instead of wrapping
// around (1e300 once became a quota of 1 ms: 1 % of a CPU).
func TestCPUQuota(t *testing.T) {
	tests := []struct {
		cpu  float64
		want int64
	}{
		{0, 0},
		{-1, 0},
		{0.5, 50000},
		{0.29, 29000}, // 28999.999… in floating point
		{0.57, 57000},
		{1.00001, 100001},
		{MinCPU, minQuota},
		{MaxCPU, MaxCPU * 100000},
		{1e-9, minQuota},
		{1e9, maxQuota},
		{1e300, maxQuota},
	}
	for _, tt := range tests {
		if got := cpuQuota(tt.cpu); got != tt.want {
			t.Errorf("cpuQuota(%v) = %d, want %d", tt.cpu, got, tt.want)
		}
	}
	// The bounds are the kernel's: MaxCPU is the last whole CPU under
	// max_cfs_runtime, MinCPU is min_cfs_quota_period.
	if q := cpuQuota(MaxCPU + 1); q != maxQuota || (MaxCPU+1)*100000 <= maxQuota {
		t.Errorf("MaxCPU+1 fits the kernel's bound (quota %d): MaxCPU is too small", q)
	}
}

// TestMemoryLimit: a limit is whole pages, never less than asked for.
func TestMemoryLimit(t *testing.T) {
	page := int64(os.Getpagesize())
	tests := []struct{ n, want int64 }{
		{0, 0},
		{1, page},
		{page, page},
		{page + 1, 2 * page},
		{512 << 20, 512 << 20},
		{1<<63 - 1, (1<<63 - 1) / page * page},
	}
	for _, tt := range tests {
		if got := memoryLimit(tt.n); got != tt.want {
			t.Errorf("memoryLimit(%d) = %d, want %d", tt.n, got, tt.want)
		}
	}
}
