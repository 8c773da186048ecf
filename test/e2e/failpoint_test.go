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
