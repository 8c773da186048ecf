// Package cgroup puts a service's processes in a control group with memory,
// CPU and process-count limits, and reads what they use. It drives the
// unified hierarchy (cgroup v2) where it is mounted with those controllers,
// and the v1 `memory`, `cpu`, `cpuacct` and `pids` hierarchies otherwise.
//
// Every group of one daemon lives under a parent named after the daemon's
// root (hostel-<hash of ROOT>), so daemons on other roots of the same
// machine (tests, previews) never touch each other's groups.
package cgroup

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultPids is the most processes and threads a service's group may hold
// when its Limits say nothing: enough for any web app and its workers, and
// few enough that a fork bomb stops long before it starves the machine.
const DefaultPids = 4096

// cpuPeriod is the CFS period quotas are expressed in (100 ms, the kernel's
// default): a service with cpu 0.5 may run 50 ms of each 100 ms.
const cpuPeriod = 100 * time.Millisecond

// What a CFS quota can express, in CPUs. The kernel takes a quota in whole
// microseconds of each period, at least 1 ms (sched/core.c
// min_cfs_quota_period) and at most 2^44-1 µs (max_cfs_runtime: more is
// EINVAL since Linux 5.8, and wrapped around before). The spec refuses a
// cpu outside them; Create never writes one.
const (
	// MinCPU is a quota of 1 ms per 100 ms period.
	MinCPU = 0.01
	// MaxCPU is the largest whole number of CPUs under 2^44-1 µs per
	// 100 ms period: 175,921,860.
	MaxCPU = 175921860
	// CPUDecimals is how many decimals of a CPU a quota tells apart: one
	// microsecond of the 100 ms period is 0.00001 CPU.
	CPUDecimals = 5
)

// Quota bounds, in microseconds per cpuPeriod.
const (
	minQuota = 1000
	maxQuota = 1<<44 - 1
)

// cpuQuota is the CFS quota, in microseconds per cpuPeriod, of cpu CPUs:
// rounded to the nearest microsecond (0.29 CPU is 29000 µs, though 0.29 ×
// 100000 is 28999.999… in floating point) and held within what the kernel
// takes, so that no cpu wraps around to a tiny quota. 0 means no limit.
func cpuQuota(cpu float64) int64 {
	if !(cpu > 0) {
		return 0
	}
	q := math.Round(cpu * float64(cpuPeriod/time.Microsecond))
	return int64(min(max(q, minQuota), maxQuota))
}

// memoryLimit is the memory limit the kernel keeps for a limit of n bytes:
// it counts whole pages and would round down; rounding up here keeps at
// least what was asked for. 0 means no limit.
func memoryLimit(n int64) int64 {
	if n <= 0 {
		return 0
	}
	page := int64(os.Getpagesize())
	if n > math.MaxInt64-page {
		return math.MaxInt64 / page * page
	}
	return (n + page - 1) / page * page
}

// ErrUnavailable means the machine offers no cgroups this package can use:
// the daemon is not root, or the memory, cpu or pids controller is missing.
var ErrUnavailable = errors.New("cgroups with the memory, cpu and pids controllers are not available")

// Limits bound one service version's processes, all together.
type Limits struct {
	// Memory is the most memory, in bytes, the group may use (swap
	// included where the kernel accounts for it), rounded up to whole
	// pages; 0 means no limit. Past it the kernel's OOM killer ends a
	// process of the group.
	Memory int64
	// CPU is how many cores' worth of time the group may use (0.5 is half
	// a core), held within MinCPU..MaxCPU to the nearest 0.00001; 0 means
	// no limit.
	CPU float64
	// Pids is the most processes and threads the group may hold; 0 means
	// DefaultPids.
	Pids int64
}

// Usage is what a group's processes use.
type Usage struct {
	// MemoryBytes is the memory charged to the group now (page cache
	// included).
	MemoryBytes int64
	// CPUSeconds is the CPU time its processes used since the group was made.
	CPUSeconds float64
	// OOMKills counts the processes the kernel killed for exceeding Memory.
	OOMKills int64
}

