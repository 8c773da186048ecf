package supervisor

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// osThreads is the number of OS threads of this process.
func osThreads(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line in /proc/self/status")
	return 0
}

// Supervising a process must not hold an OS thread for it: waiting for each
// process's exit in a blocking syscall cost one thread per service (200
// services, 400 threads). Nor must checking its health.
func TestThreadsDoNotGrowWithProcesses(t *testing.T) {
	const n = 60
	s, _ := newSupervisor(t, Options{})
	before := osThreads(t)
	// One after the other: concurrent starts would each block in fork and
	// exec, and the runtime keeps the threads it made for them.
	for k := range n {
		cfg := appConfig(fmt.Sprintf("t%d", k))
		cfg.HealthInterval = 50 * time.Millisecond
		startReady(t, s, cfg)
	}
	// Every process checked a few times more.
	started := time.Now()
	time.Sleep(300 * time.Millisecond)
	after := osThreads(t)
	for _, st := range s.List() {
		if st.Health == nil || !st.Health.OK || !st.Health.At.After(started) {
			t.Errorf("%s: last health check %+v, want one passed since %v", st.Key, st.Health, started)
		}
	}
	t.Logf("OS threads: %d before, %d with %d processes", before, after, n)
	// A few threads for the start-ups' own syscalls are fine; one per
	// process is not.
	if grew := after - before; grew >= n/3 {
		t.Errorf("OS threads grew by %d (from %d to %d) for %d processes; want fewer than %d", grew, before, after, n, n/3)
	}
	// Nor an inotify instance each: a user gets only 128 of them
	// (fs.inotify.max_user_instances), and the 129th service would not start.
	if got := inotifyInstances(t); got > 1 {
		t.Errorf("%d inotify instances open for %d logs, want 1", got, n)
	}
}

// inotifyInstances counts this process's open inotify descriptors.
func inotifyInstances(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "anon_inode:inotify" {
			n++
		}
	}
	return n
}
