// Package nix drives the real Nix tools: it evaluates a hostel.nix to the
// canonical spec JSON, builds the derivations it references, pins what
// generations need with GC roots, runs the garbage collector, measures
// closures and copies them to other machines.
//
// It shells out to nix-instantiate, nix-store and nix (Debian's nix-bin 2.8
// or later), as a user may run them by hand; it never links Nix.
package nix

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// StoreDir is the Nix store.
const StoreDir = "/nix/store/"

// OptionsEnv names the environment variable that replaces DefaultOptions:
// Nix options passed to every Nix command, split on spaces. Set but empty
// means none.
const OptionsEnv = "HOSTEL_NIX_OPTIONS"

// DefaultOptions suit a machine without binary caches (offline, or builds
// that use host tools as nix/lib.nix does): no sandbox, no substituters.
var DefaultOptions = []string{"--option", "sandbox", "false", "--option", "substituters", ""}

// Options returns the Nix options hostel passes to every Nix command.
func Options() []string {
	if v, ok := os.LookupEnv(OptionsEnv); ok {
		return strings.Fields(v)
	}
	return DefaultOptions
}

// Available reports whether the Nix tools are installed.
func Available() bool {
	_, err := exec.LookPath("nix-store")
	return err == nil
}

// IsStorePath reports whether p is inside the Nix store.
func IsStorePath(p string) bool { return strings.HasPrefix(p, StoreDir) && len(p) > len(StoreDir) }

// StorePathOf returns the top-level store path of p ("/nix/store/x-y/bin/z"
// → "/nix/store/x-y"), or "" if p is not in the store.
func StorePathOf(p string) string {
	if !IsStorePath(p) {
		return ""
	}
	rest := p[len(StoreDir):]
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i]
	}
	return StoreDir + rest
}

// Evaluated is a hostel.nix evaluated to its canonical JSON form.
type Evaluated struct {
	// File is the evaluated file as the user named it.
	File string
	// JSON is the spec with every derivation replaced by its output path.
	JSON []byte
	// Drvs are the derivations each service references, by service; the
	// key "" holds those referenced outside services.
	Drvs map[string][]string
}

// AllDrvs returns every derivation to build, sorted, without duplicates.
func (ev *Evaluated) AllDrvs() []string {
	seen := map[string]bool{}
	var all []string
	for _, ds := range ev.Drvs {
		for _, d := range ds {
			if !seen[d] {
				seen[d] = true
				all = append(all, d)
			}
		}
	}
	sort.Strings(all)
	return all
}

// EvalError is a Nix evaluation error: the spec is wrong.
type EvalError struct {
	// Service is the service whose attributes failed to evaluate; "" when
	// the failure is outside any one service.
	Service string
	// Log is what Nix printed.
	Log string
}

func (e *EvalError) Error() string {
	msg := "nix evaluation failed"
	if e.Service != "" {
		msg = fmt.Sprintf("service %q: %s", e.Service, msg)
	}
	return msg + ":\n" + e.Log
}

// BuildError is a failed build: the named services' packages were not built.
type BuildError struct {
	File     string
	Services []string
	// Log is Nix's error message (its build output went to the log writer).
	Log string
}

