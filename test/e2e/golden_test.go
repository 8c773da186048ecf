package e2e

// Golden tests for the --json output of plan, deploy, status and
// generations: the machine-readable contract, which only ever grows.
//
// Run `go test ./test/e2e -run TestGoldenJSON -update` to rewrite the files
// in testdata/golden after a deliberate change (fields added), and review
// the diff.
//
// What must vary from run to run is normalized, and only that:
//   - the test's temporary directories (the root, the apps' packages):
//     <root>, <apps>;
//   - version hashes (12 hex digits; they hash the package directory, whose
//     path is temporary) and spec hashes (64 hex digits): <v1>, <v2>, … and
//     <spec1>, … in the order they first appear in the test;
//   - times ("time", "last_request" and a health check's "at" fields):
//     "<time>"; pids ("pid" fields, when not 0): "<pid>"; the bound listen
//     addresses: "<addr>"; a running process's use ("memory_bytes",
//     "cpu_seconds", when not 0): "<use>"; the node's name, the machine's
//     host name by default: "<node>".

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// crashApp builds the deploy engine's test app (internal/deploy/testdata/app:
// /healthz, APP_ID, and crashes on demand: CRASH, CRASH_AFTER, CRASH_FILE)
// into a package directory every service user can read, and returns it.
func crashApp(t testing.TB) string {
	t.Helper()
	return testApp(t, "crashapp", "./internal/deploy/testdata/app")
}

// crashSpec is a spec of one service "web" on web.example running the crash
// app with env.
func crashSpec(t testing.TB, env map[string]string) map[string]any {
	return map[string]any{"services": map[string]any{"web": map[string]any{
		"package": crashApp(t), "exec": []string{"bin/crashapp"}, "env": env,
		"domains": []string{"web.example"},
		"health":  map[string]any{"path": "/healthz", "timeout": "10s"},
	}}}
}

// normalizer replaces what varies between runs with stable names.
type normalizer struct {
	paths    map[string]string // temporary directory → its name
	versions map[string]string
	specs    map[string]string
}

var (
	specHashRE = regexp.MustCompile(`\b[0-9a-f]{64}\b`)
	versionRE  = regexp.MustCompile(`\b[0-9a-f]{12}\b`)
)

// normalize checks that raw is one JSON document and returns it with what
// varies replaced, byte for byte otherwise: field order and layout are
// part of what the golden file pins.
func (n *normalizer) normalize(t testing.TB, raw string) []byte {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(raw))
	var v any
	if err := dec.Decode(&v); err != nil || dec.More() {
		t.Fatalf("not one JSON document (%v):\n%s", err, raw)
	}
	s := timeRE.ReplaceAllString(raw, `"$1": "<time>"`)
	s = pidRE.ReplaceAllString(s, `"pid": "<pid>"`)
	s = addrRE.ReplaceAllString(s, `"$1": "<addr>"`)
	s = useRE.ReplaceAllString(s, `"$1": "<use>"`)
	s = nodeRE.ReplaceAllString(s, `"node": "<node>"`)
	for dir, name := range n.paths {
		s = strings.ReplaceAll(s, dir, name)
	}
	s = specHashRE.ReplaceAllStringFunc(s, func(h string) string { return label(n.specs, "spec", h) })
	s = versionRE.ReplaceAllStringFunc(s, func(h string) string { return label(n.versions, "v", h) })
	return []byte(s)
}

var (
	timeRE = regexp.MustCompile(`"(time|last_request|at)": "[^"]*"`)
	pidRE  = regexp.MustCompile(`"pid": [1-9][0-9]*`)
	addrRE = regexp.MustCompile(`"(http|https)": "[^"]+"`)
	useRE  = regexp.MustCompile(`"(memory_bytes|cpu_seconds)": (?:[1-9][0-9.e+-]*|0\.[0-9.e+-]+)`)
	nodeRE = regexp.MustCompile(`"node": "[^"]+"`) // the machine's host name
)

func label(m map[string]string, prefix, h string) string {
	if l, ok := m[h]; ok {
		return l
	}
	l := fmt.Sprintf("<%s%d>", prefix, len(m)+1)
	m[h] = l
	return l
}

// TestGoldenJSON drives a real daemon through a first deploy, a deploy
// rolled back by its confirm window, and a deploy that fails before the
// switch, and compares each command's --json with its golden file. A
// failed deploy prints its result too, and exits 1.
func TestGoldenJSON(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	n := &normalizer{paths: map[string]string{e.Root: "<root>", crashApp(t): "<apps>/crashapp"},
		versions: map[string]string{}, specs: map[string]string{}}
	check := func(name string, wantCode int, args ...string) {
		t.Helper()
		out, errOut, code := e.Run(args...)
		if code != wantCode {
			t.Fatalf("hostel %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, wantCode, out, errOut)
		}
		got := n.normalize(t, out)
		path := filepath.Join("testdata", "golden", name+".json")
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test ./test/e2e -run TestGoldenJSON -update writes it)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("hostel %s --json differs from %s (-update to accept):\ngot:\n%s\nwant:\n%s", args[0], path, got, want)
		}
	}

	e.WriteSpec(crashSpec(t, map[string]string{"APP_ID": "one"}))
	check("plan", 0, "plan", "--json")
	check("deploy-success", 0, "deploy", "--json", "--no-confirm")
	check("status", 0, "status", "--json")

	// Crashes every second: it passes health checks between restarts,
	// but its first restart fails the confirmation.
	e.WriteSpec(crashSpec(t, map[string]string{"APP_ID": "two", "CRASH_AFTER": "1s"}))
	check("deploy-rolled-back", 1, "deploy", "--json", "--confirm", "10s")
	check("status-switched-back", 0, "status", "--json")

	// Never gets ready: fails before the switch, nothing changes.
	e.WriteSpec(crashSpec(t, map[string]string{"APP_ID": "three", "CRASH": "1"}))
	check("deploy-failed-before-switch", 1, "deploy", "--json")

	check("generations", 0, "generations", "--json")
}
