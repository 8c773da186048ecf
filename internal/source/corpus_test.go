package source

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hostel/internal/supervisor"
)

// TestBadPrograms runs the corpus of specs whose programs cannot run through
// Load and Programs.Check, with the supervisor's resolution, beside a package ./pkg that holds an executable
// bin/app and a plain file bin/data. $DIR in an expected error stands for
// the spec's directory.
func TestBadPrograms(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad specs: %v", err)
	}
	type bad struct{ name, spec, want string }
	var cases []bad
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		in, want, ok := bytes.Cut(data, []byte("\n----\n"))
		if !ok {
			t.Fatalf("%s: no ---- line", f)
		}
		cases = append(cases, bad{strings.TrimSuffix(filepath.Base(f), ".txt"), string(in), strings.TrimSuffix(string(want), "\n")})
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "pkg/bin/app"), "#!/bin/sh\n", 0o755)
	writeFile(t, filepath.Join(dir, "pkg/bin/data"), "data\n", 0o644)
	t.Chdir(dir)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			writeFile(t, "hostel.json", c.spec, 0o644)
			l, err := Load("hostel.json")
			if err == nil {
				err = (Programs{Resolve: supervisor.ResolveExec}).Check(l.File, l.Spec)
			}
			if err == nil {
				t.Fatalf("accepted, want %q", c.want)
			}
			if got, want := err.Error(), strings.ReplaceAll(c.want, "$DIR", dir); got != want {
				t.Errorf("got  %q\nwant %q", got, want)
			}
		})
	}
}

// TestCheckProgramsAccepts checks that programs that can run pass: in the
// package, absolute, through a symbolic link, and on PATH.
func TestCheckProgramsAccepts(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "pkg/bin/app"), "#!/bin/sh\n", 0o755)
	if err := os.Symlink("app", filepath.Join(dir, "pkg/bin/link")); err != nil {
		t.Fatal(err)
	}
	spec := `{"services":{
		"a":{"package":"./pkg","exec":["bin/app"],"release":["bin/link","migrate"]},
		"b":{"exec":["` + filepath.Join(dir, "pkg/bin/app") + `"]},
		"c":{"exec":["sh","-c","true"]}}}`
	writeFile(t, filepath.Join(dir, "hostel.json"), spec, 0o644)
	l, err := Load(filepath.Join(dir, "hostel.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := (Programs{Resolve: supervisor.ResolveExec}).Check(l.File, l.Spec); err != nil {
		t.Fatal(err)
	}
}

func writeFile(tb testing.TB, path, data string, mode os.FileMode) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		tb.Fatal(err)
	}
}

// TestCheckProgramsAbsentStorePath: a program in a store path this machine
// lacks is a spec error, unless the check is a plan's or a node's whose
// cluster fetches store paths (Planned, Fetched); a program missing from
// a store path that is there is one whatever the check.
func TestCheckProgramsAbsentStorePath(t *testing.T) {
	dir := t.TempDir()
	absent := "/nix/store/22222222222222222222222222222222-hostel-test-absent"
	writeFile(t, filepath.Join(dir, "hostel.json"), `{"services":{"a":{"package":"`+absent+`","exec":["bin/app"]}}}`, 0o644)
	l, err := Load(filepath.Join(dir, "hostel.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		p    Programs
		ok   bool
	}{
		{"deploy", Programs{Resolve: supervisor.ResolveExec}, false},
		{"plan", Programs{Resolve: supervisor.ResolveExec, Planned: true}, true},
		{"cluster with a cache", Programs{Resolve: supervisor.ResolveExec, Fetched: true}, true},
	} {
		if err := tc.p.Check(l.File, l.Spec); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
