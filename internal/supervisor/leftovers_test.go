package supervisor

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"hostel/internal/spec"
)

// A process whose record was never written (the daemon died between the
// start and the record) is found and stopped by the next supervisor's
// Leftovers; a recorded one is left for adoption; a torn record write's
// temporary file goes.
func TestLeftoversStopsWhatNoRecordHolds(t *testing.T) {
	t.Parallel()
	s1, root := newSupervisor(t, Options{})
	unrecorded := startReady(t, s1, appConfig("lost", "-child"))
	recorded := startReady(t, s1, appConfig("kept"))
	lostPID, childPID := unrecorded.Status().PID, getInt(t, unrecorded.Addr(), "/child")
	keptPID := recorded.Status().PID
	s1.Detach()
	// As a kill between cmd.Start and the record's rename leaves it.
	if err := os.Remove(s1.recordPath(unrecorded.Key())); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(root, "run", ".kept-0123456789ab.json.tmp-123")
	if err := os.WriteFile(tmp, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}

	s2 := nextSupervisor(t, root)
	got := s2.Leftovers()
	if want := []spec.VersionKey{unrecorded.Key()}; !slices.Equal(got, want) {
		t.Errorf("Leftovers() = %v, want %v", got, want)
	}
	for _, pid := range []int{lostPID, childPID} {
		if !goneWithin(pid, 5*time.Second) {
			t.Errorf("pid %d of the unrecorded version still runs", pid)
		}
	}
	if !alive(keptPID) {
		t.Errorf("Leftovers stopped pid %d, which its record holds", keptPID)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("%s is still there (%v)", tmp, err)
	}
	// The recorded one is still there to adopt.
	if _, ok, err := s2.Adopt(appConfig("kept")); err != nil || !ok {
		t.Errorf("Adopt of the recorded version: %v, %v", ok, err)
	}
}

// A launch makes its RUNTIME_DIRECTORY (and credentials directory) before
// its process starts and its record after: a daemon killed in between, or
// in a release step, leaves them behind. The next supervisor's Leftovers
// removes every one that no live record holds, and leaves the adopted
// instance's alone. It changes shmDir, so it does not run in parallel.
func TestLeftoversRemovesStaleDirs(t *testing.T) {
	if !memoryBacked("/dev/shm") {
		t.Skip("/dev/shm is not a tmpfs here")
	}
	shm, err := os.MkdirTemp("/dev/shm", "hostel-test-")
	if err != nil {
		t.Fatal(err)
	}
	old := shmDir
	shmDir = shm
	t.Cleanup(func() { shmDir = old; os.RemoveAll(shm) })

	s1, root := newSupervisor(t, Options{})
	cfg := appConfig("kept")
	cfg.Credentials = map[string][]byte{"key": []byte("kept-secret")}
	kept := startReady(t, s1, cfg)
	base, err := s1.shmBase()
	if err != nil {
		t.Fatal(err)
	}
	keptDirs := []string{filepath.Join(root, "run", string(kept.Key())), filepath.Join(base, string(kept.Key()))}
	s1.Detach()

	// As launches cut short leave them: a runtime directory with its
	// notify socket's file and read-only credentials, one of a release
	// step, and credentials in memory.
	run := filepath.Join(root, "run")
	var stale []string
	for _, d := range []string{"lost-0123456789ab", "lost-0123456789ab@pr-1", "kept-0123456789ab.once"} {
		dir := filepath.Join(run, d)
		stale = append(stale, dir)
		writeReadOnly(t, filepath.Join(dir, "credentials"), "secret")
		if err := os.WriteFile(filepath.Join(dir, "notify"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	shmStale := filepath.Join(base, "lost-0123456789ab")
	writeReadOnly(t, shmStale, "secret")
	stale = append(stale, shmStale)

	s2 := nextSupervisor(t, root)
	s2.Leftovers()
	for _, d := range stale {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s is still there (%v)", d, err)
		}
	}
	for _, d := range keptDirs {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("the adopted instance's %s is gone: %v", d, err)
		}
	}
	if _, ok, err := s2.Adopt(cfg); err != nil || !ok {
		t.Errorf("Adopt of the recorded version: %v, %v", ok, err)
	}
}

// writeReadOnly makes dir, 0500, with one 0400 file in it, as credentials
// directories are.
func writeReadOnly(t testing.TB, dir, content string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key"), []byte(content), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
}
