package e2e

import (
	"os"
	"path/filepath"
	"strings"
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
