// Package failpoint kills the process at a named line, for crash tests:
// with HOSTEL_FAILPOINT=NAME in its environment, a process dies by SIGKILL
// the first time it reaches Hit(NAME), exactly as a kill -9 from outside
// would leave things at that point (etcd's gofail, by hand and smaller).
// Without the variable, Hit is one comparison of a string read at start.
package failpoint

import (
	"os"
	"syscall"
)

// EnvVar names the failpoint a process dies at.
const EnvVar = "HOSTEL_FAILPOINT"

var armed = os.Getenv(EnvVar)

// Hit kills the process if name is the armed failpoint.
func Hit(name string) {
	if armed == "" || armed != name {
		return
	}
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not handled: nothing runs past this line
}
