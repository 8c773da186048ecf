package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"hostel/internal/api"
)

// checkRootReachable refuses a root that service users cannot reach. As
// root, every service runs as its own system user, which must traverse
// every directory above ROOT to reach its STATE_DIRECTORY, RUNTIME_DIRECTORY
// and package; a parent without the others' execute bit (a `mktemp -d`
// directory, anything under /root) made every start fail later with a
// `fork/exec …: permission denied` that named the wrong thing. The daemon
// does not chmod a directory it does not own: the user decides.
func checkRootReachable(root string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	// Parents that do not exist yet are created 0755 by Start.
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return err
		case fi.Mode().Perm()&0o001 == 0:
			return &api.Error{Kind: api.KindInvalid, Message: fmt.Sprintf(
				"hostel serve: %s is %04o: service users cannot reach %s; chmod o+x %s or pick another --root",
				dir, fi.Mode().Perm(), abs, dir)}
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}
