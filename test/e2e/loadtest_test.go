package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"hostel/internal/store/storetest/backends"
)

// TestZeroDowntime runs a short version of `make loadtest`: an open-loop
// mix of short, slow, streaming and uploading requests at two services while
// three deploys replace both; not one request may fail or reach a version
// that was already switched away from.
func TestZeroDowntime(t *testing.T) {
	runLoadtest(t, "-deploys", "3", "-rate", "300", "-warmup", "1s")
}

// TestPreviewsUnderLoad runs a short version of `make loadtest`'s
// previews run: the same load at production while three previews (web
// changed, api shared) are deployed, checked and removed; not one
// production request may fail.
func TestPreviewsUnderLoad(t *testing.T) {
	runLoadtest(t, "-deploys", "3", "-rate", "300", "-warmup", "1s", "-previews")
}

// runLoadtest builds bench/loadtest and runs it with args against the
// hostel binary, on the store HOSTEL_TEST_STORE chooses; it must pass with
// nothing failed.
func runLoadtest(t *testing.T, args ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("load test")
	}
	if backends.Chosen(t) == "etcd" {
		args = append(args, "-etcd-embed")
	}
	bin := build(t)
	lt := filepath.Join(t.TempDir(), "loadtest")
	cmd := exec.Command("go", "build", "-o", lt, "./bench/loadtest")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the load test: %v\n%s", err, out)
	}
	out, err := exec.Command(lt, append([]string{"-hostel", filepath.Join(bin, "hostel")}, args...)...).CombinedOutput()
	t.Logf("\n%s", out)
	if err != nil {
		t.Fatalf("load test failed: %v", err)
	}
	for _, want := range []string{"non-2xx:          0", "transport errors: 0", "stale answers:    0", "loadtest: PASS"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("load test output lacks %q", want)
		}
	}
}
