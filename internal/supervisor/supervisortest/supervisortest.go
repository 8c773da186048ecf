// Package supervisortest builds the supervisor's test service for the
// tests of the packages that run it under a real supervisor.
package supervisortest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// BuildApp builds the test service (internal/supervisor/testdata/app) as
// dir/app in a new temporary directory named with prefix, which service
// users can reach. The caller removes dir; it is for TestMain, before there
// is a testing.TB.
func BuildApp(prefix string) (dir string, err error) {
	_, file, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(file), "..", "testdata", "app")
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	// Service users must reach the binary.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "app"), ".")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("building test app: %v\n%s", err, out)
	}
	return dir, nil
}
