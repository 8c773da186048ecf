package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProductionBinaryIgnoresFailpoints: hostel built as `make build`
// builds it (without -tags failpoints) carries no trace of the failpoint
// package — every site compiled away — and runs, deploys and serves with
// a configuration in its environment that stops the harness's binary
// (built with the tag) at once.
func TestProductionBinaryIgnoresFailpoints(t *testing.T) {
	e := NewEnv(t)
	prod := filepath.Join(t.TempDir(), "hostel")
	build := exec.Command("go", "build", "-trimpath", "-o", prod, "./cmd/hostel")
	build.Dir = repoRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	nm, err := exec.Command("go", "tool", "nm", prod).Output()
	if err != nil {
		t.Fatalf("go tool nm: %v", err)
	}
	for _, line := range strings.Split(string(nm), "\n") {
		if strings.Contains(line, "hostel/internal/failpoint") {
			t.Errorf("the production binary holds %s", strings.TrimSpace(line))
		}
	}
	if withTag, _ := exec.Command("go", "tool", "nm", e.Bin).Output(); !strings.Contains(string(withTag), "hostel/internal/failpoint.") {
		t.Errorf("the harness's binary, built with the tag, has no failpoint symbol: the check above proves nothing")
	}

	armed := []string{"HOSTEL_FAILPOINTS=api-socket-bound=kill;store-before-commit=error;router-before-swap=error"}
	// The harness's binary dies at the first of them.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Bin, "serve", "--root", filepath.Join(t.TempDir(), "root"), "--http", "127.0.0.1:0", "--https", "")
	cmd.Env = append(os.Environ(), armed...)
	if out, err := cmd.CombinedOutput(); !strings.Contains(string(out), "failpoint api-socket-bound: kill") {
		t.Fatalf("the binary built with failpoints did not die at api-socket-bound: %v\n%s", err, out)
	}
	// So does a malformed configuration, with exit code 2.
	cmd = exec.CommandContext(ctx, e.Bin, "version")
	cmd.Env = append(os.Environ(), "HOSTEL_FAILPOINTS=no-such-point=kill")
	if out, err := cmd.CombinedOutput(); exitCode(err) != 2 || !strings.Contains(string(out), "no-such-point: no such failpoint") {
		t.Fatalf("a malformed configuration: exit %d\n%s\nwant exit 2, saying why", exitCode(err), out)
	}

	// The production binary does none of it.
	e.Bin = prod
	e.DaemonEnv = armed
	e.StartDaemon()
	e.WriteSpec(monoliths(e, "Hi"))
	e.MustRun("deploy", "--no-confirm")
	if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hi!") {
		t.Errorf("blog: %d %q", code, body)
	}
	cmd = exec.CommandContext(ctx, prod, "version")
	cmd.Env = append(os.Environ(), "HOSTEL_FAILPOINTS=no-such-point=kill")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("the production binary with a malformed configuration: %v\n%s", err, out)
	}
	if strings.Contains(e.DaemonLog(), "failpoint") {
		t.Errorf("the production daemon spoke of failpoints:\n%s", e.DaemonLog())
	}
}

// TestMoveToEtcdCutShort: a first start on etcd (--etcd-embed) that
// dies, or fails, in the middle of moving the bbolt state over leaves
// state.db where it was and no deployment in etcd; the next start makes
// the move whole — the same history, the services adopted, state.db set
// aside. The move is three transactions here (the clearing, one batch,
// the sequence); make test kills it in the batch's, make chaos at each
// and fails it at the last.
func TestMoveToEtcdCutShort(t *testing.T) {
	cases := []struct{ terms, action string }{{"1*off->1*kill", "kill"}}
	if *chaos {
		cases = []struct{ terms, action string }{{"1*kill", "kill"}, {"1*off->1*kill", "kill"}, {"2*off->1*kill", "kill"}, {"2*off->1*error", "error"}}
	}
	embed := []string{"--http", "127.0.0.1:0", "--https", "", "--etcd-embed"}
	for _, tc := range cases {
		t.Run(tc.terms, func(t *testing.T) {
			e := NewEnv(t)
			e.StartDaemon()
			e.WriteSpec(monoliths(e, "Hi"))
			e.MustRun("deploy", "--no-confirm")
			e.WriteSpec(monoliths(e, "Hello"))
			e.MustRun("deploy", "--no-confirm")
			gens := e.MustRun("generations", "--json")
			_, before := e.Status()
			e.StopDaemon()

			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, e.Bin, append([]string{"serve", "--root", e.Root}, embed...)...)
			cmd.Env = append(os.Environ(), "HOSTEL_FAILPOINTS=store-before-load-batch="+tc.terms)
			out, err := cmd.CombinedOutput()
			if !strings.Contains(string(out), "failpoint store-before-load-batch: "+tc.action) || err == nil {
				t.Fatalf("the first start on etcd did not stop at the move (%v):\n%s", err, out)
			}
			if _, err := os.Stat(filepath.Join(e.Root, "state.db")); err != nil {
				t.Fatalf("state.db after a move cut short: %v, want it where it was", err)
			}

			e.StartDaemonArgs(embed...)
			if got := e.MustRun("generations", "--json"); got != gens {
				t.Errorf("generations on etcd after a move cut short:\n%s\non bbolt:\n%s", got, gens)
			}
			_, after := e.Status()
			for name, s := range before {
				if a := after[name]; a.PID != s.PID || a.State != "running" {
					t.Errorf("%s on etcd: %+v, want it adopted (pid %d)", name, a, s.PID)
				}
			}
			if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hello!") {
				t.Errorf("blog on etcd: %d %q", code, body)
			}
			if _, err := os.Stat(filepath.Join(e.Root, "state.db")); err == nil {
				t.Error("state.db is still there after the move")
			}
		})
	}
}
