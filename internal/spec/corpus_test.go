package spec

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readCorpus reads the bad specs in dir: each file holds a spec, a line
// "----", and the one-line error it must be refused with.
func readCorpus(tb testing.TB, dir string) map[string][2]string {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no bad specs in %s: %v", dir, err)
	}
	out := map[string][2]string{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		in, want, ok := bytes.Cut(data, []byte("\n----\n"))
		if !ok {
			tb.Fatalf("%s: no ---- line", f)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".txt")] = [2]string{string(in), strings.TrimSuffix(string(want), "\n")}
	}
	return out
}

// TestBadSpecs runs the corpus of bad specs through the decoder: each is
// refused with exactly its one-line error.
func TestBadSpecs(t *testing.T) {
	for name, c := range readCorpus(t, "testdata/bad") {
		t.Run(name, func(t *testing.T) {
			_, err := Decode("hostel.json", []byte(c[0]))
			if err == nil {
				t.Fatalf("accepted, want %q", c[1])
			}
			if got := err.Error(); got != c[1] {
				t.Errorf("got  %q\nwant %q", got, c[1])
			}
		})
	}
}