// Hierarchy is the cgroup tree of one daemon root.
type Hierarchy struct {
	v2 bool
	// dirs are the parent directories of this root's groups: one for v2,
	// one per controller hierarchy for v1 (memory, cpu, cpuacct, pids;
	// comounted controllers share one).
	dirs []string
	// memory, cpu, cpuacct and pids are the parent directories that hold
	// each controller's files (all the same one for v2).
	memory, cpu, cpuacct, pids string
	// quickMoves is set where placing a process in its group never waits
	// for an RCU grace period (QuickMoves).
	quickMoves bool
}

// Name is the parent of root's groups, the same wherever root is opened.
func Name(root string) string {
	abs, err := filepath.Abs(root)
	if err != nil {
		abs = root
	}
	sum := sha256.Sum256([]byte(abs))
	return "hostel-" + hex.EncodeToString(sum[:6])
}

// Open finds the cgroup hierarchies of this machine and makes the parent of
// root's groups. It returns ErrUnavailable (wrapped) when there is nothing
// to enforce limits with.
func Open(root string) (*Hierarchy, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: the daemon is not root", ErrUnavailable)
	}
	mounts, err := readMounts("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	name := Name(root)
	h := &Hierarchy{}
	if v2, ok := mounts["cgroup2"]; ok && hasControllers(v2, "memory", "cpu", "pids") {
		h.v2, h.quickMoves = true, true
		dir := filepath.Join(v2, name)
		h.dirs = []string{dir}
		h.memory, h.cpu, h.cpuacct, h.pids = dir, dir, dir, dir
		// The controllers must be enabled for the children of the root
		// and of the parent.
		for _, d := range []string{v2, dir} {
			if err := mkdir(d); err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+memory +cpu +pids"), 0); err != nil {
				return nil, fmt.Errorf("cgroup: enabling controllers in %s: %w", d, err)
			}
		}
		return h, nil
	}
	for _, c := range []struct {
		ctrl string
		dst  *string
	}{{"memory", &h.memory}, {"cpu", &h.cpu}, {"cpuacct", &h.cpuacct}, {"pids", &h.pids}} {
		m, ok := mounts[c.ctrl]
		if !ok {
			return nil, fmt.Errorf("%w: no v1 %s controller is mounted", ErrUnavailable, c.ctrl)
		}
		*c.dst = filepath.Join(m, name)
		if !slices.Contains(h.dirs, *c.dst) {
			h.dirs = append(h.dirs, *c.dst)
		}
	}
	for _, d := range h.dirs {
		if err := mkdir(d); err != nil {
			return nil, err
		}
	}
	// Children account for their own children (the default on current
	// kernels, where the file may refuse the write once set).
	os.WriteFile(filepath.Join(h.memory, "memory.use_hierarchy"), []byte("1"), 0)
	// favordynmods on any v1 mount is the kernel's one switch for all of
	// them (boot option cgroup_favordynmods=true, or a mount option).
	_, h.quickMoves = mounts[favorDynmods]
	return h, nil
}

// favorDynmods is the mount option that makes moving a process between
// cgroups not wait for an RCU grace period, at some cost to every fork
// and exit on the machine.
const favorDynmods = "favordynmods"

// V2 reports whether the hierarchy is the unified one.
func (h *Hierarchy) V2() bool { return h.v2 }

// QuickMoves reports whether a process is placed in its group without
// waiting for the kernel: on v2, a process is born in its group
// (CLONE_INTO_CGROUP); on v1 it is moved there after its exec, and that
// move waits for an RCU grace period (up to ~20 ms on a busy machine, on
// a wake's path) unless the kernel favors such moves (favordynmods).
func (h *Hierarchy) QuickMoves() bool { return h.quickMoves }

