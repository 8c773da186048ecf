package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"hostel/internal/deploy"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// stateCopier is the deploy.Preparer that starts a preview's own state
// directory as a copy of production's when the spec's previews.state
// says "copy" (the default, "empty", leaves it to the supervisor, which
// makes it empty). Only a directory that does not exist yet is copied
// into: a redeploy keeps what the preview wrote. The copy belongs to the
// preview's own user (supervisor.InstanceUser), not production's. Its
// cleanup removes a copy it made for a version that then did not start.
type stateCopier struct {
	root string
	sup  *supervisor.Supervisor

	mu sync.Mutex
	// made holds the directories copied for versions not yet kept, by
	// instance.
	made map[spec.VersionKey]string
}

func newStateCopier(root string, sup *supervisor.Supervisor) *stateCopier {
	return &stateCopier{root: root, sup: sup, made: map[spec.VersionKey]string{}}
}

var _ deploy.Cleaner = (*stateCopier)(nil)

// Prepare implements deploy.Preparer.
func (c *stateCopier) Prepare(ctx context.Context, g *spec.Generation, service string, _ *supervisor.Config) error {
	owner := g.Owner(service)
	if _, mode := g.Spec.PreviewData(); owner == spec.DefaultEnv || mode != spec.PreviewCopy {
		return nil
	}
	dst := supervisor.StateDir(c.root, service, owner)
	if _, err := os.Lstat(dst); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return err // there already (nil), or unreadable
	}
	src := supervisor.StateDir(c.root, service, spec.DefaultEnv)
	if _, err := os.Lstat(src); errors.Is(err, fs.ErrNotExist) {
		return nil // production has none: the preview's starts empty
	}
	// cp -a keeps modes, times and links as they are; the owner becomes
	// the preview's user, as production's user owns production's.
	if out, err := exec.CommandContext(ctx, "cp", "-a", "--", src, dst).CombinedOutput(); err != nil {
		os.RemoveAll(dst)
		return fmt.Errorf("copying the state directory %s: %v: %s", src, err, strings.TrimSpace(string(out)))
	}
	if err := c.chown(dst, service, owner); err != nil {
		os.RemoveAll(dst)
		return fmt.Errorf("copying the state directory %s: %w", src, err)
	}
	c.mu.Lock()
	c.made[g.Instance(service)] = dst
	c.mu.Unlock()
	return nil
}

// Cleanup implements deploy.Cleaner.
func (c *stateCopier) Cleanup(_ context.Context, g *spec.Generation, service string, started bool) error {
	key := g.Instance(service)
	c.mu.Lock()
	dst, ok := c.made[key]
	delete(c.made, key)
	c.mu.Unlock()
	if started || !ok {
		return nil
	}
	return os.RemoveAll(dst)
}

// chown gives dir and everything in it to the user the instances owner
// owns of service run as; nothing when services do not run as their own
// users.
func (c *stateCopier) chown(dir, service, owner string) error {
	cred, err := c.sup.Credential(service, owner)
	if err != nil || cred == nil {
		return err
	}
	return filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(cred.Uid), int(cred.Gid))
	})
}
