package daemon

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestFollowRotation: logs -f goes on after the supervisor truncates the
// log, and after another file replaces it, without losing the old one's
// last lines.
func TestFollowRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.log")
	write := func(p, text string, flag int) {
		t.Helper()
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|flag, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(text); err != nil {
			t.Fatal(err)
		}
	}
	write(path, "before rotation\n", 0)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var out bytes.Buffer
	io.Copy(&out, f)

	// Truncated, then written again: what follows starts at 0.
	write(path, "truncated\n", os.O_TRUNC)
	f = followRotation(f, path, &out)
	io.Copy(&out, f)
	if got, want := out.String(), "before rotation\ntruncated\n"; got != want {
		t.Fatalf("after truncation: %q, want %q", got, want)
	}

	// Replaced: the old file's last line, then the new file.
	write(path, "old tail\n", os.O_APPEND)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	write(path, "new file\n", 0)
	f = followRotation(f, path, &out)
	io.Copy(&out, f)
	if got, want := out.String(), "before rotation\ntruncated\nold tail\nnew file\n"; got != want {
		t.Fatalf("after replacement: %q, want %q", got, want)
	}

	// Nothing happened: the same file.
	if g := followRotation(f, path, &out); g != f {
		t.Errorf("an unchanged log was reopened")
	}
}