// readMounts maps each v1 controller to where its hierarchy is mounted, and
// "cgroup2" to the unified hierarchy's mount point.
func readMounts(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// 35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || f[3] != "/" {
			continue // a bind mount of a subtree is not the hierarchy's root
		}
		switch g[0] {
		case "cgroup2":
			if _, seen := out["cgroup2"]; !seen {
				out["cgroup2"] = f[4]
			}
		case "cgroup":
			for _, opt := range strings.Split(g[2], ",") {
				if _, seen := out[opt]; !seen {
					out[opt] = f[4]
				}
			}
		}
	}
	return out, sc.Err()
}

func hasControllers(dir string, want ...string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return false
	}
	have := strings.Fields(string(b))
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("cgroup: %w", err)
	}
	return nil
}

// Group is one service version's cgroup.
type Group struct {
	h    *Hierarchy
	name string
}

// Group returns the group called name (SERVICE-VERSION), whether or not it
// exists: Create makes it.
func (h *Hierarchy) Group(name string) *Group { return &Group{h: h, name: name} }

// Name is the group's name under the root's parent.
func (g *Group) Name() string { return g.name }

func (g *Group) dir(parent string) string { return filepath.Join(parent, g.name) }

// Dir is the group's directory in the unified hierarchy, for
// SysProcAttr.CgroupFD; "" on v1.
func (g *Group) Dir() string {
	if !g.h.v2 {
		return ""
	}
	return g.dir(g.h.dirs[0])
}

// ProcsFiles are the cgroup.procs files a process writes its pid to to join
// the group, one per hierarchy.
func (g *Group) ProcsFiles() []string {
	out := make([]string, len(g.h.dirs))
	for n, d := range g.h.dirs {
		out[n] = filepath.Join(g.dir(d), "cgroup.procs")
	}
	return out
}

// Create makes the group (or keeps it, if it exists) and sets its limits.
func (g *Group) Create(l Limits) error {
	for _, d := range g.h.dirs {
		if err := mkdir(g.dir(d)); err != nil {
			return err
		}
	}
	pids := l.Pids
	if pids <= 0 {
		pids = DefaultPids
	}
	quota := "max"
	if q := cpuQuota(l.CPU); q > 0 {
		quota = strconv.FormatInt(q, 10)
	}
	period := strconv.FormatInt(int64(cpuPeriod/time.Microsecond), 10)
	var writes []write
	if g.h.v2 {
		mem, swap := "max", "max"
		if m := memoryLimit(l.Memory); m > 0 {
			mem, swap = strconv.FormatInt(m, 10), "0"
		}
		writes = []write{
			{g.dir(g.h.memory), "memory.max", mem, true},
			{g.dir(g.h.memory), "memory.swap.max", swap, false},
			{g.dir(g.h.cpu), "cpu.max", quota + " " + period, true},
			{g.dir(g.h.pids), "pids.max", strconv.FormatInt(pids, 10), true},
		}
	} else {
		mem := "-1"
		if m := memoryLimit(l.Memory); m > 0 {
			mem = strconv.FormatInt(m, 10)
		}
		if quota == "max" {
			quota = "-1"
		}
		memDir := g.dir(g.h.memory)
		// memsw (memory+swap) must stay at or above the memory limit:
		// lift it first, then set both, so no swap is used past the limit.
		writes = []write{
			{memDir, "memory.memsw.limit_in_bytes", "-1", false},
			{memDir, "memory.limit_in_bytes", mem, true},
			{memDir, "memory.memsw.limit_in_bytes", mem, false},
			{g.dir(g.h.cpu), "cpu.cfs_period_us", period, true},
			{g.dir(g.h.cpu), "cpu.cfs_quota_us", quota, true},
			{g.dir(g.h.pids), "pids.max", strconv.FormatInt(pids, 10), true},
		}
	}
	for _, w := range writes {
		err := os.WriteFile(filepath.Join(w.dir, w.file), []byte(w.value), 0)
		// Files a kernel may lack (swap accounting off) are optional.
		if err != nil && (w.required || !errors.Is(err, fs.ErrNotExist)) {
			return fmt.Errorf("cgroup %s: setting %s to %s: %w", g.name, w.file, w.value, err)
		}
	}
	return nil
}

