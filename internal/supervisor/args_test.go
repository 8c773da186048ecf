package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestArgsSubstituted: a process's arguments get their variables from its
// own environment at each start — the port picked for it, its state
// directory — and $$ is a $; the program and a shell's own $ stay as
// written.
func TestArgsSubstituted(t *testing.T) {
	t.Parallel()
	s, root := newSupervisor(t, Options{})
	cfg := Config{Service: "argsvc", Version: "0123456789ab", StopGrace: time.Second,
		Env: map[string]string{"GREETING": "hello world"},
		Exec: []string{"/bin/sh", "-c", `printf '%s\n' "$@" "$PORT" > "$STATE_DIRECTORY/args"; exec sleep 60`, "sh",
			"$PORT", "--state=${STATE_DIRECTORY}/db", "$GREETING", "a$$b", "$$HOST", "--x=$PORT", "$1"}}
	i := start(t, s, cfg)
	out := filepath.Join(root, "state", "argsvc", "args")
	waitFor(t, "the arguments written", func() bool { b, _ := os.ReadFile(out); return strings.Count(string(b), "\n") == 8 })
	b, _ := os.ReadFile(out)
	port := strconv.Itoa(i.Status().Port)
	want := strings.Join([]string{port, "--state=" + filepath.Join(root, "state", "argsvc") + "/db", "hello world",
		"a$b", "$HOST", "--x=$PORT", "$1", port}, "\n") + "\n"
	if string(b) != want {
		t.Errorf("arguments:\n%s\nwant:\n%s", b, want)
	}
	if got := i.Config().Exec[4]; got != "$PORT" {
		t.Errorf("Config().Exec[4] = %q, want the argument as written", got)
	}
}

// TestArgsUnknownName: a name the environment does not have fails the
// start (a spec's plan refuses it first; a generation of an older hostel
// may hold one), naming the argument.
func TestArgsUnknownName(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	cfg := appConfig("argbad", "-x", "${NOPE}")
	_, err := s.Start(cfg)
	if err == nil || !strings.Contains(err.Error(), "argument 2: $NOPE is not in the environment (write $$ for a literal $)") {
		t.Fatalf("Start = %v, want the unknown name refused", err)
	}
	// A release has no PORT: its argument cannot name it.
	_, err = s.RunOnce(context.Background(), cfg, []string{"/bin/echo", "$PORT"})
	if err == nil || !strings.Contains(err.Error(), "argument 1: $PORT is not in the environment") {
		t.Fatalf("RunOnce = %v, want $PORT refused", err)
	}
	// Nor DATABASE_URL, which may hold a password, even when it is set.
	cfg.Env = map[string]string{"DATABASE_URL": "postgres://u:pw@h/db"}
	_, err = s.RunOnce(context.Background(), cfg, []string{"/bin/echo", "${DATABASE_URL}"})
	if err == nil || !strings.Contains(err.Error(), "$DATABASE_URL is never put in a program's arguments") {
		t.Fatalf("RunOnce = %v, want $DATABASE_URL refused", err)
	}
}

// TestRunOnceArgsSubstituted: a one-shot step (a release) gets its
// arguments' variables from its own environment.
func TestRunOnceArgsSubstituted(t *testing.T) {
	t.Parallel()
	s, root := newSupervisor(t, Options{})
	cfg := Config{Service: "argonce", Version: "0123456789ab", Exec: []string{"/bin/true"}}
	out, err := s.RunOnce(context.Background(), cfg, []string{"/bin/echo", "$STATE_DIRECTORY", "${HOSTEL_VERSION}x", "$$PORT"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), filepath.Join(root, "state", "argonce")+" 0123456789abx $PORT"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}
