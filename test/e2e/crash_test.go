package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"hostel/internal/postgres/pgtest"
)

// rootProcesses lists the processes of root's services, found by the
// RUNTIME_DIRECTORY the supervisor gives them: pid → SERVICE-VERSION.
func rootProcesses(t testing.TB, root string) map[int]string {
	t.Helper()
	out := map[int]string{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	prefix := []byte("RUNTIME_DIRECTORY=" + filepath.Join(root, "run") + "/")
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
			if rest, ok := bytes.CutPrefix(kv, prefix); ok {
				out[pid] = string(rest)
			}
		}
	}
	return out
}

// checkOnlyCurrent asserts that every process of the root belongs to a
// version of the current generation, that each such version runs exactly
// one process (the example apps do not fork), and that no temporary file
// of a torn write is left in ROOT/run.
func (e *Env) checkOnlyCurrent(when string) {
	e.t.Helper()
	_, svcs := e.Status()
	current := map[string]bool{}
	for name, s := range svcs {
		current[name+"-"+s.Version] = true
	}
	perKey := map[string][]int{}
	for pid, key := range rootProcesses(e.t, e.Root) {
		perKey[key] = append(perKey[key], pid)
	}
	for key, pids := range perKey {
		switch {
		case !current[key]:
			e.t.Errorf("%s: pids %v of %s run, which is not in the current generation %v", when, pids, key, current)
		case len(pids) > 1:
			e.t.Errorf("%s: %s runs %d processes %v, want 1 (a duplicate)", when, key, len(pids), pids)
		}
	}
	// A record being written now (the daemon writes one after each launch,
	// as it resumes what was missing) goes within a moment; a torn
	// write's stays.
	var tmps []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		tmps, _ = filepath.Glob(filepath.Join(e.Root, "run", ".*.tmp-*"))
		if len(tmps) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(tmps) > 0 {
		e.t.Errorf("%s: temporary files left in ROOT/run: %v", when, tmps)
	}
	for _, dir := range runtimeDirs(e.t, e.Root) {
		if !current[dir] {
			e.t.Errorf("%s: ROOT/run/%s is left, which no version of the current generation %v runs in", when, dir, current)
		}
	}
}

// runtimeDirs lists the RUNTIME_DIRECTORYs in ROOT/run, by name
// (SERVICE-VERSION).
func runtimeDirs(t testing.TB, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "run"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// checkShutDown asserts that `hostel shutdown` left no process of the
// root and nothing in ROOT/run: no runtime directory, no record.
func (e *Env) checkShutDown() {
	e.t.Helper()
	if left := rootProcesses(e.t, e.Root); len(left) > 0 {
		e.t.Errorf("processes left after hostel shutdown: %v", left)
	}
	if left, _ := os.ReadDir(filepath.Join(e.Root, "run")); len(left) > 0 {
		var names []string
		for _, l := range left {
			names = append(names, l.Name())
		}
		e.t.Errorf("left in ROOT/run after hostel shutdown: %v", names)
	}
}

// killDaemon kills the daemon with SIGKILL (if it still runs) and waits.
func (e *Env) killDaemon() {
	e.t.Helper()
	e.daemon.Process.Signal(syscall.SIGKILL)
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		e.t.Fatal("daemon did not die of SIGKILL")
	}
	e.daemon = nil
}

// TestCrashDuringLaunch kills the real daemon (SIGKILL, from itself at a
// named failpoint or from outside after a random delay) at many points of
// a deploy's launches, starts it again, and checks what must hold: no
// process of the root outside the current generation survives, no version
// runs twice, no temporary file or runtime directory of a launch cut short
// is left, a deploy of the same spec then goes through without a
// duplicate, and `hostel shutdown` leaves nothing.
func TestCrashDuringLaunch(t *testing.T) {
	points := []string{"launch-before-start", "launch-after-start", "launch-after-record", "atomicfile-before-rename"}
	for _, fp := range points {
		t.Run(fp, func(t *testing.T) {
			e := NewEnv(t)
			e.StartDaemon()
			e.WriteSpec(launchSpec(e, "1"))
			e.MustRun("deploy", "--no-confirm")

			e.StopDaemon()
			e.DaemonEnv = []string{"HOSTEL_FAILPOINTS=" + fp + "=kill"}
			e.StartDaemon()
			e.WriteSpec(launchSpec(e, "2"))
			if _, _, code := e.Run("deploy", "--no-confirm"); code == 0 {
				t.Fatalf("deploy went through; the daemon should have died at %s", fp)
			}
			select {
			case <-e.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("the daemon did not die at failpoint %s", fp)
			}
			e.daemon = nil

			e.DaemonEnv = nil
			e.StartDaemon()
			e.checkOnlyCurrent("after the restart")
			e.MustRun("deploy", "--no-confirm")
			e.checkOnlyCurrent("after deploying again")
			e.Shutdown()
			e.checkShutDown()
		})
	}

	t.Run("random-kills", func(t *testing.T) {
		e := NewEnv(t)
		e.StartDaemon()
		for round := range 12 {
			e.WriteSpec(launchSpec(e, strconv.Itoa(round)))
			deploy := exec.Command(e.Bin, "--root", e.Root, "deploy", "--no-confirm")
			deploy.Dir = e.Dir
			if err := deploy.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond)
			e.killDaemon()
			deploy.Wait()
			e.StartDaemon()
			e.checkOnlyCurrent(fmt.Sprintf("round %d, after the restart", round))
		}
		e.MustRun("deploy", "--no-confirm")
		e.checkOnlyCurrent("after the last deploy")
		e.Shutdown()
		e.checkShutDown()
	})
}

