package supervisor

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nextSupervisor returns a second supervisor on root, as a restarted
// daemon would make, stopped at cleanup.
func nextSupervisor(t testing.TB, root string) *Supervisor {
	t.Helper()
	s := New(Options{Root: root, Logf: t.Logf})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.StopAll(ctx); err != nil {
			t.Errorf("StopAll: %v", err)
		}
	})
	return s
}

func appEnv(t testing.TB, addr string) map[string]string {
	t.Helper()
	var env map[string]string
	if err := json.Unmarshal(get(t, addr, "/env"), &env); err != nil {
		t.Fatal(err)
	}
	return env
}

func TestAdoptAfterDetach(t *testing.T) {
	t.Parallel()
	s1, root := newSupervisor(t, Options{})
	cfg := appConfig("adopt", "-notify")
	cfg.Credentials = map[string][]byte{"token": []byte("s3cret-value")}
	i1 := startReady(t, s1, cfg)
	// With -notify the app says READY=1 before it listens: wait for the port.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("tcp", i1.Addr()); err == nil {
			c.Close()
			break
		}
	}
	pid, addr := getInt(t, i1.Addr(), "/pid"), i1.Addr()
	s1.Detach()
	if !alive(pid) {
		t.Fatal("Detach stopped the process")
	}
	if _, ok := s1.Get(i1.Key()); ok {
		t.Error("a detached instance is still known")
	}
	rec, err := os.ReadFile(filepath.Join(root, "run", string(i1.Key())+".json"))
	if err != nil {
		t.Fatalf("record: %v", err)
	}
	if strings.Contains(string(rec), "s3cret") || strings.Contains(string(rec), "czNjcmV0") {
		t.Errorf("the record holds the secret's value:\n%s", rec)
	}
	get(t, addr, "/healthz") // served while no supervisor watches

	s2 := nextSupervisor(t, root)
	i2, ok, err := s2.Adopt(cfg)
	if err != nil || !ok {
		t.Fatalf("Adopt = %v, %v; want adopted", ok, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := i2.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := i2.Status().PID; got != pid {
		t.Errorf("adopted PID = %d, want %d", got, pid)
	}
	if i2.Addr() != addr {
		t.Errorf("adopted Addr = %s, want %s", i2.Addr(), addr)
	}
	creds := appEnv(t, addr)["CREDENTIALS_DIRECTORY"]
	if b, err := os.ReadFile(filepath.Join(creds, "token")); err != nil || string(b) != "s3cret-value" {
		t.Errorf("credential after adoption = %q, %v", b, err)
	}

	// A crash of the adopted process is restarted as usual: same port, the
	// same credentials, READY=1 over the notify socket listened on again.
	poke("http://" + addr + "/crash")
	waitFor(t, "a restart", func() bool {
		st := i2.Status()
		return st.Ready && st.PID != 0 && st.PID != pid
	})
	st := i2.Status()
	// READY=1 comes before the app listens: wait for it to answer.
	waitFor(t, "the restarted process to answer", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if st.Restarts != 1 {
		t.Errorf("Restarts = %d, want 1", st.Restarts)
	}
	if got := getInt(t, addr, "/pid"); got != st.PID {
		t.Errorf("pid on the same port = %d, want %d", got, st.PID)
	}
	if b, err := os.ReadFile(filepath.Join(appEnv(t, addr)["CREDENTIALS_DIRECTORY"], "token")); err != nil || string(b) != "s3cret-value" {
		t.Errorf("credential after the restart = %q, %v", b, err)
	}
	log, _ := os.ReadFile(st.LogPath)
	if !strings.Contains(string(log), "app starting pid "+strconv.Itoa(st.PID)) {
		t.Errorf("the restarted process's output is not in the log:\n%s", log)
	}

	stop(t, s2, i2.Key())
	if alive(st.PID) {
		t.Error("Stop left the adopted instance's process running")
	}
	for _, p := range []string{filepath.Join(root, "run", string(i2.Key())+".json"), filepath.Join(root, "run", string(i2.Key())), creds} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after Stop: %v, want it gone", p, err)
		}
	}
}

// poke makes one request and ignores its outcome (the process may die
// while answering).
func poke(url string) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := c.Get(url); err == nil {
		resp.Body.Close()
	}
}