type write struct {
	dir, file, value string
	required         bool
}

// Exists reports whether the group has been made.
func (g *Group) Exists() bool {
	_, err := os.Stat(g.dir(g.h.dirs[0]))
	return err == nil
}

// Join moves process pid (and, on v1, only that process, not its threads'
// later siblings: a process joins before it makes any) into the group.
func (g *Group) Join(pid int) error {
	return JoinFiles(g.ProcsFiles(), pid)
}

// JoinFiles writes pid to each of the cgroup.procs files: the launch helper's
// way in, which knows only the files.
func JoinFiles(procs []string, pid int) error {
	for _, f := range procs {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("joining cgroup: %w", err)
		}
	}
	return nil
}

// PIDs lists the processes in the group.
func (g *Group) PIDs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(g.dir(g.h.pids), "cgroup.procs"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out, nil
}

// Kill sends SIGKILL to every process in the group until none is left, so
// that a process that double-forked out of its process group still ends
// with its version.
func (g *Group) Kill() error {
	if g.h.v2 {
		err := os.WriteFile(filepath.Join(g.Dir(), "cgroup.kill"), []byte("1"), 0)
		switch {
		case err == nil:
			return g.waitEmpty()
		case !g.Exists():
			return nil
		}
		// A kernel before 5.14 has no cgroup.kill: kill one by one.
	}
	// v1 has no cgroup.kill: a process may fork while we kill, so go
	// round until the list is empty.
	for range 100 {
		pids, err := g.PIDs()
		if err != nil || len(pids) == 0 {
			return err
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("cgroup %s: processes left after SIGKILL", g.name)
}

// waitEmpty waits (briefly) for killed processes to leave the group.
func (g *Group) waitEmpty() error {
	for range 200 {
		pids, err := g.PIDs()
		if err != nil || len(pids) == 0 {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("cgroup %s: processes left after SIGKILL", g.name)
}

// Remove deletes the group; it must hold no process. Removing a group that
// does not exist does nothing.
func (g *Group) Remove() error {
	var errs []error
	for _, d := range g.h.dirs {
		err := os.Remove(g.dir(d))
		// Exiting processes may take a moment to leave the group.
		for n := 0; errors.Is(err, syscall.EBUSY) && n < 100; n++ {
			time.Sleep(10 * time.Millisecond)
			err = os.Remove(g.dir(d))
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Usage reads what the group's processes use.
func (g *Group) Usage() (Usage, error) {
	var u Usage
	var err error
	if g.h.v2 {
		d := g.Dir()
		if u.MemoryBytes, err = readInt(filepath.Join(d, "memory.current")); err != nil {
			return u, err
		}
		usec, err := readKey(filepath.Join(d, "cpu.stat"), "usage_usec")
		if err != nil {
			return u, err
		}
		u.CPUSeconds = float64(usec) / 1e6
		u.OOMKills, err = readKey(filepath.Join(d, "memory.events"), "oom_kill")
		return u, err
	}
	if u.MemoryBytes, err = readInt(filepath.Join(g.dir(g.h.memory), "memory.usage_in_bytes")); err != nil {
		return u, err
	}
	ns, err := readInt(filepath.Join(g.dir(g.h.cpuacct), "cpuacct.usage"))
	if err != nil {
		return u, err
	}
	u.CPUSeconds = float64(ns) / 1e9
	u.OOMKills, err = readKey(filepath.Join(g.dir(g.h.memory), "memory.oom_control"), "oom_kill")
	return u, err
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// readKey reads the value of key in a flat-keyed file ("key value" lines).
func readKey(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}

// Groups lists the names of root's groups that exist.
func (h *Hierarchy) Groups() ([]string, error) {
	ents, err := os.ReadDir(h.dirs[0])
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Remove deletes the parent of root's groups; it fails while a group is
// left in it.
func (h *Hierarchy) Remove() error {
	var errs []error
	for _, d := range h.dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}
