package supervisor

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"hostel/internal/spec"
)

// A daemon killed in the middle of a launch leaves a process that started
// but has no record yet (its record is written once its pid is known), and
// the next daemon, which adopts by record, would never see it: it would
// run beside the version started again, on no route, until the machine
// restarts. So processes are also found by what the supervisor put on them
// before they ran: their environment names their RUNTIME_DIRECTORY,
// ROOT/run/SERVICE-VERSION, which no other root's processes share, and
// with cgroups they sit in their version's group, which a process cannot
// leave. At start, before anything is adopted, whatever of this root runs
// for a version that has no live record is stopped. (A launch after a
// crash also leaves a record naming the old, dead process: that version's
// new process is stopped too, and the version started again.)

// Leftovers stops every process of this root whose version no live record
// accounts for, removes cgroups, runtime directories and credentials
// directories no live record holds, and removes the temporary files of
// record writes that were cut short. It returns the keys of the versions
// whose processes it stopped. Call it at start, before adopting or
// starting anything, and at shutdown once everything stopped.
func (s *Supervisor) Leftovers() []spec.VersionKey {
	run := filepath.Join(s.opts.Root, "run")
	tmps, _ := filepath.Glob(filepath.Join(run, ".*.tmp-*"))
	for _, t := range tmps {
		if err := os.Remove(t); err == nil {
			s.opts.Logf("supervisor: removed %s, left by a write cut short", t)
		}
	}

	// Versions whose record names a process that runs: the caller adopts
	// (or stops) them, with whatever their process started.
	live := map[spec.VersionKey]bool{}
	names, _ := filepath.Glob(filepath.Join(run, "*.json"))
	for _, n := range names {
		key := spec.VersionKey(strings.TrimSuffix(filepath.Base(n), ".json"))
		r, err := s.readRecord(key)
		if err != nil || r == nil {
			continue
		}
		if r.live() {
			live[key] = true
		}
	}

	found := map[int]spec.VersionKey{}
	for pid, key := range s.processesByEnv(run) {
		found[pid] = key
	}
	if h := s.opts.Cgroups; h != nil {
		groups, _ := h.Groups()
		for _, name := range groups {
			pids, _ := h.Group(name).PIDs()
			for _, pid := range pids {
				found[pid] = spec.VersionKey(name)
			}
		}
	}

	var stopped []spec.VersionKey
	seen := map[spec.VersionKey]bool{}
	var wg sync.WaitGroup
	for pid, key := range found {
		pgid, err := syscall.Getpgid(pid)
		if err != nil || live[key] || pid == os.Getpid() {
			continue
		}
		if !seen[key] {
			seen[key] = true
			stopped = append(stopped, key)
		}
		s.opts.Logf("supervisor: %s: stopping pid %d, which runs without a record (a launch cut short)", key, pid)
		wg.Go(func() { stopLeftover(pid, pgid) })
	}
	wg.Wait()

	if h := s.opts.Cgroups; h != nil {
		groups, _ := h.Groups()
		for _, name := range groups {
			if live[spec.VersionKey(name)] {
				continue
			}
			g := h.Group(name)
			if err := g.Kill(); err != nil {
				s.opts.Logf("supervisor: cgroup %s: %v", name, err)
			}
			if err := g.Remove(); err != nil {
				s.opts.Logf("supervisor: cgroup %s: %v", name, err)
			}
		}
	}
	s.removeStaleDirs(run, live)
	return stopped
}

// removeStaleDirs removes the runtime directories in run (ROOT/run/KEY, and
// ROOT/run/KEY.once of release steps) and the credentials directories in
// shmBase that no live record holds. A launch makes them before its
// process starts, and its record comes after: a daemon killed in between
// leaves them behind, and nothing else would remove them if the version
// is not started again. A live record's process is adopted, and keeps its
// own, as does an instance this supervisor runs. Call it once the
// processes that used them have stopped.
func (s *Supervisor) removeStaleDirs(run string, live map[spec.VersionKey]bool) {
	held := func(key spec.VersionKey) bool {
		_, known := s.Get(key)
		return known || live[key]
	}
	ents, _ := os.ReadDir(run)
	for _, e := range ents {
		if !e.IsDir() || held(spec.VersionKey(e.Name())) {
			continue
		}
		dir := filepath.Join(run, e.Name())
		// Credentials go first, zeroed: their directory is read-only.
		err := removeCredentialsDir(filepath.Join(dir, "credentials"))
		if err = errors.Join(err, os.RemoveAll(dir)); err != nil {
			s.opts.Logf("supervisor: removing %s, left by a launch cut short: %v", dir, err)
			continue
		}
		s.opts.Logf("supervisor: removed %s, left by a launch cut short", dir)
	}
	base, err := s.shmBase()
	if err != nil || !ownDir(base) {
		return // never made, or not ours to clean
	}
	ents, _ = os.ReadDir(base)
	for _, e := range ents {
		if held(spec.VersionKey(e.Name())) {
			continue
		}
		dir := filepath.Join(base, e.Name())
		if err := removeCredentialsDir(dir); err != nil {
			s.opts.Logf("supervisor: removing %s, left by a launch cut short: %v", dir, err)
			continue
		}
		s.opts.Logf("supervisor: removed %s, left by a launch cut short", dir)
	}
}

// processesByEnv finds the processes whose environment holds
// RUNTIME_DIRECTORY=RUN/KEY, by key.
func (s *Supervisor) processesByEnv(run string) map[int]spec.VersionKey {
	out := map[int]spec.VersionKey{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	prefix := []byte("RUNTIME_DIRECTORY=" + run + "/")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(b, []byte{0}) {
			if rest, ok := bytes.CutPrefix(kv, prefix); ok && len(rest) > 0 && !bytes.ContainsRune(rest, '/') {
				out[pid] = spec.VersionKey(rest)
				break
			}
		}
	}
	return out
}

// leftoverGrace is how long a leftover process gets between SIGTERM and
// SIGKILL: it never served through this daemon, so it gets less than a
// stop_grace, and the daemon's start waits for it.
const leftoverGrace = 5 * time.Second

// stopLeftover ends pid and its process group, and waits until pid is gone
// so that the port it may hold is free for what starts next.
func stopLeftover(pid, pgid int) {
	ticks, err := procStartTicks(pid)
	if err != nil {
		return
	}
	exited, stop := watchExit(pid, ticks)
	defer stop()
	// A process that leads its own group (as every launch does) takes its
	// group with it; one in another's group goes alone.
	target := pid
	if pgid == pid {
		target = -pid
	}
	syscall.Kill(target, syscall.SIGTERM)
	t := time.NewTimer(leftoverGrace)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		syscall.Kill(target, syscall.SIGKILL)
		<-exited
	}
	if pgid == pid {
		syscall.Kill(-pid, syscall.SIGKILL) // what is left of its group
	}
}
