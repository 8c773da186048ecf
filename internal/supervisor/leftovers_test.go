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
