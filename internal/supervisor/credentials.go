package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"hostel/internal/failpoint"
)

// shmDir is where credentials go when RUNTIME_DIRECTORY is on disk: it is a
// tmpfs on most Linux systems, so plaintext never reaches a disk.
var shmDir = "/dev/shm"

// memoryBacked reports whether path is on tmpfs or ramfs.
func memoryBacked(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}

// credentialsDir picks the version's CREDENTIALS_DIRECTORY: inside
// RUNTIME_DIRECTORY when that is memory-backed, else a per-version
// directory under /dev/shm/hostel-ROOTHASH (0711, the daemon's) when that
// is memory-backed and safely ours, else inside RUNTIME_DIRECTORY on disk.
func (i *Instance) credentialsDir() (string, error) {
	inRun := filepath.Join(i.runDir, "credentials")
	if memoryBacked(i.runDir) || !memoryBacked(shmDir) {
		return inRun, nil
	}
	base, err := i.s.shmBase()
	if err != nil {
		return "", err
	}
	if err := os.Mkdir(base, 0o711); err != nil && !errors.Is(err, fs.ErrExist) {
		return inRun, nil
	}
	if !ownDir(base) {
		// Someone else made it (a world-writable /dev/shm): do not use it.
		i.s.opts.Logf("supervisor: %s is not a directory of this daemon's user; keeping credentials in %s", base, i.runDir)
		return inRun, nil
	}
	if err := os.Chmod(base, 0o711); err != nil {
		return "", err
	}
	return filepath.Join(base, string(i.key)), nil
}

// shmBase is the directory under shmDir that holds this root's credentials
// directories, one per instance by key, when RUNTIME_DIRECTORY is on disk.
func (s *Supervisor) shmBase() (string, error) {
	root, err := filepath.Abs(s.opts.Root)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(root))
	return filepath.Join(shmDir, "hostel-"+hex.EncodeToString(sum[:6])), nil
}

// ownDir reports whether dir is a directory (not a link to one) of the
// daemon's user.
func ownDir(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return fi.IsDir() && ok && int(st.Uid) == os.Geteuid()
}

// setupCredentials writes cfg.Credentials as one 0400 file each into a 0500
// directory owned by the service's user, and sets CREDENTIALS_DIRECTORY.
// Only the supervisor sets that variable.
func (i *Instance) setupCredentials() error {
	env := i.env[:0]
	for _, kv := range i.env {
		if !strings.HasPrefix(kv, "CREDENTIALS_DIRECTORY=") {
			env = append(env, kv)
		}
	}
	i.env = env
	if len(i.cfg.Credentials) == 0 {
		return nil
	}
	for name := range i.cfg.Credentials {
		if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
			return fmt.Errorf("bad credential name %q", name)
		}
	}
	dir, err := i.credentialsDir()
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	// A directory left by a daemon that died is stale: start clean.
	removeCredentialsDir(dir)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	i.credDir = dir
	for name, value := range i.cfg.Credentials {
		p := filepath.Join(dir, name)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o400)
		if err != nil {
			return fmt.Errorf("credentials: %w", err)
		}
		_, werr := f.Write(value)
		cerr := f.Close()
		if werr != nil || cerr != nil {
			return fmt.Errorf("credentials: writing %s: %w", p, errors.Join(werr, cerr))
		}
		if err := i.chownToService(p); err != nil {
			return fmt.Errorf("credentials: %w", err)
		}
	}
	if err := failpoint.Inject("credentials-after-write"); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	if err := i.chownToService(dir); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	i.env = append(i.env, "CREDENTIALS_DIRECTORY="+dir)
	return nil
}

func (i *Instance) chownToService(p string) error {
	if i.cred == nil {
		return nil
	}
	return os.Lchown(p, int(i.cred.Uid), int(i.cred.Gid))
}

// removeCredentials overwrites and removes the credentials directory.
func (i *Instance) removeCredentials() {
	if i.credDir == "" {
		return
	}
	if err := removeCredentialsDir(i.credDir); err != nil {
		i.s.opts.Logf("supervisor: %s: removing credentials: %v", i.key, err)
	}
	i.credDir = ""
}

// removeCredentialsDir zeroes every file in dir, then removes it. The
// directory is 0500, so it is opened up first for a daemon that is not root.
func removeCredentialsDir(dir string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if fi.IsDir() {
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.Type().IsRegular() {
				zeroFile(filepath.Join(dir, e.Name()))
			}
		}
	}
	return os.RemoveAll(dir)
}

func zeroFile(p string) {
	os.Chmod(p, 0o600)
	f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		f.Write(make([]byte, fi.Size()))
		f.Sync()
	}
}
