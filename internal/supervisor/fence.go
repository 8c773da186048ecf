package supervisor

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"hostel/internal/spec"
)

// Fencing. An exclusive service of a cluster runs once in the whole
// cluster: once its node's lease ends at the store, the engine may start
// it on another node. So its instance on this node (Config.Fenced) runs
// only while the node's fence holds (Options.Fence: until when the lease
// lives at the store at least, less a margin) — checked before every
// launch and watched while its process runs: past it, the process is
// stopped (SIGTERM, SIGKILL after FenceGrace) and the instance waits,
// stopped, until the fence holds again (its lease renewed after all, or
// the node rejoined with a new one) or it is stopped for good. What stops
// a fenced process when no daemon runs, or while its daemon is frozen,
// is KillFenced, in the process that outlives the daemon (the holder).

// FenceGrace is how long a fenced process is given after SIGTERM before
// SIGKILL, whatever its stop grace: it must be gone before the lease can
// end at the store, which the fence's margin covers.
const FenceGrace = 500 * time.Millisecond

// fenceEvery is how often an instance fenced off looks whether the fence
// holds again.
const fenceEvery = 100 * time.Millisecond

// ErrFenced is Start's error for a Fenced instance while the fence does
// not hold.
var ErrFenced = errors.New("fenced: this node's lease in the store may end before it would run (its renewals do not go through), and another node may run it then")

// fenceHolds reports whether a Fenced instance may run now.
func (s *Supervisor) fenceHolds() bool {
	return s.opts.Fence == nil || time.Now().Before(s.opts.Fence())
}

// fenceLapsed returns a channel closed once the fence no longer holds,
// for a Fenced instance (nil otherwise: never), and a func that ends
// the watch.
func (i *Instance) fenceLapsed() (<-chan struct{}, func()) {
	if !i.cfg.Fenced || i.s.opts.Fence == nil {
		return nil, func() {}
	}
	lapsed, stop := make(chan struct{}), make(chan struct{})
	go func() {
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			until := i.s.opts.Fence()
			if !time.Now().Before(until) {
				close(lapsed)
				return
			}
			// Renewals move the fence on: look again when it would lapse.
			t.Reset(time.Until(until))
		}
	}()
	var once sync.Once
	return lapsed, func() { once.Do(func() { close(stop) }) }
}

// awaitFence waits, its process stopped, until the fence holds again. It
// returns false once the instance was stopped or let go meanwhile: then
// it has finished.
func (i *Instance) awaitFence() bool {
	if !i.cfg.Fenced || i.s.fenceHolds() {
		return true
	}
	i.s.opts.Logf("supervisor: %s: %v; it starts again once the lease is renewed", i.key, ErrFenced)
	i.mu.Lock()
	i.state, i.lastErr = StateStopped, ErrFenced.Error()
	i.broadcastLocked()
	i.mu.Unlock()
	t := time.NewTicker(fenceEvery)
	defer t.Stop()
	for !i.s.fenceHolds() {
		select {
		case <-t.C:
		case <-i.stopReq:
			i.finish(StateStopped, "")
			return false
		case <-i.detachReq:
			i.release(nil)
			return false
		}
	}
	return true
}

// terminateFenced stops p as terminate does, with FenceGrace at most.
func (i *Instance) terminateFenced(p *proc) {
	i.s.opts.Logf("supervisor: %s: %v; stopping pid %d", i.key, ErrFenced, p.pid)
	_ = unix.Kill(-p.pid, unix.SIGTERM)
	t := time.NewTimer(min(i.cfg.StopGrace, FenceGrace))
	select {
	case <-p.exited:
		t.Stop()
	case <-t.C:
		_ = unix.Kill(-p.pid, unix.SIGKILL)
		<-p.exited
	}
	i.reap(p)
}

// KillFenced stops every recorded process under root whose instance is
// Fenced (SIGTERM, SIGKILL after FenceGrace), all at once, and returns
// their keys once they are gone. It is for a process other than the
// daemon — which may be dead, or frozen — to fence the node (the holder,
// handover.RunHolder): it trusts a record's pid only with its start time,
// and leaves the records and directories to the next daemon, which finds
// the processes gone.
func KillFenced(root string) []spec.VersionKey {
	names, _ := filepath.Glob(filepath.Join(root, "run", "*.json"))
	s := &Supervisor{opts: Options{Root: root}}
	var mu sync.Mutex
	var out []spec.VersionKey
	var wg sync.WaitGroup
	for _, n := range names {
		key := spec.VersionKey(strings.TrimSuffix(filepath.Base(n), ".json"))
		r, err := s.readRecord(key)
		if err != nil || r == nil || !r.Config.Fenced || !r.live() {
			continue
		}
		wg.Go(func() {
			killRecorded(r, FenceGrace)
			mu.Lock()
			out = append(out, key)
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}
