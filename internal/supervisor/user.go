package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"hostel/internal/spec"
)

// maxUserName is the longest user name useradd accepts.
const maxUserName = 32

// UserName is the system user a service runs as: "hostel-SERVICE", or, for
// service names too long to fit 32 characters, "hostel-" + the first 16
// characters + "-" + 8 hex digits of the name's SHA-256.
func UserName(service string) string {
	name := "hostel-" + service
	if len(name) <= maxUserName {
		return name
	}
	sum := sha256.Sum256([]byte(service))
	return "hostel-" + service[:16] + "-" + hex.EncodeToString(sum[:4])
}

// InstanceUser is the system user an instance runs as: production's (owner
// "" or spec.DefaultEnv) is UserName(service); a preview's own instance has
// a user of its own, "hostel-SERVICE_ENV", so that it reaches neither
// production's data nor its database role (peer authentication maps the
// user to the role of the same name). Service names have no "_", so the
// two never meet; a name too long for 32 characters becomes "hostel-" +
// the first 12 characters of the service + "_" + 8 hex digits of the
// SHA-256 of SERVICE@ENV.
func InstanceUser(service, owner string) string {
	if owner == "" || owner == spec.DefaultEnv {
		return UserName(service)
	}
	name := "hostel-" + service + "_" + owner
	if len(name) <= maxUserName {
		return name
	}
	sum := sha256.Sum256([]byte(service + "@" + owner))
	return "hostel-" + service[:min(len(service), 12)] + "_" + hex.EncodeToString(sum[:4])
}

// sbin is the path of an administration tool: in /usr/sbin or /sbin,
// which a daemon's PATH may lack, else looked up in PATH.
func sbin(tool string) string {
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, tool)
		if _, err := lookPath(p); err == nil {
			return p
		}
	}
	return tool
}

// lookPath is exec.LookPath, a variable only so that tests need not touch PATH.
var lookPath = exec.LookPath

// Credential returns the credential the instances owner owns of service
// run with (InstanceUser), creating the user when it does not exist; nil
// when services do not run as their own users. Instances start and are
// adopted with it; a daemon uses it for what it prepares for an instance
// before it starts, such as a copied state directory.
func (s *Supervisor) Credential(service, owner string) (*syscall.Credential, error) {
	if !s.opts.RunAsUsers {
		return nil, nil
	}
	return s.serviceUser(InstanceUser(service, owner))
}

// ErrUserInUse is returned by RemoveUser while an instance that runs as
// the user is known to the supervisor.
var ErrUserInUse = errors.New("an instance still runs as the user")

// RemoveUser removes the system user of the instances owner, a preview,
// owns of service (InstanceUser), if it exists: when the preview is gone,
// as its database role goes. Nothing of the user's may be left but root's
// logs: its state directory is removed first, its runtime directories
// went with its instances. Production's users stay (owner "" or
// spec.DefaultEnv is an error), and so does every user when services do
// not run as their own users.
func (s *Supervisor) RemoveUser(service, owner string) error {
	if owner == "" || owner == spec.DefaultEnv {
		return fmt.Errorf("user of %s: production's users are never removed", service)
	}
	if !s.opts.RunAsUsers {
		return nil
	}
	name := InstanceUser(service, owner)
	for _, st := range s.List() {
		if InstanceUser(st.Key.Service(), st.Key.Owner()) == name {
			return fmt.Errorf("user %s: %w (%s)", name, ErrUserInUse, st.Key)
		}
	}
	s.userMu.Lock()
	defer s.userMu.Unlock()
	if _, err := user.Lookup(name); errors.As(err, new(user.UnknownUserError)) {
		return nil
	} else if err != nil {
		return fmt.Errorf("looking up user %s: %w", name, err)
	}
	if out, err := exec.Command(sbin("userdel"), name).CombinedOutput(); err != nil {
		return fmt.Errorf("removing user %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	s.opts.Logf("supervisor: removed user %s", name)
	return nil
}

// serviceUser returns the credential of the system user name (an
// InstanceUser), creating the user when it does not exist.
func (s *Supervisor) serviceUser(name string) (*syscall.Credential, error) {
	s.userMu.Lock()
	defer s.userMu.Unlock()
	u, err := user.Lookup(name)
	if errors.As(err, new(user.UnknownUserError)) {
		out, cerr := exec.Command(sbin("useradd"), "--system", "--no-create-home", "--home-dir", "/",
			"--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if cerr != nil {
			return nil, fmt.Errorf("creating user %s: %v: %s", name, cerr, strings.TrimSpace(string(out)))
		}
		s.opts.Logf("supervisor: created user %s", name)
		u, err = user.Lookup(name)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up user %s: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: bad uid %q", name, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: bad gid %q", name, u.Gid)
	}
	// No supplementary groups: Groups is empty and NoSetGroups false, so the
	// daemon's (root's) groups are dropped.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}
