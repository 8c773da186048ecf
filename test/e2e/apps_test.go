package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// builtApps are the test apps built so far, by name: each is built once
// per test binary.
var builtApps struct {
	sync.Mutex
	dirs map[string]*builtApp
}

type builtApp struct {
	once sync.Once
	dir  string
	err  error
}

// testApp builds the Go package pkg (relative to the repository) as
// bin/NAME of a package directory every service user can read, once per
// test binary, and returns the directory.
func testApp(t testing.TB, name, pkg string) string {
	t.Helper()
	bin := build(t)
	builtApps.Lock()
	if builtApps.dirs == nil {
		builtApps.dirs = map[string]*builtApp{}
	}
	a := builtApps.dirs[name]
	if a == nil {
		a = &builtApp{}
		builtApps.dirs[name] = a
	}
	builtApps.Unlock()
	a.once.Do(func() {
		a.dir = filepath.Join(bin, name)
		cmd := exec.Command("go", "build", "-o", filepath.Join(a.dir, "bin", name), pkg)
		cmd.Dir = repoRoot()
		if b, err := cmd.CombinedOutput(); err != nil {
			a.err = fmt.Errorf("go build %s: %v\n%s", name, err, b)
			return
		}
		a.err = exec.Command("chmod", "-R", "a+rX", bin).Run()
	})
	if a.err != nil {
		t.Fatal(a.err)
	}
	return a.dir
}
