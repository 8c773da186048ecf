package nix

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"hostel/internal/failpoint"
)

// GCRootsDir holds hostel's GC roots: one directory per daemon root (named
// by a hash of its path, so daemons with different roots on one machine
// keep apart), one directory per pinned version inside, and in that a
// symlink to each store path the version needs. Nix scans the directories
// under its gcroots recursively.
var GCRootsDir = "/nix/var/nix/gcroots/hostel"

// Roots are the GC roots of one daemon.
type Roots struct {
	// Dir is GCRootsDir/<hash of the daemon's root>.
	Dir string
}

// RootsFor returns the roots of the daemon whose state directory is root.
func RootsFor(root string) Roots {
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	sum := sha256.Sum256([]byte(root))
	return Roots{Dir: filepath.Join(GCRootsDir, hex.EncodeToString(sum[:8]))}
}

// Pin makes name (a version, "service-version") a GC root of the store
// paths among paths; paths outside the store are ignored. It is idempotent.
func (r Roots) Pin(name string, paths []string) error {
	var store []string
	for _, p := range paths {
		if sp := StorePathOf(p); sp != "" {
			store = append(store, sp)
		}
	}
	if len(store) == 0 {
		return nil
	}
	if err := failpoint.Inject("gcroots-before-pin"); err != nil {
		return fmt.Errorf("gc root: %w", err)
	}
	dir := filepath.Join(r.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gc root: %w", err)
	}
	for _, p := range store {
		if _, err := os.Lstat(p); err != nil {
			return fmt.Errorf("%s is not in this machine's Nix store (build it, or nix copy it here)", p)
		}
		link := filepath.Join(dir, filepath.Base(p))
		if t, err := os.Readlink(link); err == nil && t == p {
			continue
		}
		tmp := link + ".tmp"
		os.Remove(tmp)
		if err := os.Symlink(p, tmp); err != nil {
			return fmt.Errorf("gc root: %w", err)
		}
		if err := os.Rename(tmp, link); err != nil {
			return fmt.Errorf("gc root: %w", err)
		}
	}
	if err := failpoint.Inject("gcroots-after-pin"); err != nil {
		return fmt.Errorf("gc root: %w", err)
	}
	return nil
}

// Pinned reports whether name is pinned.
func (r Roots) Pinned(name string) bool {
	fi, err := os.Stat(filepath.Join(r.Dir, name))
	return err == nil && fi.IsDir()
}

// Unpin removes name's roots; a name not pinned is no error.
func (r Roots) Unpin(name string) error {
	if err := os.RemoveAll(filepath.Join(r.Dir, name)); err != nil {
		return fmt.Errorf("gc root: %w", err)
	}
	if left, _ := r.Names(); len(left) == 0 {
		os.Remove(r.Dir) // leave nothing behind for a daemon with no roots
	}
	return nil
}

// Names lists the pinned versions, sorted.
func (r Roots) Names() ([]string, error) {
	ents, err := os.ReadDir(r.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Paths returns the store paths name pins.
func (r Roots) Paths(name string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(r.Dir, name))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if t, err := os.Readlink(filepath.Join(r.Dir, name, e.Name())); err == nil && strings.HasPrefix(t, StoreDir) {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Prune removes every pinned version that keep does not want and returns
// their names. It lists the pinned versions before it asks keep about any
// (once, for all of them): a version pinned meanwhile is not listed, so
// not removed, and keep sees every version whose pin was listed as held
// by whatever held it when that pin was made (a preparation under way).
func (r Roots) Prune(keep func() (map[string]bool, error)) ([]string, error) {
	names, err := r.Names()
	if err != nil {
		return nil, err
	}
	held, err := keep()
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, n := range names {
		if held[n] {
			continue
		}
		if len(removed) == 0 {
			if err := failpoint.Inject("gcroots-before-prune"); err != nil {
				return nil, fmt.Errorf("gc root: %w", err)
			}
		}
		if err := os.RemoveAll(filepath.Join(r.Dir, n)); err != nil {
			return removed, fmt.Errorf("gc root: %w", err)
		}
		removed = append(removed, n)
	}
	if left, _ := r.Names(); len(left) == 0 {
		os.Remove(r.Dir) // leave nothing behind for a daemon with no roots
	}
	return removed, nil
}

// RemoveAll removes every root of the daemon.
func (r Roots) RemoveAll() error { return os.RemoveAll(r.Dir) }
