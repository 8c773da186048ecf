//go:build failpoints

package failpoint

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// enable arms point name with terms until the test ends.
func enable(t *testing.T, name, terms string) {
	t.Helper()
	if err := Enable(name, terms); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Disable(name) })
}

func TestErrorIsReturned(t *testing.T) {
	if err := Inject("store-before-commit"); err != nil {
		t.Fatalf("unarmed: %v", err)
	}
	enable(t, "store-before-commit", "error")
	err := Inject("store-before-commit")
	if !errors.Is(err, ErrInjected) {
		t.Fatalf("armed with error: %v, want ErrInjected", err)
	}
	if want := "failpoint store-before-commit: injected"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if err := Inject("store-after-commit"); err != nil {
		t.Errorf("another point: %v", err)
	}
}

func TestSleepDelays(t *testing.T) {
	enable(t, "store-watch-deliver", "sleep(60ms)")
	start := time.Now()
	if err := Inject("store-watch-deliver"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 60*time.Millisecond {
		t.Errorf("Inject returned after %s, want it to sleep 60ms", d)
	}
	enable(t, "launch-before-start", "sleep(60ms)")
	start = time.Now()
	Hit("launch-before-start")
	if d := time.Since(start); d < 60*time.Millisecond {
		t.Errorf("Hit returned after %s, want it to sleep 60ms", d)
	}
}

// TestKillKills: a child process armed by its environment dies of
// SIGKILL at the site, and nothing after it runs; the older form
// HOSTEL_FAILPOINT=NAME kills too.
func TestKillKills(t *testing.T) {
	for _, env := range []string{EnvVar + "=launch-after-start=kill", KillEnvVar + "=launch-after-start"} {
		out, errOut, st := child(t, "sites", env)
		if !killed(st) {
			t.Errorf("%s: the child ended %v, want killed by SIGKILL\n%s%s", env, st, out, errOut)
		}
		if out != "" {
			t.Errorf("%s: the child went on past the site: %q", env, out)
		}
		if !strings.Contains(errOut, "failpoint launch-after-start: kill") {
			t.Errorf("%s: the child did not say where it died: %q", env, errOut)
		}
	}
}

// TestConfigurationAtStart: the environment arms the points at start, and
// a malformed configuration stops the process before anything runs,
// with exit code 2 and why.
func TestConfigurationAtStart(t *testing.T) {
	out, errOut, st := child(t, "sites", EnvVar+"=store-before-commit=error; launch-after-start=sleep(1ms)")
	if st.ExitCode() != 0 || out != "hit: went on\ninject: failpoint store-before-commit: injected\n" {
		t.Errorf("armed child: exit %d\n%s%s", st.ExitCode(), out, errOut)
	}
	for env, want := range map[string]string{
		EnvVar + "=store-before-comit=error":  "HOSTEL_FAILPOINTS: store-before-comit: no such failpoint",
		EnvVar + "=launch-after-start=error":  "launch-after-start cannot error there",
		KillEnvVar + "=launch-after-strat":    "launch-after-strat: no such failpoint",
		EnvVar + "=store-before-commit=sleep": `"sleep": not an action`,
	} {
		out, errOut, st := child(t, "sites", env)
		if st.ExitCode() != 2 || out != "" || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 before any site, saying %q", env, st.ExitCode(), out, errOut, want)
		}
	}
}

// TestChain: counts, off and chains act in order, and the point is
// spent after its last counted term.
func TestChain(t *testing.T) {
	enable(t, "store-after-txn", "2*off->1*error->1*sleep(30ms)")
	var got []string
	for range 6 {
		start := time.Now()
		err := Inject("store-after-txn")
		switch {
		case err != nil:
			got = append(got, "error")
		case time.Since(start) >= 30*time.Millisecond:
			got = append(got, "sleep")
		default:
			got = append(got, "-")
		}
	}
	if g, want := strings.Join(got, " "), "- - error sleep - -"; g != want {
		t.Errorf("evaluations: %s, want %s", g, want)
	}
}

// TestChance: a chance acts on some evaluations and not others, and
// counts only those it acts on.
func TestChance(t *testing.T) {
	enable(t, "router-before-swap", "50%error")
	errs := 0
	for range 2000 {
		if Inject("router-before-swap") != nil {
			errs++
		}
	}
	if errs == 0 || errs == 2000 {
		t.Errorf("50%%error failed %d of 2000 evaluations", errs)
	}
	enable(t, "router-before-swap", "50%3*error")
	errs = 0
	for range 2000 {
		if Inject("router-before-swap") != nil {
			errs++
		}
	}
	if errs != 3 {
		t.Errorf("50%%3*error failed %d evaluations, want 3", errs)
	}
}

func TestEnableRefuses(t *testing.T) {
	if err := Enable("no-such-point", "error"); err == nil {
		t.Error("Enable of an unknown point went through")
	}
	if err := Enable("launch-after-start", "error"); err == nil {
		t.Error("Enable of error at a Hit point went through")
	}
}

func TestDisable(t *testing.T) {
	enable(t, "store-before-txn", "error")
	Disable("store-before-txn")
	if err := Inject("store-before-txn"); err != nil {
		t.Errorf("disabled: %v", err)
	}
}

func TestConcurrentCount(t *testing.T) {
	enable(t, "store-before-delete", "100*error")
	errs := make(chan error, 1000)
	done := make(chan struct{})
	for range 10 {
		go func() {
			for range 100 {
				errs <- Inject("store-before-delete")
			}
			done <- struct{}{}
		}()
	}
	for range 10 {
		<-done
	}
	close(errs)
	n := 0
	for err := range errs {
		if err != nil {
			n++
		}
	}
	if n != 100 {
		t.Errorf("100*error from 10 goroutines failed %d evaluations", n)
	}
}

// BenchmarkSiteOtherArmed: a site while another point is armed.
func BenchmarkSiteOtherArmed(b *testing.B) {
	if err := Enable("store-after-commit", "error"); err != nil {
		b.Fatal(err)
	}
	defer Disable("store-after-commit")
	for range b.N {
		if err := Inject("store-before-commit"); err != nil {
			b.Fatal(err)
		}
	}
}
