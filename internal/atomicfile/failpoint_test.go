//go:build failpoints

package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"hostel/internal/failpoint"
)

// TestFailpoints: an error before the rename leaves the old content and
// no temporary file; one after it leaves the new content, though the
// caller is told the write failed.
func TestFailpoints(t *testing.T) {
	tests := []struct {
		point, want string
	}{
		{"atomicfile-before-rename", "old"},
		{"atomicfile-after-rename", "new"},
	}
	for _, tt := range tests {
		t.Run(tt.point, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state.json")
			if err := WriteFile(path, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := failpoint.Enable(tt.point, "1*error"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { failpoint.Disable(tt.point) })
			if err := WriteFile(path, []byte("new"), 0o600); !errors.Is(err, failpoint.ErrInjected) {
				t.Fatalf("WriteFile: %v, want the injected error", err)
			}
			if got, err := os.ReadFile(path); err != nil || string(got) != tt.want {
				t.Errorf("content %q, %v; want %q", got, err, tt.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("left in the directory: %v", entries)
			}
		})
	}
}
