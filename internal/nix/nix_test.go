package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func requireNix(t testing.TB) {
	t.Helper()
	if !Available() {
		t.Fatal("Nix is not installed (apt-get install nix-bin; .ci/run does it)")
	}
}

// writeSpec writes a hostel.nix into a fresh directory and returns its path.
func writeSpec(t testing.TB, text string) string {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "hostel.nix")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// script is a derivation whose output is a program printing msg; stamp
// makes each test's derivation its own.
func script(name, msg string) string {
	return `derivation { name = "` + name + `"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin && printf '#!/bin/sh\\necho ` + msg + `\\n' > $out/bin/` + name + ` && /bin/chmod +x $out/bin/` + name + `" ]; }`
}

// buildScript evaluates and builds a one-service hostel.nix whose package
// is script(name, …), made new for each run, and returns the spec's store
// paths.
func buildScript(t *testing.T, name string) []string {
	t.Helper()
	file := writeSpec(t, `{ services.a = { package = `+script(name, time.Now().Format("150405.000000000"))+`; exec = [ "bin/`+name+`" ]; }; }`)
	ctx := context.Background()
	ev, err := Evaluate(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	if err := Build(ctx, ev, nil); err != nil {
		t.Fatal(err)
	}
	return StorePathsIn(ev.JSON)
}

func TestEvaluateAndBuild(t *testing.T) {
	requireNix(t)
	stamp := time.Now().Format("150405.000000000")
	for _, tc := range []struct {
		name string
		text string
	}{
		{"attribute set", `{ services.hello = { package = ` + script("hello", "set-"+stamp) + `; exec = [ "bin/hello" ]; }; }`},
		{"function", `{ ... }: { zone = "test.internal"; services.hello = { package = ` + script("hello", "fn-"+stamp) + `; exec = [ "bin/hello" ]; env.X = "1"; }; }`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			file := writeSpec(t, tc.text)
			ev, err := Evaluate(ctx, file)
			if err != nil {
				t.Fatal(err)
			}
			var s struct {
				Services map[string]struct {
					Package string
					Exec    []string
				}
			}
			if err := json.Unmarshal(ev.JSON, &s); err != nil {
				t.Fatalf("JSON %s: %v", ev.JSON, err)
			}
			pkg := s.Services["hello"].Package
			if !IsStorePath(pkg) {
				t.Fatalf("package = %q, want a store path", pkg)
			}
			if got := ev.Drvs["hello"]; len(got) != 1 || !strings.HasSuffix(got[0], "-hello.drv") {
				t.Fatalf("drvs of hello = %v, want one hello.drv", got)
			}
			if _, err := os.Stat(pkg); err == nil {
				t.Fatalf("%s exists before the build", pkg)
			}
			var log bytes.Buffer
			if err := Build(ctx, ev, &log); err != nil {
				t.Fatal(err)
			}
			r := RootsFor(t.TempDir())
			t.Cleanup(func() { r.RemoveAll() })
			if err := r.Pin("hello-1", []string{pkg}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(log.String(), "hello.drv") || strings.Contains(log.String(), "--add-root") {
				t.Errorf("build log = %q, want Nix's progress without the --add-root warning", log.String())
			}
			out, err := runProgram(filepath.Join(pkg, "bin/hello"))
			if err != nil || !strings.Contains(out, stamp) {
				t.Fatalf("built program printed %q, %v", out, err)
			}
			// Built already: a second build does nothing and says nothing.
			log.Reset()
			if err := Build(ctx, ev, &log); err != nil || log.Len() != 0 {
				t.Fatalf("rebuild: %v, log %q", err, log.String())
			}
			n, err := ClosureSize(ctx, []string{pkg, "/not/in/store"})
			if err != nil || n <= 0 {
				t.Fatalf("closure size = %d, %v", n, err)
			}
		})
	}
}

func TestEvaluateErrors(t *testing.T) {
	requireNix(t)
	for _, tc := range []struct {
		name    string
		text    string
		service string
		log     string
	}{
		{"syntax", `{ services = { a = { exec = [ "x" ]; }; }`, "", "syntax error"},
		{"in a service", `{ services = { a = { exec = [ "/bin/true" ]; }; b = { exec = [ "x" ]; env.X = 1 + "x"; }; }; }`, "b", "cannot add"},
		{"missing source", `{ services.a = { package = ./nope; exec = [ "x" ]; }; }`, "a", "nope"},
		{"not a set", `[ 1 2 ]`, "", "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Evaluate(context.Background(), writeSpec(t, tc.text))
			var ee *EvalError
			if !errors.As(err, &ee) {
				t.Fatalf("err = %v, want an *EvalError", err)
			}
			if ee.Service != tc.service {
				t.Errorf("service = %q, want %q", ee.Service, tc.service)
			}
			if !strings.Contains(ee.Log, tc.log) || !strings.HasPrefix(ee.Log, "error:") {
				t.Errorf("log = %q, want Nix's message with %q", ee.Log, tc.log)
			}
		})
	}
}

