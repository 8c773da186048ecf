package failpoint

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// helperEnv, in a child's environment, names what TestHelperProcess does
// there.
const helperEnv = "FAILPOINT_TEST_HELPER"

// TestHelperProcess is not a test: a child the tests start runs it, with
// the failpoint configuration to check in its environment. It prints
// what the sites did and exits 0, unless one killed it.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "":
		t.Skip("run by the tests as a child process")
	case "sites":
		Hit("launch-after-start")
		fmt.Printf("hit: went on\n")
		fmt.Printf("inject: %v\n", Inject("store-before-commit"))
		os.Exit(0)
	}
}

// child runs TestHelperProcess with env, and returns its output and how
// it ended.
func child(t *testing.T, what string, env ...string) (stdout, stderr string, state *os.ProcessState) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), append(env, helperEnv+"="+what)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil && !errors.As(err, new(*exec.ExitError)) {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), cmd.ProcessState
}

// killed reports whether a child died of SIGKILL.
func killed(st *os.ProcessState) bool {
	ws, ok := st.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}
