//go:build failpoints

package supervisor

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/failpoint"
)

// enableFailpoint arms point with terms until the test ends.
func enableFailpoint(t *testing.T, point, terms string) {
	t.Helper()
	if err := failpoint.Enable(point, terms); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { failpoint.Disable(point) })
}

// logged collects what a supervisor logs.
type logged struct {
	mu    sync.Mutex
	lines []string
}

func (l *logged) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logged) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// A record write that fails leaves a running process no record names:
// the next supervisor finds it by its environment and stops it.
func TestFailpointRecordWrite(t *testing.T) {
	enableFailpoint(t, "supervisor-before-record", "1*error")
	var log logged
	s1, root := newSupervisor(t, Options{Logf: log.logf})
	i := startReady(t, s1, appConfig("unrecorded"))
	pid := i.Status().PID
	waitFor(t, "the failed record write", func() bool {
		return log.has("writing its record: failpoint supervisor-before-record: injected")
	})
	if _, err := os.Stat(s1.recordPath(i.Key())); !os.IsNotExist(err) {
		t.Fatalf("record: %v, want none", err)
	}
	s1.Detach()
	if got := nextSupervisor(t, root).Leftovers(); len(got) != 1 || got[0] != i.Key() {
		t.Errorf("Leftovers() = %v, want %s", got, i.Key())
	}
	if !goneWithin(pid, 10*time.Second) {
		t.Errorf("pid %d, which no record names, still runs", pid)
	}
}

// A record removal that fails leaves a record naming a process that is
// gone: the next supervisor adopts nothing from it, and removes it.
func TestFailpointRecordRemove(t *testing.T) {
	enableFailpoint(t, "supervisor-before-record-remove", "1*error")
	s1, root := newSupervisor(t, Options{})
	cfg := appConfig("stale")
	i := startReady(t, s1, cfg)
	pid := i.Status().PID
	waitFor(t, "the record", func() bool {
		_, err := os.Stat(s1.recordPath(i.Key()))
		return err == nil
	})
	stop(t, s1, i.Key())
	if _, err := os.Stat(s1.recordPath(i.Key())); err != nil {
		t.Fatalf("record after a failed removal: %v, want it left", err)
	}
	if alive(pid) {
		t.Fatalf("pid %d runs after Stop", pid)
	}
	s2 := nextSupervisor(t, root)
	if _, ok, err := s2.Adopt(cfg); ok || err != nil {
		t.Errorf("Adopt from a stale record: %v, %v; want nothing adopted", ok, err)
	}
	if _, err := os.Stat(s1.recordPath(i.Key())); !os.IsNotExist(err) {
		t.Errorf("stale record after Adopt: %v, want it removed", err)
	}
}