func TestAdoptRefusesWhatIsNotTheSameProcess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		breakIt func(t *testing.T, pid int, recPath string)
	}{
		{name: "pid reused (start time differs)", breakIt: func(t *testing.T, pid int, recPath string) {
			b, _ := os.ReadFile(recPath)
			var r map[string]any
			json.Unmarshal(b, &r)
			r["start_ticks"] = r["start_ticks"].(float64) + 1
			b, _ = json.Marshal(r)
			if err := os.WriteFile(recPath, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "process gone", breakIt: func(t *testing.T, pid int, recPath string) {
			syscall.Kill(-pid, syscall.SIGKILL)
			waitFor(t, "the process to die", func() bool { return !alive(pid) })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s1, root := newSupervisor(t, Options{})
			cfg := appConfig("reuse")
			i1 := startReady(t, s1, cfg)
			pid := i1.Status().PID
			t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
			s1.Detach()
			recPath := filepath.Join(root, "run", string(i1.Key())+".json")
			tt.breakIt(t, pid, recPath)

			s2 := nextSupervisor(t, root)
			if _, ok, err := s2.Adopt(cfg); ok || err != nil {
				t.Fatalf("Adopt = %v, %v; want not adopted", ok, err)
			}
			if _, err := os.Stat(recPath); !os.IsNotExist(err) {
				t.Errorf("stale record: %v, want it removed", err)
			}
			if len(s2.Orphans()) != 0 {
				t.Errorf("Orphans = %v, want none", s2.Orphans())
			}
			// The caller then starts the version afresh.
			i2 := startReady(t, s2, cfg)
			if i2.Status().PID == pid {
				t.Error("the fresh start reports the old pid")
			}
		})
	}
}

func TestOrphansAdoptRecorded(t *testing.T) {
	t.Parallel()
	s1, root := newSupervisor(t, Options{})
	i1 := startReady(t, s1, appConfig("orphan"))
	pid := i1.Status().PID
	s1.Detach()

	s2 := nextSupervisor(t, root)
	if got := s2.Orphans(); len(got) != 1 || got[0] != i1.Key() {
		t.Fatalf("Orphans = %v, want [%s]", got, i1.Key())
	}
	i2, ok, err := s2.AdoptRecorded(i1.Key())
	if err != nil || !ok {
		t.Fatalf("AdoptRecorded = %v, %v", ok, err)
	}
	if i2.Status().PID != pid {
		t.Errorf("PID = %d, want %d", i2.Status().PID, pid)
	}
	stop(t, s2, i2.Key())
	if alive(pid) {
		t.Error("the orphan still runs after Stop")
	}
	if got := s2.Orphans(); len(got) != 0 {
		t.Errorf("Orphans after Stop = %v", got)
	}
}

func TestProcStartTicks(t *testing.T) {
	t.Parallel()
	a, err := procStartTicks(os.Getpid())
	if err != nil || a == 0 {
		t.Fatalf("procStartTicks(self) = %d, %v", a, err)
	}
	if b, _ := procStartTicks(os.Getpid()); b != a {
		t.Errorf("start time changed: %d, then %d", a, b)
	}
	if _, err := procStartTicks(1 << 30); err == nil {
		t.Error("procStartTicks of no process: no error")
	}
}

// Start does not wait for the launch's record, which the instance writes
// before it can be stopped or let go: a version stopped the moment it
// started leaves no record, and one let go the moment it started leaves
// its record for the next supervisor to adopt.
func TestRecordBeforeStopOrDetach(t *testing.T) {
	t.Parallel()
	t.Run("stopped at once", func(t *testing.T) {
		s, _ := newSupervisor(t, Options{})
		i := start(t, s, appConfig("stopfast"))
		stop(t, s, i.Key())
		if _, err := os.Stat(s.recordPath(i.Key())); !os.IsNotExist(err) {
			t.Errorf("a record is left after the stop (%v)", err)
		}
	})
	t.Run("let go at once", func(t *testing.T) {
		s, root := newSupervisor(t, Options{})
		i := start(t, s, appConfig("detachfast"))
		pid := i.Status().PID
		s.Detach()
		s2 := nextSupervisor(t, root)
		a, ok, err := s2.Adopt(appConfig("detachfast"))
		if err != nil || !ok {
			t.Fatalf("Adopt of a version let go the moment it started: %v, %v", ok, err)
		}
		if got := a.Status().PID; got != pid {
			t.Errorf("adopted pid %d, want %d", got, pid)
		}
	})
}
