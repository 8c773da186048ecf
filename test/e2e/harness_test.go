package e2e

// The harness: it builds the real hostel binary, runs `hostel serve` in a
// temporary root on port 0, and deploys real example apps.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/store/storetest/backends"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// build compiles hostel (with failpoints) and the example apps once per
// test binary, into a directory every service user can read.
func build(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "hostel-e2e-bin-")
		if buildErr != nil {
			return
		}
		os.Chmod(binDir, 0o755)
		targets := map[string]string{"hostel": "./cmd/hostel"}
		for _, app := range []string{"quotes", "blog", "shop", "wiki", "guestbook"} {
			targets[filepath.Join(app, "bin", app)] = "./examples/monoliths/" + app
		}
		for out, pkg := range targets {
			// With failpoints (docs/failpoints.md): HOSTEL_FAILPOINTS in
			// a daemon's environment (Env.DaemonEnv) makes it fail there.
			cmd := exec.Command("go", "build", "-tags", "failpoints", "-o", filepath.Join(binDir, out), pkg)
			cmd.Dir = repoRoot()
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
		buildErr = exec.Command("chmod", "-R", "a+rX", binDir).Run()
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if lateAppDir != "" {
		os.RemoveAll(lateAppDir)
	}
	os.Exit(code)
}

// Env is one test's world: a root, a spec directory and a daemon.
type Env struct {
	t     testing.TB
	Bin   string // the hostel binary
	Apps  string // directory with the example apps' packages
	Root  string
	Dir   string // where the spec file lives; commands run here
	HTTP  string // the daemon's bound HTTP address
	HTTPS string // the daemon's bound HTTPS address; "" when HTTPS is off
	// DaemonEnv is added to the environment of the daemons StartDaemon
	// runs (a failpoint, say).
	DaemonEnv []string
	// Wrap, if set, is a command StartDaemon runs `hostel serve` under
	// (its arguments, then hostel's), which execs it:
	// systemd-socket-activate, or a private mount namespace.
	Wrap []string
	// Store is where the daemons StartDaemon runs keep their state when
	// their flags do not say (neither --etcd nor --etcd-embed): "bbolt",
	// or "etcd" for an etcd member in the daemon (--etcd-embed). NewEnv
	// takes it from HOSTEL_TEST_STORE; a test that must start on one sets
	// it.
	Store string
	// Files are passed to the daemon from descriptor 3 on (with
	// LISTEN_FDS in DaemonEnv: sockets held the way systemd does).
	Files []*os.File
	// args are the flags the daemon was last started with.
	args   []string
	daemon *exec.Cmd
	logs   *bytes.Buffer
	done   chan struct{}
	logsMu sync.Mutex
	// logged is set once the daemon's log was printed for a failure.
	logged bool
	// earlier are the logs of the daemons started before the last,
	// the latest last (maxEarlier at most), printed with its own.
	earlier []string
}

