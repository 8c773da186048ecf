package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// diskUsage is what the files of dir take on disk.
func diskUsage(t testing.TB, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue // rotated away meanwhile
		}
		n += fi.Sys().(*syscall.Stat_t).Blocks * 512
	}
	return n
}

// A service writing 200 MiB as fast as it can ends with its logs within
// the cap: max growing plus three rotated files of at most 2 × max, the
// flood dropped with a line that says so. (Before, one rotation copied
// all of it: a 200 MiB .log.1.)
func TestLogCapHoldsAgainstAFlood(t *testing.T) {
	const logMax = 4 << 20
	s, root := newSupervisor(t, Options{LogMaxBytes: logMax})
	i := startReady(t, s, appConfig("flood"))
	dir := filepath.Join(root, "logs", "flood")

	done := make(chan struct{})
	go func() {
		defer close(done)
		get(t, i.Addr(), "/flood?mb=200")
	}()
	// The peak while the flood runs depends on how fast this machine lets
	// the watch react: it is logged, not asserted.
	var peak int64
	for flooding := true; flooding; {
		select {
		case <-done:
			flooding = false
		default:
		}
		peak = max(peak, diskUsage(t, dir))
	}
	t.Logf("peak on disk during the flood: %d MiB", peak>>20)
	// One write after the flood, so that the watch checks the final size.
	get(t, i.Addr(), "/spam?n=1")
	const limit = logMax + keptLogs*2*logMax
	waitFor(t, fmt.Sprintf("the logs to take at most %d MiB", limit>>20), func() bool { return diskUsage(t, dir) <= limit })
	// What was dropped depends on how far the rotation fell behind (the
	// line that says so is TestLogFileRotation's): logged, not asserted.
	t.Logf("dropped: %d MiB", i.Status().LogDropped>>20)
}

// On a full disk, the log of a version that never got ready (here a crash
// loop that filled the disk) is removed, and the space is back for what
// comes next.
func TestLogOfFailedVersionRemovedOnFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	t.Parallel()
	root, err := os.MkdirTemp("", "hs")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", root).CombinedOutput(); err != nil {
		os.Remove(root)
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("umount", "-l", root).Run()
		os.Remove(root)
	})
	// Ballast leaves 300 KiB free: less than the log's rotation size, so
	// the crash loop's log fills the disk rather than being rotated.
	var st syscall.Statfs_t
	if err := syscall.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	ballast := int64(st.Bavail)*st.Bsize - 300<<10
	if err := os.WriteFile(filepath.Join(root, "ballast"), make([]byte, ballast), 0o600); err != nil {
		t.Fatal(err)
	}
	s := New(Options{Root: root, Logf: t.Logf, LogMaxBytes: 1 << 20})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s.StopAll(ctx)
	})
	cfg := appConfig("filler", "-fill")
	i, err := s.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := i.WaitReady(context.Background()); !errors.Is(err, ErrFailed) {
		t.Fatalf("WaitReady: %v, want ErrFailed", err)
	}
	<-i.done
	if _, err := os.Stat(i.Status().LogPath); !os.IsNotExist(err) {
		t.Errorf("the failed version's log is still there (%v)", err)
	}
	if err := syscall.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * st.Bsize; free < 200<<10 {
		t.Errorf("%d KiB free after the failed version went, want its space back", free>>10)
	}
	// The next version starts and gets ready.
	next := appConfig("next")
	startReady(t, s, next)
}

// A log that grew past its cap while no daemon watched it (a service that
// kept writing while the daemon was down) is trimmed when the next
// supervisor takes the version back, not only at the service's next
// write, which may never come.
func TestLogFloodedWhileDetachedTrimmedAtAdopt(t *testing.T) {
	t.Parallel()
	const logMax = 1 << 20
	s1, root := newSupervisor(t, Options{LogMaxBytes: logMax})
	cfg := appConfig("quiet")
	i := startReady(t, s1, cfg)
	log := i.Status().LogPath
	s1.Detach()
	// Appended as the service would have: 3 × max, past the flood's bound.
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 3*logMax)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s2 := New(Options{Root: root, Logf: t.Logf, LogMaxBytes: logMax})
	t.Cleanup(func() { s2.StopAll(context.Background()) })
	if _, ok, err := s2.Adopt(cfg); err != nil || !ok {
		t.Fatalf("Adopt: %v, %v", ok, err)
	}
	waitFor(t, "the log to be trimmed with no write", func() bool {
		fi, err := os.Stat(log)
		return err == nil && fi.Size() <= logMax
	})
}
