//go:build !failpoints

package failpoint

// Enabled is false: this binary was built without -tags failpoints, and
// its sites do nothing, whatever HOSTEL_FAILPOINTS says.
const Enabled = false

// Hit is a failpoint where the process may wait or die; without the
// failpoints tag it does nothing, and the compiler removes the call.
func Hit(name string) {}

// Inject is a failpoint where the process may wait or die, or the site
// fail; without the failpoints tag it returns nil, and the compiler
// removes the call and the branch on its result.
func Inject(name string) error { return nil }

// Enable arms nothing without the failpoints tag: it says so.
func Enable(name, terms string) error { return errOff }

var errOff = errorString("failpoints are off in this build (built without -tags failpoints)")

type errorString string

func (e errorString) Error() string { return string(e) }