func (e *BuildError) Error() string {
	var b strings.Builder
	b.WriteString(e.File + ": ")
	switch len(e.Services) {
	case 0:
		b.WriteString("nix build failed")
	case 1:
		fmt.Fprintf(&b, "service %q: package failed to build", e.Services[0])
	default:
		fmt.Fprintf(&b, "services %s: packages failed to build", quoteAll(e.Services))
	}
	if e.Log != "" {
		b.WriteString("\n" + strings.TrimRight(e.Log, "\n"))
	}
	return b.String()
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// evalExpr applies a function spec to {} and lists the derivations each
// service references: the string context of its JSON form holds them all,
// wherever they appear (package, exec, env).
const evalExpr = `{ file }:
let
  f = import (/. + file);
  s = if builtins.isFunction f then f { } else f;
  drvs = v: builtins.filter (p: builtins.match ".*\\.drv" p != null)
    (builtins.attrNames (builtins.getContext (builtins.toJSON v)));
in {
  spec = s;
  drvs = (if s ? services && builtins.isAttrs s.services
    then builtins.mapAttrs (n: v: drvs v) s.services else { }) // { "" = drvs (removeAttrs s [ "services" ]); };
}`

// serviceNamesExpr and serviceExpr locate an evaluation error.
const serviceNamesExpr = `{ file }:
let f = import (/. + file); s = if builtins.isFunction f then f { } else f;
in builtins.attrNames s.services`

const serviceExpr = `{ file, name }:
let f = import (/. + file); s = if builtins.isFunction f then f { } else f;
in builtins.toJSON s.services.${name}`

// Evaluate evaluates the spec file (an attribute set, or a function taking
// an attribute set) to canonical JSON and writes the derivations it needs to
// the store. A Nix error is an *EvalError.
func Evaluate(ctx context.Context, file string) (*Evaluated, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	out, stderr, err := run(ctx, nil, "nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode",
		"-E", evalExpr, "--argstr", "file", abs)
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return nil, err
		}
		return nil, &EvalError{Service: failingService(ctx, abs), Log: nixMessage(stderr)}
	}
	var raw struct {
		Spec json.RawMessage     `json:"spec"`
		Drvs map[string][]string `json:"drvs"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("nix-instantiate printed something other than JSON: %w", err)
	}
	if len(raw.Drvs[""]) == 0 {
		delete(raw.Drvs, "")
	}
	return &Evaluated{File: file, JSON: raw.Spec, Drvs: raw.Drvs}, nil
}

// failingService finds the first service whose attributes fail to
// evaluate, or "" if the failure is elsewhere.
func failingService(ctx context.Context, abs string) string {
	out, _, err := run(ctx, nil, "nix-instantiate", "--eval", "--strict", "--json", "-E", serviceNamesExpr, "--argstr", "file", abs)
	if err != nil {
		return ""
	}
	var names []string
	if json.Unmarshal(out, &names) != nil {
		return ""
	}
	for _, n := range names {
		if _, _, err := run(ctx, nil, "nix-instantiate", "--eval", "--strict", "-E", serviceExpr,
			"--argstr", "file", abs, "--argstr", "name", n); err != nil {
			return n
		}
	}
	return ""
}

// Build realises every derivation of ev. Nix's progress and build logs go
// to log as Nix prints them. A failed build is a *BuildError naming the
// services whose packages are missing.
func Build(ctx context.Context, ev *Evaluated, log io.Writer) error {
	drvs := ev.AllDrvs()
	if len(drvs) == 0 {
		return nil
	}
	args := append([]string{"--realise", "--keep-going"}, drvs...)
	_, stderr, err := run(ctx, log, "nix-store", args...)
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return err
	}
	return &BuildError{File: ev.File, Services: unbuilt(ctx, ev), Log: nixMessage(stderr)}
}

// unbuilt returns the services that reference a store path that is not
// valid after a build (a failed builder may leave a partial output behind,
// so existence is not enough).
func unbuilt(ctx context.Context, ev *Evaluated) []string {
	var s struct {
		Services map[string]json.RawMessage `json:"services"`
	}
	json.Unmarshal(ev.JSON, &s)
	var all []string
	for _, raw := range s.Services {
		for _, p := range storePathsIn(raw) {
			all = append(all, StorePathOf(p))
		}
	}
	if len(all) == 0 {
		return nil
	}
	out, _, err := run(ctx, nil, "nix-store", append([]string{"--check-validity", "--print-invalid"}, all...)...)
	if err != nil {
		return nil
	}
	invalid := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		invalid[p] = true
	}
	var failed []string
	for name, raw := range s.Services {
		for _, p := range storePathsIn(raw) {
			if invalid[StorePathOf(p)] {
				failed = append(failed, name)
				break
			}
		}
	}
	sort.Strings(failed)
	return failed
}

var storePathRE = regexp.MustCompile(`/nix/store/[0-9a-z]{32}-[^/"\\\s]+`)

// storePathsIn is StorePathsIn.
func storePathsIn(raw []byte) []string {
	return StorePathsIn(raw)
}

// nixMessage keeps Nix's error messages: from the first "error:" line on,
// or everything if there is none.
func nixMessage(stderr []byte) string {
	s := string(stderr)
	if i := strings.Index(s, "error:"); i >= 0 {
		s = s[strings.LastIndexByte(s[:i], '\n')+1:]
	}
	return strings.TrimRight(s, "\n")
}

// noise is what Nix prints that says nothing to a hostel user: hostel pins
// what it deploys itself.
var noise = []string{"you did not specify '--add-root'"}

// run runs a Nix tool with the configured options. Its stderr is returned
// and, if log is not nil, copied there line by line as it comes.
func run(ctx context.Context, log io.Writer, name string, args ...string) (stdout, stderr []byte, err error) {
	cmd := exec.CommandContext(ctx, name, append(Options(), args...)...)
	var out, errBuf bytes.Buffer
	cmd.Stdout = &out
	if log == nil {
		cmd.Stderr = &errBuf
		err = cmd.Run()
	} else {
		pr, pw := io.Pipe()
		cmd.Stderr = pw
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 4<<20)
			failing := false // from Nix's first error on, the caller reports it
		lines:
			for sc.Scan() {
				line := sc.Text()
				errBuf.WriteString(line + "\n")
				failing = failing || strings.HasPrefix(line, "error:")
				if failing {
					continue
				}
				for _, n := range noise {
					if strings.Contains(line, n) {
						continue lines
					}
				}
				fmt.Fprintln(log, line)
			}
			io.Copy(io.Discard, pr)
		}()
		err = cmd.Run()
		pw.Close()
		wg.Wait()
	}
	if errors.Is(err, exec.ErrNotFound) {
		return nil, nil, fmt.Errorf("%s is not installed: install Nix (Debian: apt-get install nix-bin)", name)
	}
	return out.Bytes(), errBuf.Bytes(), err
}

// StorePathsIn returns the store paths a JSON document (or any text)
// mentions, in order, with duplicates.
func StorePathsIn(doc []byte) []string {
	return storePathRE.FindAllString(string(doc), -1)
}
