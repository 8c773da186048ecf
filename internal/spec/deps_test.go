package spec

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps: the spec is vocabulary, read by the CLI offline as well as by
// the daemon; it must not pull in a database driver. What it checks of
// postgres.admin comes from package conninfo, which parses without one.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "hostel/internal/postgres" || strings.HasPrefix(dep, "github.com/jackc/") || strings.HasPrefix(dep, "github.com/lib/pq") {
			t.Errorf("package spec depends on %s", dep)
		}
	}
}
