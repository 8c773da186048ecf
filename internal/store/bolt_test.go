package store

import (
	"errors"
	"path/filepath"
	"testing"

	"hostel/internal/spec"
)

func openTest(t testing.TB, path string) *Bolt {
	t.Helper()
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func gen(versions map[string]spec.Version) *spec.Generation {
	return &spec.Generation{SpecHash: "h", Spec: &spec.Spec{Services: map[string]*spec.Service{}}, Versions: versions}
}

func TestBoltGenerations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTest(t, path)
	if g, err := s.Current(); err != nil || g != nil {
		t.Fatalf("Current on empty store = %v, %v; want nil, nil", g, err)
	}
	for i := 1; i <= 3; i++ {
		n, err := s.Commit(gen(map[string]spec.Version{"a": spec.Version(rune('0' + i))}))
		if err != nil {
			t.Fatal(err)
		}
		if n != uint64(i) {
			t.Fatalf("Commit #%d got number %d", i, n)
		}
	}
	cur, err := s.Current()
	if err != nil || cur.Number != 3 || cur.Versions["a"] != "3" {
		t.Fatalf("Current = %+v, %v; want generation 3", cur, err)
	}
	if cur.Time.IsZero() {
		t.Error("committed generation has no time")
	}
	if err := s.SetCurrent(1); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCurrent(9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetCurrent(9) = %v, want ErrNotFound", err)
	}
	if err := s.Delete(1); !errors.Is(err, ErrCurrent) {
		t.Fatalf("Delete(current) = %v, want ErrCurrent", err)
	}
	if err := s.Delete(2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(2) after delete = %v, want ErrNotFound", err)
	}
	// Numbers are never reused, even after a delete.
	if n, _ := s.Commit(gen(nil)); n != 4 {
		t.Fatalf("next number = %d, want 4", n)
	}
	s.Close()

	// Everything survives a reopen.
	s2 := openTest(t, path)
	list, err := s2.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, g := range list {
		got = append(got, g.Number)
	}
	if want := []uint64{1, 3, 4}; len(got) != len(want) || got[0] != 1 || got[1] != 3 || got[2] != 4 {
		t.Fatalf("generations after reopen = %v, want %v", got, want)
	}
	if cur, _ := s2.Current(); cur.Number != 4 {
		t.Fatalf("current after reopen = %d, want 4", cur.Number)
	}
}

func TestBoltRefusesSecondOpener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	openTest(t, path)
	if s, err := OpenBolt(path); err == nil {
		s.Close()
		t.Fatal("a second daemon could open the same state store")
	}
}

// TestBoltSetConfirm: the outcome of a confirm window is stored with its
// generation, with the switch back it made, outlives a reopen, and is
// refused whole for a missing generation.
func TestBoltSetConfirm(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTest(t, path)
	g := gen(map[string]spec.Version{"a": "1"})
	g.Confirm = &spec.Confirm{State: spec.ConfirmPending, Previous: 0}
	prev, err := s.Commit(gen(map[string]spec.Version{"a": "0"}))
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Commit(g)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetConfirm(n, &spec.Confirm{State: spec.ConfirmFailed, Previous: 7, Reason: "crashed"}, prev); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTest(t, path)
	got, err := s.Get(n)
	if err != nil {
		t.Fatal(err)
	}
	if c := got.Confirm; c == nil || c.State != spec.ConfirmFailed || c.Previous != 7 || c.Reason != "crashed" || got.Versions["a"] != "1" {
		t.Errorf("after reopen: confirm %+v, versions %v", got.Confirm, got.Versions)
	}
	if cur, err := s.Current(); err != nil || cur.Number != prev {
		t.Errorf("current after the switch back: %v, %v; want %d", cur, err, prev)
	}
	if err := s.SetConfirm(n+1, &spec.Confirm{State: spec.ConfirmConfirmed}, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetConfirm of a missing generation: %v, want ErrNotFound", err)
	}
	if err := s.SetConfirm(prev, &spec.Confirm{State: spec.ConfirmConfirmed}, n+1); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetConfirm making a missing generation current: %v, want ErrNotFound", err)
	}
	if got, _ := s.Get(prev); got.Confirm != nil {
		t.Errorf("a refused SetConfirm changed generation %d: %+v", prev, got.Confirm)
	}
}