// NewEnv prepares a root and a spec directory.
func NewEnv(t testing.TB) *Env {
	t.Helper()
	bin := build(t)
	base := t.TempDir()
	// t.TempDir is 0700 (and so is its parent); service users must reach their state.
	os.Chmod(base, 0o755)
	os.Chmod(filepath.Dir(base), 0o755)
	e := &Env{t: t, Bin: filepath.Join(bin, "hostel"), Apps: bin, Root: filepath.Join(base, "root"), Dir: filepath.Join(base, "repo"),
		Store: backends.Chosen(t)}
	if err := os.MkdirAll(e.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// StartDaemon runs `hostel serve` with HTTPS off and waits until it answers.
func (e *Env) StartDaemon() {
	e.t.Helper()
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "")
}

// StartDaemonArgs runs `hostel serve --root ROOT ARGS...` and waits until
// it answers; ARGS must include --http and --https. Unless they choose a
// store, --etcd-embed is added when e.Store is "etcd".
func (e *Env) StartDaemonArgs(args ...string) {
	e.t.Helper()
	e.spawnDaemon(args...)
	e.waitDaemon()
}

// spawnDaemon runs `hostel serve --root ROOT ARGS...` (as StartDaemonArgs)
// and returns at once, before it answers.
func (e *Env) spawnDaemon(args ...string) {
	e.t.Helper()
	e.spawn(args...)
	e.t.Cleanup(func() {
		// Once, however many daemons the test started (TestCrashAnyTime
		// starts a thousand).
		if e.t.Failed() && !e.logged {
			e.logged = true
			for i, l := range e.earlier {
				e.t.Logf("log of the daemon started %d before the last:\n%s", len(e.earlier)-i, l)
			}
			e.t.Logf("daemon log:\n%s", e.DaemonLog())
		}
		if e.daemon != nil {
			select {
			case <-e.done:
				// Killed by the test, which ended before it started
				// the next: one more start adopts the services, for
				// the shutdown to stop them.
				e.spawn(e.args...)
				e.waitDaemon()
			default:
			}
			e.Shutdown() // services outlive a plain stop of the daemon
		}
	})
}

// maxEarlier is how many logs of earlier daemons an Env keeps for a
// failure: those of the last rounds of the chaos harness, whose nodes start
// again each round.
const maxEarlier = 4

// spawn starts `hostel serve --root ROOT ARGS...`.
func (e *Env) spawn(args ...string) {
	e.t.Helper()
	if e.Store == "etcd" && !slices.ContainsFunc(args, func(a string) bool { return a == "--etcd" || a == "--etcd-embed" }) {
		args = append(slices.Clip(args), "--etcd-embed")
	}
	if e.logs != nil {
		e.earlier = append(e.earlier, e.DaemonLog())
		e.earlier = e.earlier[max(0, len(e.earlier)-maxEarlier):]
	}
	e.logs = &bytes.Buffer{}
	e.args = args
	argv := append(slices.Clip(e.Wrap), append([]string{e.Bin, "serve", "--root", e.Root}, args...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), e.DaemonEnv...)
	cmd.ExtraFiles = e.Files
	cmd.Stdout = lockedWriter{&e.logsMu, e.logs}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.daemon = cmd
	e.done = make(chan struct{})
	go func() { cmd.Wait(); close(e.done) }()
}

// waitDaemon waits until the daemon spawnDaemon ran answers, and learns
// its addresses.
func (e *Env) waitDaemon() {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-e.done:
			e.t.Fatalf("hostel serve exited:\n%s", e.DaemonLog())
		default:
		}
		var st struct{ Listen struct{ HTTP, HTTPS string } }
		if out, _, code := e.Run("status", "--json"); code == 0 && json.Unmarshal([]byte(out), &st) == nil && st.Listen.HTTP != "" {
			e.HTTP, e.HTTPS = st.Listen.HTTP, st.Listen.HTTPS
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("daemon did not answer:\n%s", e.DaemonLog())
}

// StopDaemon sends SIGTERM and waits for a clean exit.
func (e *Env) StopDaemon() {
	e.t.Helper()
	e.daemon.Process.Signal(os.Interrupt)
	select {
	case <-e.done:
	case <-time.After(40 * time.Second):
		e.daemon.Process.Kill()
		e.t.Errorf("daemon did not stop within 40s")
	}
	e.daemon = nil
}

// Shutdown runs `hostel shutdown`, which stops every service and then the
// daemon, and waits for the daemon to exit.
func (e *Env) Shutdown() {
	e.t.Helper()
	if out, errOut, code := e.Run("shutdown"); code != 0 {
		e.t.Errorf("hostel shutdown: exit %d\n%s%s", code, out, errOut)
		e.StopDaemon()
		return
	}
	select {
	case <-e.done:
	case <-time.After(60 * time.Second):
		e.daemon.Process.Kill()
		e.t.Errorf("daemon did not exit within 60s of hostel shutdown")
	}
	e.daemon = nil
}

// etcdURL is the --etcd the daemon was last started with, "" if none.
func (e *Env) etcdURL() string {
	for i, a := range e.args {
		if a == "--etcd" && i+1 < len(e.args) {
			return e.args[i+1]
		}
	}
	return ""
}

// DaemonLog returns what the daemon printed.
func (e *Env) DaemonLog() string {
	e.logsMu.Lock()
	defer e.logsMu.Unlock()
	return e.logs.String()
}

// Run runs a hostel command in the spec directory and returns stdout, stderr and the exit code.
func (e *Env) Run(args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Bin, append([]string{"--root", e.Root}, args...)...)
	cmd.Dir = e.Dir
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		e.t.Fatalf("hostel %v: %v", args, err)
	}
	return o.String(), er.String(), code
}

// MustRun runs a command that must succeed.
func (e *Env) MustRun(args ...string) string {
	e.t.Helper()
	out, errOut, code := e.Run(args...)
	if code != 0 {
		e.t.Fatalf("hostel %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// WriteSpec writes hostel.json in the spec directory.
func (e *Env) WriteSpec(v any) {
	e.t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.Dir, "hostel.json"), b, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// App returns a service entry running example app name.
func (e *Env) App(name string, extra map[string]any) map[string]any {
	svc := map[string]any{"package": filepath.Join(e.Apps, name), "exec": []string{"bin/" + name}}
	for k, v := range extra {
		svc[k] = v
	}
	return svc
}

// Get requests path on the daemon's HTTP listener with the given Host.
func (e *Env) Get(host, path string) (int, http.Header, string) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", "http://"+e.HTTP+path, nil)
	req.Host = host
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// ServiceStatus is one entry of status --json.
type ServiceStatus struct {
	Name, Version, State, URL string
	Env                       string // whose instance: production or a preview's own
	PID                       int
	Ready                     bool
	Domains                   []string
}

// Status returns `hostel status --json`.
func (e *Env) Status() (gen uint64, svcs map[string]ServiceStatus) {
	e.t.Helper()
	var st struct {
		Generation uint64
		Services   []ServiceStatus
	}
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	svcs = map[string]ServiceStatus{}
	for _, s := range st.Services {
		if s.State == "draining" {
			continue
		}
		svcs[s.Name] = s
	}
	return st.Generation, svcs
}

// pidAlive reports whether a process exists.
func pidAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func newRequest(method, url, body string) (*http.Request, error) {
	return http.NewRequest(method, url, strings.NewReader(body))
}
