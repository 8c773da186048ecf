package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A root under a directory service users cannot traverse is refused at
// `serve` start, naming that directory, with exit code 2 and nothing made.
func TestServeRefusesUnreachableRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("services run as their own users only when the daemon is root")
	}
	e := NewEnv(t)
	private := filepath.Join(filepath.Dir(e.Root), "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	e.Root = filepath.Join(private, "root")
	_, stderr, code := e.Run("serve", "--http", "127.0.0.1:0", "--https", "")
	if code != 2 {
		t.Fatalf("hostel serve with a 0700 parent: exit %d, want 2\n%s", code, stderr)
	}
	first, _, _ := strings.Cut(stderr, "\n")
	for _, want := range []string{private + " is 0700", "chmod o+x " + private} {
		if !strings.Contains(first, want) {
			t.Errorf("first line of stderr = %q, want it to contain %q", first, want)
		}
	}
	if _, err := os.Stat(e.Root); !os.IsNotExist(err) {
		t.Errorf("root %s exists after a refused start (err %v); want nothing made", e.Root, err)
	}

	// Made traversable, the same root serves and deploys.
	if err := os.Chmod(private, 0o711); err != nil {
		t.Fatal(err)
	}
	e.StartDaemon()
	e.WriteSpec(map[string]any{"services": map[string]any{"quotes": e.App("quotes", nil)}})
	e.MustRun("deploy", "--no-confirm")
	if _, svcs := e.Status(); svcs["quotes"].State != "running" {
		t.Errorf("quotes is %q after deploy, want running", svcs["quotes"].State)
	}
}

// TestAPISocketBornPrivate: the API socket is never reachable by other
// users, not even for the moment between its creation and a chmod: the
// daemon, started with umask 0 (which would leave a socket bound in ROOT
// 0777), dies at the failpoint right after the socket appears at
// ROOT/hostel.sock, and the socket it leaves is 0600.
func TestAPISocketBornPrivate(t *testing.T) {
	e := NewEnv(t)
	cmd := exec.Command("/bin/sh", "-c", `umask 0; exec "$0" "$@"`, e.Bin, "serve", "--root", e.Root, "--http", "127.0.0.1:0", "--https", "")
	cmd.Env = append(os.Environ(), "HOSTEL_FAILPOINT=api-socket-bound")
	out, err := cmd.CombinedOutput()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("hostel serve did not die at the failpoint api-socket-bound: %v\n%s", err, out)
	}
	sock := filepath.Join(e.Root, "hostel.sock")
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s appeared as %v, want a socket with mode 0600", sock, fi.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(e.Root, ".sock-*")); len(left) > 0 {
		t.Logf("left by the kill: %v", left) // removed by the next start
	}
}
