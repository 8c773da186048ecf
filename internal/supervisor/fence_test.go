package supervisor

import (
	"errors"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"hostel/internal/spec"
)

// fenceClock is a fence a test moves: until when Fenced instances may run.
type fenceClock struct {
	mu    sync.Mutex
	until time.Time
}

func (f *fenceClock) get() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.until
}

func (f *fenceClock) set(t time.Time) {
	f.mu.Lock()
	f.until = t
	f.mu.Unlock()
}

// TestFence: a Fenced instance runs while the fence holds (moved on by
// renewals); once it lapses, its process is stopped within FenceGrace
// and a fenced start is refused; once it holds again, the instance runs
// again. An instance not Fenced runs on throughout.
func TestFence(t *testing.T) {
	f := &fenceClock{until: time.Now().Add(time.Second)}
	s, _ := newSupervisor(t, Options{Fence: f.get})
	fenced := appConfig("lock")
	fenced.Fenced = true
	plain := appConfig("shop")
	lock := startReady(t, s, fenced)
	shop := startReady(t, s, plain)
	first, shopPID := lock.Status().PID, shop.Status().PID

	// Renewed, past the first bound: it runs on.
	for range 3 {
		f.set(time.Now().Add(time.Second))
		time.Sleep(500 * time.Millisecond)
	}
	if st := lock.Status(); st.PID != first || !alive(first) {
		t.Fatalf("fenced instance while renewed: pid %d (was %d), alive %v", st.PID, first, alive(first))
	}

	lapsed := time.Now().Add(200 * time.Millisecond)
	f.set(lapsed)
	if !goneWithin(first, 200*time.Millisecond+FenceGrace+2*time.Second) {
		t.Fatalf("pid %d runs on %s after its fence lapsed", first, time.Since(lapsed))
	}
	waitFor(t, "the fenced instance stopped", func() bool { st := lock.Status(); return st.State == StateStopped && st.PID == 0 })
	other := appConfig("lock")
	other.Fenced, other.Version = true, "ba9876543210"
	if _, err := s.Start(other); !errors.Is(err, ErrFenced) {
		t.Errorf("start of a fenced instance past the fence: %v, want ErrFenced", err)
	}
	if !alive(shopPID) {
		t.Errorf("an instance not fenced stopped with the fence")
	}
	time.Sleep(300 * time.Millisecond)
	if st := lock.Status(); st.PID != 0 {
		t.Fatalf("fenced instance started again (pid %d) while the fence does not hold", st.PID)
	}

	f.set(time.Now().Add(time.Hour))
	waitFor(t, "the fenced instance running again", func() bool { st := lock.Status(); return st.PID != 0 && st.PID != first && st.Ready })
}

// TestKillFenced: what outlives the daemon stops the recorded processes
// of Fenced instances, and only those.
func TestKillFenced(t *testing.T) {
	s, root := newSupervisor(t, Options{})
	fenced := appConfig("lock")
	fenced.Fenced = true
	lock := startReady(t, s, fenced)
	shop := startReady(t, s, appConfig("shop"))
	waitFor(t, "the records", func() bool {
		_, a := s.Recorded(lock.Key())
		_, b := s.Recorded(shop.Key())
		return a && b
	})
	lockPID, shopPID := lock.Status().PID, shop.Status().PID
	t.Cleanup(func() { syscall.Kill(-shopPID, syscall.SIGKILL) })
	s.Detach() // the daemon dies; its processes run on
	got := KillFenced(root)
	if !slices.Equal(got, []spec.VersionKey{lock.Key()}) {
		t.Errorf("KillFenced: %v, want [%s]", got, lock.Key())
	}
	if alive(lockPID) {
		t.Errorf("fenced pid %d runs on", lockPID)
	}
	if !alive(shopPID) {
		t.Errorf("pid %d, not fenced, was stopped", shopPID)
	}
	if got := KillFenced(root); len(got) != 0 {
		t.Errorf("KillFenced again: %v, want none (gone already)", got)
	}
}
