// Package golden runs the golden-file tests of the pure deciders (plan,
// place): each file is a txtar archive whose sections are a case's inputs
// and, last, "want", what the decider must write for them; `go test
// -update` rewrites the want sections.
package golden

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/tools/txtar"
)

var update = flag.Bool("update", false, "rewrite the golden files' want sections")

// Run runs one subtest per file matching pattern: decide gets the file's
// sections by name and returns what it decided, compared with (or, with
// -update, written to) the section "want".
func Run(t *testing.T, pattern string, decide func(t *testing.T, sections map[string]string) string) {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files %s: %v", pattern, err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), filepath.Ext(file))
		t.Run(name, func(t *testing.T) {
			a, err := txtar.ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			sections := map[string]string{}
			for _, f := range a.Files {
				sections[f.Name] = string(f.Data)
			}
			got := decide(t, sections)
			if *update {
				setWant(a, got)
				if err := os.WriteFile(file, txtar.Format(a), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if want := sections["want"]; got != want {
				t.Errorf("%s: got:\n%s\nwant:\n%s\n(go test -update to accept)", file, got, want)
			}
		})
	}
}

// setWant makes a's section "want" got, the last.
func setWant(a *txtar.Archive, got string) {
	for i, f := range a.Files {
		if f.Name == "want" {
			a.Files = append(a.Files[:i], a.Files[i+1:]...)
			break
		}
	}
	a.Files = append(a.Files, txtar.File{Name: "want", Data: []byte(got)})
}
