// Package atomicfile replaces files so that a crash at any moment leaves
// either the old content or the new, never a torn file: write a temporary
// file in the same directory, fsync it, rename it over the target, fsync the
// directory so the rename itself is durable.
package atomicfile

import (
	"errors"
	"os"
	"path/filepath"

	"hostel/internal/failpoint"
)

// WriteFile atomically replaces path with data, with permissions mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if err := errors.Join(err, f.Close()); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := failpoint.Inject("atomicfile-before-rename"); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := failpoint.Inject("atomicfile-after-rename"); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
