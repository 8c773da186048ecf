package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
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
// into: a redeploy keeps what the preview wrote. Its cleanup removes a
// copy it made for a version that then did not start.
type stateCopier struct {
	root string

	mu sync.Mutex
	// made holds the directories copied for versions not yet kept, by
	// instance.
	made map[spec.VersionKey]string
}

func newStateCopier(root string) *stateCopier {
	return &stateCopier{root: root, made: map[spec.VersionKey]string{}}
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
	// cp -a keeps owners, modes, times and links as they are: the
	// service's user owns its copy as it owns production's.
	if out, err := exec.CommandContext(ctx, "cp", "-a", "--", src, dst).CombinedOutput(); err != nil {
		os.RemoveAll(dst)
		return fmt.Errorf("copying the state directory %s: %v: %s", src, err, strings.TrimSpace(string(out)))
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