// launchSpec is two services, one needing the other, whose versions change
// with gen.
func launchSpec(e *Env, gen string) map[string]any {
	return map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"env": map[string]string{"GREETING": "Hi " + gen}}),
		"shop":   e.App("shop", map[string]any{"env": map[string]string{"GEN": gen}, "domains": []string{"shop.example"}}),
	}}
}

// holderPIDs lists the socket holders of root (hostel-hold ROOT/hold.sock).
func holderPIDs(t testing.TB, root string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("hostel-hold\x00" + filepath.Join(root, "hold.sock") + "\x00")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && bytes.Equal(b, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestKilledAfterCampaign: a daemon killed in its start, the engine's
// leadership won with its node's new lease and its node not reported yet,
// held the engine a NodeTTL (6 s) past its death: the next daemon only
// followed, and refused every deploy ("another daemon sharing the store
// leads the engine") until that lease ended. The next daemon now ends the
// lease at once. Found by TestCrashAnyTime (-crash-seed
// 1796453158646722049 -crashes 25: a restart killed after 25 ms).
func TestKilledAfterCampaign(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(launchSpec(e, "1"))
	e.MustRun("deploy", "--no-confirm")
	e.StopDaemon()

	e.DaemonEnv = []string{"HOSTEL_FAILPOINTS=node-after-campaign=kill"}
	e.spawnDaemon("--http", "127.0.0.1:0", "--https", "")
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the daemon did not die at node-after-campaign:\n%s", e.DaemonLog())
	}
	e.daemon, e.DaemonEnv = nil, nil

	e.StartDaemon()
	e.WriteSpec(launchSpec(e, "2"))
	if out, errOut, code := e.Run("deploy", "--no-confirm"); code != 0 {
		t.Errorf("the deploy right after the restart: exit %d\n%s%s", code, out, errOut)
	}
	e.checkOnlyCurrent("after the deploy")
	e.Shutdown()
	e.checkShutDown()
}

// TestDatabaseProvisionCutShort fails (error) and kills (kill -9) the
// daemon as it gives a new service its database — its record written,
// before the role and database are made (db-before-provision), and after
// they are (db-after-provision) — then checks that nothing was committed,
// that the next daemon serves what it served, and that the deploy then
// goes through with a database that works (the release migrates it, the
// app writes to it). `make test` runs one; -chaos all four.
func TestDatabaseProvisionCutShort(t *testing.T) {
	for _, point := range []string{"db-before-provision", "db-after-provision"} {
		for _, action := range []string{"kill", "error"} {
			name := point + "=" + action
			if !*chaos && name != "db-after-provision=kill" {
				continue
			}
			t.Run(name, func(t *testing.T) {
				pg := pgtest.Start(t)
				e := newShortEnv(t)
				e.StartDaemon()
				migrate := []string{"bin/guestbook", "migrate"}
				e.WriteSpec(guestbookSpec(e, pg, "1", migrate, false))
				e.MustRun("deploy", "--no-confirm")
				before, _ := e.Status()

				e.armFailpoint(point, "1*"+action)
				e.WriteSpec(guestbookSpec(e, pg, "1", migrate, true))
				if _, _, code := e.Run("deploy", "--no-confirm"); code == 0 {
					t.Fatalf("the deploy went through, past %s", name)
				}
				if action == "kill" {
					select {
					case <-e.done:
					case <-time.After(30 * time.Second):
						t.Fatalf("the daemon did not die at %s:\n%s", point, e.DaemonLog())
					}
					e.daemon = nil
					e.StartDaemon()
				} else if !strings.Contains(e.DaemonLog(), "failpoint "+point+": error") {
					t.Fatalf("the deploy did not reach %s:\n%s", point, e.DaemonLog())
				}
				if gen, svcs := e.Status(); gen != before || svcs["guestbook"].Version != "" {
					t.Errorf("after %s: generation %d with guestbook %q, want generation %d without it", name, gen, svcs["guestbook"].Version, before)
				}
				e.checkOnlyCurrent("after " + name)

				e.MustRun("deploy", "--no-confirm")
				if got := post(t, e, "guestbook.example", "first!"); !strings.Contains(got, "signed #1") {
					t.Errorf("signing the guestbook after %s: %q", name, got)
				}
				if db := guestbookDB(t, e); db == nil || db.Name != "guestbook" {
					t.Errorf("status database after %s: %+v", name, db)
				}
				e.checkOnlyCurrent("after the next deploy")
				e.Shutdown()
				e.checkShutDown()
			})
		}
	}
}