func TestBuildFailureNamesTheService(t *testing.T) {
	requireNix(t)
	stamp := time.Now().Format("150405.000000000")
	file := writeSpec(t, `{ services = {
  good = { package = `+script("good", stamp)+`; exec = [ "bin/good" ]; };
  bad = { exec = [ "bin/bad" ]; package = derivation { name = "bad"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = [ "-c" "echo compiling `+stamp+`; echo broken >&2; exit 3" ]; }; };
}; }`)
	ctx := context.Background()
	ev, err := Evaluate(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	err = Build(ctx, ev, &log)
	var be *BuildError
	if !errors.As(err, &be) {
		t.Fatalf("err = %v, want a *BuildError", err)
	}
	if len(be.Services) != 1 || be.Services[0] != "bad" {
		t.Errorf("services = %v, want [bad]", be.Services)
	}
	first, rest, _ := strings.Cut(be.Error(), "\n")
	if !strings.Contains(first, file) || !strings.Contains(first, `service "bad"`) {
		t.Errorf("first line = %q, want the file and the service", first)
	}
	if !strings.Contains(rest, "exit code 3") {
		t.Errorf("detail = %q, want Nix's error", rest)
	}
	if !strings.Contains(log.String(), "compiling "+stamp) {
		t.Errorf("build log = %q, want the builder's output", log.String())
	}
}

// keeping is a Prune's keep that wants names.
func keeping(names ...string) func() (map[string]bool, error) {
	return func() (map[string]bool, error) {
		keep := map[string]bool{}
		for _, n := range names {
			keep[n] = true
		}
		return keep, nil
	}
}

// A version pinned while Prune runs — after it listed the pins, before
// it asked keep — stays: keep never heard of it.
func TestRootsPruneKeepsPinsMadeMeanwhile(t *testing.T) {
	r := Roots{Dir: t.TempDir()}
	for _, n := range []string{"a-111", "a-222"} {
		if err := os.Mkdir(filepath.Join(r.Dir, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := r.Prune(func() (map[string]bool, error) {
		// A preparation pins a-333 now, its process not started yet.
		return map[string]bool{"a-222": true}, os.Mkdir(filepath.Join(r.Dir, "a-333"), 0o755)
	})
	if err != nil || len(removed) != 1 || removed[0] != "a-111" {
		t.Errorf("Prune removed %v (%v), want [a-111]", removed, err)
	}
	if names, _ := r.Names(); strings.Join(names, ",") != "a-222,a-333" {
		t.Errorf("after Prune: %v, want a-222 and a-333", names)
	}
}

func TestRootsPinAndPrune(t *testing.T) {
	requireNix(t)
	pkg := buildScript(t, "pinned")[0]
	r1, r2 := RootsFor(t.TempDir()), RootsFor(t.TempDir())
	t.Cleanup(func() { r1.RemoveAll(); r2.RemoveAll() })
	if r1.Dir == r2.Dir || !strings.HasPrefix(r1.Dir, GCRootsDir+"/") {
		t.Fatalf("roots dirs %s and %s: want two apart under %s", r1.Dir, r2.Dir, GCRootsDir)
	}
	for _, name := range []string{"a-111", "a-222"} {
		if err := r1.Pin(name, []string{pkg + "/bin/pinned", "/srv/not-nix"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r1.Pin("a-111", []string{pkg}); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := r2.Pin("b-333", []string{pkg}); err != nil {
		t.Fatal(err)
	}
	if err := r1.Pin("a-444", []string{StoreDir + "00000000000000000000000000000000-missing"}); err == nil {
		t.Errorf("pinning a path not in the store: no error")
	}
	names, _ := r1.Names()
	if got := strings.Join(names, ","); got != "a-111,a-222,a-444" && got != "a-111,a-222" {
		t.Errorf("names = %q", got)
	}
	paths, err := r1.Paths("a-111")
	if err != nil || len(paths) != 1 || paths[0] != pkg {
		t.Errorf("paths of a-111 = %v, %v; want [%s]", paths, err, pkg)
	}
	removed, err := r1.Prune(keeping("a-222"))
	if err != nil {
		t.Fatal(err)
	}
	if names, _ := r1.Names(); len(names) != 1 || names[0] != "a-222" {
		t.Errorf("after prune: %v (removed %v), want [a-222]", names, removed)
	}
	if names, _ := r2.Names(); len(names) != 1 {
		t.Errorf("the other daemon's roots: %v, want untouched", names)
	}
	if _, err := r1.Prune(keeping()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r1.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an empty roots dir stays behind: %v", err)
	}
}

func TestCopyToBinaryCache(t *testing.T) {
	requireNix(t)
	paths := buildScript(t, "copied")
	cache := t.TempDir()
	var log bytes.Buffer
	if err := Copy(context.Background(), "file://"+cache, paths, &log); err != nil {
		t.Fatal(err)
	}
	hash := strings.SplitN(strings.TrimPrefix(paths[0], StoreDir), "-", 2)[0]
	if _, err := os.Stat(filepath.Join(cache, hash+".narinfo")); err != nil {
		t.Errorf("no narinfo for the copied path: %v (log %s)", err, log.String())
	}
}

func TestStorePathOf(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/nix/store/abc-x/bin/y", "/nix/store/abc-x"},
		{"/nix/store/abc-x", "/nix/store/abc-x"},
		{"/nix/store/", ""},
		{"/srv/app", ""},
	} {
		if got := StorePathOf(tc.in); got != tc.want {
			t.Errorf("StorePathOf(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func runProgram(path string) (string, error) {
	out, err := osexec.Command(path).CombinedOutput()
	return string(out), err
}
