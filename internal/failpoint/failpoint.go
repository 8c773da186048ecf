// Package failpoint makes a process fail at named lines, for tests: a
// site returns an error, waits or dies there by SIGKILL, as configured by
// HOSTEL_FAILPOINTS when the process starts (etcd's gofail, by hand and
// smaller).
//
// Only a binary built with -tags failpoints acts on it: the e2e harness
// and `go test -tags failpoints` build one; `make build` does not. Without
// the tag, Hit and Inject are empty functions the compiler inlines away
// and Enabled is false, so a production binary neither reads the variable
// nor carries a trace of a site.
//
// Every failpoint is named in one place, the catalogue (Catalogue): what
// it is, where it is, what it can do. A name that is not there is an
// error in the configuration, and a test of this package finds every
// site in the repository and checks it against the catalogue — so a site
// is added with its line there.
//
// A site that can fail returns the error Inject gives:
//
//	if err := failpoint.Inject("store-before-commit"); err != nil {
//		return 0, fmt.Errorf("commit generation: %w", err)
//	}
//
// and one that cannot (it may only wait or die) calls Hit:
//
//	failpoint.Hit("launch-after-start")
//
// The configuration, read once at start (a malformed one stops the
// process with exit code 2), names points and what each does, as gofail
// does:
//
//	HOSTEL_FAILPOINTS='store-before-commit=error;store-watch-deliver=sleep(200ms);store-after-txn=1*kill'
//
// See docs/failpoints.md for the grammar (counts, chains, chances) and the
// catalogue.
package failpoint

// EnvVar is the configuration: NAME=TERMS entries separated by ";".
const EnvVar = "HOSTEL_FAILPOINTS"

// KillEnvVar is the older, shorter form: HOSTEL_FAILPOINT=NAME is
// NAME=kill.
const KillEnvVar = "HOSTEL_FAILPOINT"

// ErrInjected is what an error action returns, wrapped with the point's
// name: errors.Is(err, ErrInjected) holds.
var ErrInjected error = injectedError{}

type injectedError struct{}

func (injectedError) Error() string { return "injected" }

// pointError is the error of an error action at a point.
type pointError struct{ name string }

func (e *pointError) Error() string        { return "failpoint " + e.name + ": injected" }
func (e *pointError) Is(target error) bool { return target == ErrInjected }
