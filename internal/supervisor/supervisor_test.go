package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hostel/internal/cgroup"
	"hostel/internal/spec"
	"hostel/internal/supervisor/supervisortest"
)

// appDir holds the test service binary "app", built once in TestMain.
var appDir string

// markerVar is set in the test process; no service may see it.
const markerVar = "HOSTEL_SUPERVISOR_TEST_MARKER"

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	os.Setenv(markerVar, "leaked")
	dir, err := supervisortest.BuildApp("hostel-app-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	appDir = dir
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left running by the supervisor:\n%s\n", leaked)
			return 1
		}
	}
	return code
}

// leakedGoroutines waits up to d for every goroutine running supervisor code
// to end, and returns the stacks of those that did not.
func leakedGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "hostel/internal/supervisor.") && !strings.Contains(g, "supervisor.TestMain") &&
				!strings.Contains(g, "supervisor.leakedGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newSupervisor returns a supervisor on a fresh root, stopped at cleanup.
// The root is short (a unix socket path must fit 108 bytes) and 0755 so
// that service users can reach their directories.
func newSupervisor(t testing.TB, opts Options) (*Supervisor, string) {
	t.Helper()
	root, err := os.MkdirTemp("", "hs")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	opts.Root = root
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	s := New(opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.StopAll(ctx); err != nil {
			t.Errorf("StopAll: %v", err)
		}
		os.RemoveAll(root)
	})
	return s, root
}

// appConfig runs the test app with args.
func appConfig(service string, args ...string) Config {
	return Config{
		Service:    service,
		Version:    "0123456789ab",
		Dir:        appDir,
		Exec:       append([]string{"app"}, args...),
		HealthPath: "/healthz",
	}
}

func start(t testing.TB, s *Supervisor, cfg Config) *Instance {
	t.Helper()
	i, err := s.Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return i
}

func startReady(t testing.TB, s *Supervisor, cfg Config) *Instance {
	t.Helper()
	i := start(t, s, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := i.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	return i
}

func get(t testing.TB, addr, path string) []byte {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	return b
}

func getInt(t testing.TB, addr, path string) int {
	t.Helper()
	n, err := strconv.Atoi(string(get(t, addr, path)))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return n
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid is a live (not zombie) process.
// goneWithin reports whether pid has exited within d: a SIGKILLed process
// takes a moment to die, more so on a busy machine.
func goneWithin(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

func stop(t testing.TB, s *Supervisor, key spec.VersionKey) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.Stop(ctx, key); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

func TestEnvironment(t *testing.T) {
	t.Parallel()
	s, root := newSupervisor(t, Options{})
	cfg := appConfig("envsvc")
	cfg.Env = map[string]string{"LOG_LEVEL": "debug", "API_URL": "http://api.example", "PORT": "1"}
	i := startReady(t, s, cfg)

	var got map[string]string
	if err := json.Unmarshal(get(t, i.Addr(), "/env"), &got); err != nil {
		t.Fatal(err)
	}
	port := i.Status().Port
	key := "envsvc-0123456789ab"
	want := map[string]string{
		"PORT":              strconv.Itoa(port),
		"HOST":              "127.0.0.1",
		"STATE_DIRECTORY":   filepath.Join(root, "state", "envsvc"),
		"RUNTIME_DIRECTORY": filepath.Join(root, "run", key),
		"HOSTEL_SERVICE":    "envsvc",
		"HOSTEL_VERSION":    "0123456789ab",
		"NOTIFY_SOCKET":     filepath.Join(root, "run", key, "notify"),
		"PATH":              "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME":              filepath.Join(root, "state", "envsvc"),
		"LOG_LEVEL":         "debug",
		"API_URL":           "http://api.example",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected variable %s=%q", k, got[k])
		}
	}
	if _, ok := got[markerVar]; ok {
		t.Errorf("the daemon's environment leaked: %s is set", markerVar)
	}
	if i.Addr() != "127.0.0.1:"+strconv.Itoa(port) {
		t.Errorf("Addr() = %q, want port %d", i.Addr(), port)
	}
	if i.Key() != spec.VersionKey(key) {
		t.Errorf("Key() = %q, want %q", i.Key(), key)
	}
}

func TestReady(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		args       []string
		healthPath string
		// listening says whether the port must accept once ready.
		listening bool
	}{
		{name: "health path", args: []string{"-slow-start", "300ms"}, healthPath: "/healthz", listening: true},
		{name: "tcp connect", args: []string{"-slow-start", "300ms"}, listening: true},
		// With a health path, READY=1 only starts the checking.
		{name: "notify socket", args: []string{"-notify", "-slow-start", "300ms"}, healthPath: "/healthz", listening: true},
		{name: "notify socket without health path", args: []string{"-notify", "-slow-start", "30s"}, listening: false},
	}
	for n, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, _ := newSupervisor(t, Options{})
			cfg := appConfig(fmt.Sprintf("ready%d", n), tt.args...)
			cfg.HealthPath = tt.healthPath
			cfg.StopGrace = time.Second
			i := startReady(t, s, cfg)
			st := i.Status()
			if !st.Ready || st.State != StateRunning {
				t.Errorf("status after ready = %s, ready %v; want running, ready", st.State, st.Ready)
			}
			c, err := net.DialTimeout("tcp", i.Addr(), time.Second)
			if err == nil {
				c.Close()
			}
			if listening := err == nil; listening != tt.listening {
				t.Errorf("port accepting = %v, want %v (dial: %v)", listening, tt.listening, err)
			}
			if err := i.Healthy(context.Background()); (err == nil) != tt.listening {
				t.Errorf("Healthy() = %v, want healthy %v", err, tt.listening)
			}
		})
	}
}

func TestReadyTimeout(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	cfg := appConfig("slow", "-slow-start", "30s")
	cfg.ReadyTimeout = 300 * time.Millisecond
	cfg.StopGrace = time.Second
	i := start(t, s, cfg)
	begin := time.Now()
	err := i.WaitReady(context.Background())
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("WaitReady = %v, want ErrNotReady", err)
	}
	if d := time.Since(begin); d < 300*time.Millisecond || d > 3*time.Second {
		t.Errorf("WaitReady took %v, want about 300ms", d)
	}
	if !strings.Contains(err.Error(), "app starting pid") {
		t.Errorf("error lacks the log's last lines: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := i.WaitReady(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitReady(canceled) = %v, want context.Canceled", err)
	}
}

func TestRepeatedCrashFails(t *testing.T) {
	t.Parallel()
	s, root := newSupervisor(t, Options{})
	cfg := appConfig("crashy", "-exit-now")
	i := start(t, s, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := i.WaitReady(ctx)
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("WaitReady = %v, want ErrFailed", err)
	}
	for _, want := range []string{"exit status 3", "boom: bad configuration"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	st, ok := s.Status(i.Key())
	if !ok {
		t.Fatal("a failed instance must stay known")
	}
	if st.State != StateFailed || st.PID != 0 || st.Ready {
		t.Errorf("status = %+v, want failed with no pid", st)
	}
	if st.Restarts != maxCrashes-1 {
		t.Errorf("Restarts = %d, want %d", st.Restarts, maxCrashes-1)
	}
	if st.LastError != "exit status 3" {
		t.Errorf("LastError = %q, want %q", st.LastError, "exit status 3")
	}
	if _, err := os.Stat(filepath.Join(root, "run", string(i.Key()))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("RUNTIME_DIRECTORY of a failed instance: %v, want removed", err)
	}

	// Starting a failed key again starts afresh.
	cfg.Exec = []string{"app"}
	ni := startReady(t, s, cfg)
	if ni == i {
		t.Error("Start of a failed key returned the failed instance")
	}
}

func TestCrashRestarts(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	i := startReady(t, s, appConfig("crash", "-child"))
	before := i.Status()
	child := getInt(t, i.Addr(), "/child")

	c := &http.Client{Timeout: 2 * time.Second}
	if resp, err := c.Get("http://" + i.Addr() + "/crash"); err == nil {
		resp.Body.Close()
	}
	waitFor(t, "a new ready process", func() bool {
		st := i.Status()
		return st.Ready && st.PID != 0 && st.PID != before.PID
	})
	after := i.Status()
	if after.Port != before.Port {
		t.Errorf("port after restart = %d, want %d", after.Port, before.Port)
	}
	if after.Restarts != 1 {
		t.Errorf("Restarts = %d, want 1", after.Restarts)
	}
	if after.LastError != "exit status 1" {
		t.Errorf("LastError = %q, want %q", after.LastError, "exit status 1")
	}
	if got := getInt(t, i.Addr(), "/pid"); got != after.PID {
		t.Errorf("serving pid %d, status says %d", got, after.PID)
	}
	waitFor(t, "the crashed process's child to be killed", func() bool { return !alive(child) })
}

func TestStop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		grace   time.Duration
		minTime time.Duration
		maxTime time.Duration
		logLine string
	}{
		{name: "sigterm", grace: 5 * time.Second, maxTime: 2 * time.Second, logLine: "terminating on SIGTERM"},
		{name: "sigkill after grace", args: []string{"-ignore-term"}, grace: 500 * time.Millisecond,
			minTime: 500 * time.Millisecond, maxTime: 3 * time.Second, logLine: "ignoring SIGTERM"},
		{name: "group with child", args: []string{"-child"}, grace: 5 * time.Second, maxTime: 2 * time.Second,
			logLine: "terminating on SIGTERM"},
		{name: "group with child ignoring sigterm", args: []string{"-child", "-ignore-term"}, grace: 300 * time.Millisecond,
			minTime: 300 * time.Millisecond, maxTime: 3 * time.Second, logLine: "ignoring SIGTERM"},
	}
	for n, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, root := newSupervisor(t, Options{})
			cfg := appConfig(fmt.Sprintf("stop%d", n), tt.args...)
			cfg.StopGrace = tt.grace
			i := startReady(t, s, cfg)
			st := i.Status()
			child := getInt(t, i.Addr(), "/child")

			begin := time.Now()
			stop(t, s, i.Key())
			if d := time.Since(begin); d < tt.minTime || d > tt.maxTime {
				t.Errorf("Stop took %v, want between %v and %v", d, tt.minTime, tt.maxTime)
			}
			if alive(st.PID) {
				t.Errorf("process %d still alive", st.PID)
			}
			if child != 0 && !goneWithin(child, 2*time.Second) {
				t.Errorf("child %d still alive", child)
			}
			if _, ok := s.Get(i.Key()); ok {
				t.Error("a stopped instance is still known")
			}
			if got := i.Status().State; got != StateStopped {
				t.Errorf("state = %s, want stopped", got)
			}
			if _, err := os.Stat(filepath.Join(root, "run", string(i.Key()))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("RUNTIME_DIRECTORY: %v, want removed", err)
			}
			fi, err := os.Stat(filepath.Join(root, "state", cfg.Service))
			if err != nil {
				t.Fatalf("STATE_DIRECTORY: %v", err)
			}
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("STATE_DIRECTORY mode %v, want 0700", fi.Mode().Perm())
			}
			if _, err := os.Stat(filepath.Join(root, "state", cfg.Service, "touched")); err != nil {
				t.Errorf("file written to STATE_DIRECTORY: %v", err)
			}
			log, err := os.ReadFile(st.LogPath)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(log), tt.logLine) {
				t.Errorf("log lacks %q:\n%s", tt.logLine, log)
			}
			l, err := net.Listen("tcp", i.Addr())
			if err != nil {
				t.Errorf("port still taken after stop: %v", err)
			} else {
				l.Close()
			}
			if err := i.WaitReady(context.Background()); !errors.Is(err, ErrStopped) {
				t.Errorf("WaitReady after stop = %v, want ErrStopped", err)
			}
		})
	}
}

func TestStopUnknown(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	if err := s.Stop(context.Background(), "nope-0123456789ab"); err != nil {
		t.Errorf("Stop(unknown) = %v, want nil", err)
	}
	if err := s.Restart(context.Background(), "nope-0123456789ab"); !errors.Is(err, ErrUnknown) {
		t.Errorf("Restart(unknown) = %v, want ErrUnknown", err)
	}
	if _, ok := s.Status("nope-0123456789ab"); ok {
		t.Error("Status(unknown) found something")
	}
}

func TestLogs(t *testing.T) {
	t.Parallel()
	s, root := newSupervisor(t, Options{LogMaxBytes: 2000})
	i := startReady(t, s, appConfig("logs"))
	logPath := i.Status().LogPath
	if want := filepath.Join(root, "logs", "logs", "0123456789ab.log"); logPath != want {
		t.Errorf("LogPath = %q, want %q", logPath, want)
	}
	// Four batches of 2500 bytes, each past the limit: each is rotated out
	// by copy and truncate, at the latest before the next.
	for b := range 4 {
		get(t, i.Addr(), fmt.Sprintf("/spam?n=25&from=%d", b*25))
		waitFor(t, "the log to be rotated", func() bool {
			fi, err := os.Stat(logPath)
			return err == nil && fi.Size() < 2000
		})
	}
	stop(t, s, i.Key())

	var all []byte
	for _, suffix := range []string{".3", ".2", ".1", ""} {
		b, err := os.ReadFile(logPath + suffix)
		if err != nil {
			t.Fatalf("log%s: %v", suffix, err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Errorf("log%s does not end at a line boundary", suffix)
		}
		all = append(all, b...)
	}
	if _, err := os.Stat(logPath + ".4"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("log.4: %v, want only 3 rotated files", err)
	}
	// The newest lines survive rotation whole and in order.
	lines := strings.Split(strings.TrimSpace(string(all)), "\n")
	var spam []string
	for _, l := range lines {
		if len(l) == 99 && strings.HasSuffix(l, "xxx") {
			spam = append(spam, l)
		}
	}
	// Rotation runs as the log is written, so it may cut a batch (and, as
	// with logrotate's copytruncate, lose what is written between its copy
	// and its truncate): how many lines the three rotated files keep
	// varies, but each holds more than the 2000-byte limit (20 lines), and
	// what is kept is whole lines, oldest first, up to the last one written.
	if len(spam) < 55 || len(spam) > 100 {
		t.Fatalf("found %d whole spam lines in the kept logs, want at least the last 55", len(spam))
	}
	prev := -1
	for n, l := range spam {
		var k int
		if _, err := fmt.Sscanf(l[:9], "%09d", &k); err != nil || k <= prev {
			t.Fatalf("spam line %d = %q after line %d: want the lines in the order written", n, l[:12], prev)
		}
		prev = k
	}
	if prev != 99 {
		t.Errorf("the newest kept spam line is %d, want 99, the last one written", prev)
	}
	if fi, err := os.Stat(logPath); err == nil && fi.Mode().Perm() != 0o640 {
		t.Errorf("log mode %v, want 0640", fi.Mode().Perm())
	}
}

func TestLogCapturesStdoutAndStderr(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	i := startReady(t, s, appConfig("output"))
	pid := i.Status().PID
	stop(t, s, i.Key())
	b, err := os.ReadFile(i.Status().LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fmt.Sprintf("app starting pid %d\n", pid), "app stderr line\n"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("log lacks %q:\n%s", want, b)
		}
	}
}

func TestLogFileRotation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		writes []string // each followed by a rotation check
		want   []string // contents of log, .1, .2, .3
	}{
		{name: "fits", writes: []string{"a\n", "b\n"}, want: []string{"a\nb\n"}},
		{name: "at the limit stays", writes: []string{"aaaa\nbbbb\n"}, want: []string{"aaaa\nbbbb\n"}},
		{name: "past the limit is copied and truncated", writes: []string{"aaaa\nbbbb\ncccc\n", "dd\n"},
			want: []string{"dd\n", "aaaa\nbbbb\ncccc\n"}},
		{name: "keeps three", writes: []string{"11111111111\n", "22222222222\n", "33333333333\n", "44444444444\n", "5\n"},
			want: []string{"5\n", "44444444444\n", "33333333333\n", "22222222222\n"}},
		{name: "a flood is dropped with a line that says so", writes: []string{"aaaa\nbbbb\ncccc\ndddd\neeee\n"},
			want: []string{"hostel: 25 bytes of this log dropped: written faster than it can be rotated (25 dropped so far)\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "v.log")
			// The writer stands for the process: its own O_APPEND descriptor,
			// never reopened.
			w, err := openLogFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			l := &logFile{path: path, max: 10}
			for _, s := range tt.writes {
				if _, err := w.WriteString(s); err != nil {
					t.Fatal(err)
				}
				if _, err := l.rotateIfFull(); err != nil {
					t.Fatal(err)
				}
			}
			for n, suffix := range []string{"", ".1", ".2", ".3", ".4"} {
				b, err := os.ReadFile(path + suffix)
				if n >= len(tt.want) {
					if err == nil {
						t.Errorf("log%s exists with %q, want none", suffix, b)
					}
					continue
				}
				if err != nil {
					t.Fatalf("log%s: %v", suffix, err)
				}
				if string(b) != tt.want[n] {
					t.Errorf("log%s = %q, want %q", suffix, b, tt.want[n])
				}
			}
		})
	}
}

func TestRestart(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	i := startReady(t, s, appConfig("restart"))
	before := i.Status()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.Restart(ctx, i.Key()); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	after, ok := s.Status(i.Key())
	if !ok {
		t.Fatal("restarted instance unknown")
	}
	if after.PID == before.PID || after.Port != before.Port || !after.Ready {
		t.Errorf("after restart pid %d port %d ready %v; before pid %d port %d", after.PID, after.Port, after.Ready, before.PID, before.Port)
	}
	if alive(before.PID) {
		t.Errorf("old process %d still alive", before.PID)
	}
}

func TestConcurrentStartStop(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	cfg := appConfig("same")
	cfg.HealthPath = ""
	var wg sync.WaitGroup
	got := make([]*Instance, 8)
	for n := range got {
		wg.Go(func() {
			i, err := s.Start(cfg)
			if err != nil {
				t.Errorf("Start: %v", err)
			}
			got[n] = i
		})
	}
	for n := range 6 {
		wg.Go(func() {
			c := appConfig(fmt.Sprintf("many%d", n))
			c.Version = spec.Version(fmt.Sprintf("v%d", n))
			i, err := s.Start(c)
			if err != nil {
				t.Errorf("Start: %v", err)
				return
			}
			if n%2 == 0 {
				if err := s.Stop(context.Background(), i.Key()); err != nil {
					t.Errorf("Stop: %v", err)
				}
			}
		})
	}
	wg.Wait()
	for _, i := range got[1:] {
		if i != got[0] {
			t.Fatalf("concurrent Start of one key gave different instances")
		}
	}
	list := s.List()
	var keys []string
	ports := map[int]bool{}
	for _, st := range list {
		keys = append(keys, string(st.Key))
		if ports[st.Port] {
			t.Errorf("port %d handed out twice", st.Port)
		}
		ports[st.Port] = true
	}
	want := []string{"many1-v1", "many3-v3", "many5-v5", "same-0123456789ab"}
	if strings.Join(keys, " ") != strings.Join(want, " ") {
		t.Errorf("List keys = %v, want %v", keys, want)
	}
	if !s.SetState("same-0123456789ab", StateDraining) {
		t.Fatal("SetState of a known key failed")
	}
	if st, _ := s.Status("same-0123456789ab"); st.State != StateDraining {
		t.Errorf("state after SetState = %s, want draining", st.State)
	}
	if err := s.StopAll(context.Background()); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	if n := len(s.List()); n != 0 {
		t.Errorf("%d instances left after StopAll", n)
	}
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "bad service name", cfg: Config{Service: "Bad_Name", Version: "v1", Exec: []string{"true"}}, want: "want a name"},
		{name: "no exec", cfg: Config{Service: "noexec", Version: "v1"}, want: "exec is empty"},
		{name: "bad version", cfg: Config{Service: "badver", Version: "../x", Exec: []string{"true"}}, want: "bad version"},
		{name: "missing program", cfg: Config{Service: "missing", Version: "v1", Dir: appDir, Exec: []string{"nope"}}, want: "no such file"},
		{name: "unknown command", cfg: Config{Service: "unknown", Version: "v1", Exec: []string{"hostel-no-such-command"}}, want: "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, root := newSupervisor(t, Options{})
			i, err := s.Start(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start = %v, %v; want an error containing %q", i, err, tt.want)
			}
			if n := len(s.List()); n != 0 {
				t.Errorf("%d instances known after a failed start", n)
			}
			if _, err := os.Stat(filepath.Join(root, "run", string(spec.Key(tt.cfg.Service, tt.cfg.Version)))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("RUNTIME_DIRECTORY after a failed start: %v, want none", err)
			}
		})
	}
}

func TestExecFromPATH(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	// sleep is found in the service's PATH; with no health path, readiness
	// comes only from TCP or NOTIFY_SOCKET, which sleep never gives.
	i := start(t, s, Config{Service: "sleeper", Version: "v1", Exec: []string{"sleep", "1000"}, ReadyTimeout: 200 * time.Millisecond})
	if err := i.WaitReady(context.Background()); !errors.Is(err, ErrNotReady) {
		t.Errorf("WaitReady = %v, want ErrNotReady", err)
	}
	if pid := i.Status().PID; !alive(pid) {
		t.Errorf("sleep (pid %d) not running", pid)
	}
}

func TestUserName(t *testing.T) {
	tests := []struct{ service, want string }{
		{"api", "hostel-api"},
		{"a234567890123456789012345", "hostel-a234567890123456789012345"},
		{"a2345678901234567890123456", "hostel-a234567890123456-"},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			got := UserName(tt.service)
			if !strings.HasPrefix(got, tt.want) || len(got) > 32 {
				t.Errorf("UserName(%q) = %q, want prefix %q and at most 32 characters", tt.service, got, tt.want)
			}
		})
	}
	if UserName("a2345678901234567890123456") == UserName("a2345678901234567890123457") {
		t.Error("long names that differ map to the same user")
	}
}

// TestInstanceUser: a preview's own instance has a user of its own, never
// production's nor another preview's, and a valid system user name.
func TestInstanceUser(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
	seen := map[string]string{}
	for _, tc := range []struct{ service, owner, want string }{
		{"api", "", "hostel-api"},
		{"api", spec.DefaultEnv, "hostel-api"},
		{"api", "pr-1", "hostel-api_pr-1"},
		{"api-pr-1", "", "hostel-api-pr-1"},
		{"a2345678901234567890123456", "pr-1", "hostel-a23456789012_"},
		{"a2345678901234567890123456", "pr-2", "hostel-a23456789012_"},
		{"api", "a2345678901234567890", "hostel-api_"},
	} {
		got := InstanceUser(tc.service, tc.owner)
		if !strings.HasPrefix(got, tc.want) || !valid.MatchString(got) {
			t.Errorf("InstanceUser(%q, %q) = %q, want prefix %q, a valid user name of at most 32 characters", tc.service, tc.owner, got, tc.want)
		}
		id := tc.service + "@" + tc.owner
		if tc.owner == "" {
			id = tc.service + "@" + spec.DefaultEnv
		}
		if other, ok := seen[got]; ok && other != id {
			t.Errorf("InstanceUser: %s and %s are both %s", other, id, got)
		}
		seen[got] = id
	}
}

// TestPreviewUser: a preview's own instance runs as its own user, which
// RemoveUser removes once the instance is gone, and not before;
// production's users are never removed.
func TestPreviewUser(t *testing.T) {
	needUserTools(t)
	t.Parallel()
	service, owner := "suptest-preview", "pr-1"
	name := InstanceUser(service, owner)
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	s, _ := newSupervisor(t, Options{RunAsUsers: true})
	cfg := appConfig(service)
	cfg.Owner = owner
	i := startReady(t, s, cfg)
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("user %s: %v", name, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", i.Status().PID))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "\nUid:\t"+u.Uid+"\t") {
		t.Errorf("the preview's instance does not run as %s (uid %s):\n%s", name, u.Uid, status)
	}
	if err := s.RemoveUser(service, owner); !errors.Is(err, ErrUserInUse) {
		t.Errorf("RemoveUser while the instance runs: %v, want ErrUserInUse", err)
	}
	if err := s.Stop(context.Background(), cfg.Key()); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveUser(service, owner); err != nil {
		t.Fatalf("RemoveUser: %v", err)
	}
	if _, err := user.Lookup(name); err == nil {
		t.Errorf("user %s exists after RemoveUser", name)
	}
	if err := s.RemoveUser(service, owner); err != nil {
		t.Errorf("RemoveUser of a user that is gone: %v", err)
	}
	if err := s.RemoveUser(service, spec.DefaultEnv); err == nil {
		t.Error("RemoveUser of production's user went through")
	}
}

// needUserTools skips a test that makes system users where it cannot.
func needUserTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"useradd", "userdel"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
}

func TestRunAsUser(t *testing.T) {
	needUserTools(t)
	t.Parallel()
	// With cgroups (v1 here) the process is started through the launch
	// helper, which drops to the user itself: the same must hold.
	for _, withCgroups := range []bool{false, true} {
		t.Run(fmt.Sprintf("cgroups=%v", withCgroups), func(t *testing.T) { testRunAsUser(t, withCgroups) })
	}
}

func testRunAsUser(t *testing.T, withCgroups bool) {
	service := "suptest-user"
	opts := Options{RunAsUsers: true}
	if withCgroups {
		service = "suptest-usercg"
		h, err := cgroup.Open(t.TempDir())
		if errors.Is(err, cgroup.ErrUnavailable) {
			t.Skipf("no cgroups: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Remove() })
		opts.Cgroups = h
	}
	name := UserName(service)
	t.Cleanup(func() { exec.Command("userdel", name).Run() })

	s, root := newSupervisor(t, opts)
	i := startReady(t, s, appConfig(service, "-notify"))
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("user %s: %v", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", i.Status().PID))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		fields[k] = strings.Join(strings.Fields(v), " ")
	}
	if want := fmt.Sprintf("%d %d %d %d", uid, uid, uid, uid); fields["Uid"] != want {
		t.Errorf("process Uid = %q, want %q", fields["Uid"], want)
	}
	if want := fmt.Sprintf("%d %d %d %d", gid, gid, gid, gid); fields["Gid"] != want {
		t.Errorf("process Gid = %q, want %q", fields["Gid"], want)
	}
	if fields["Groups"] != "" {
		t.Errorf("process Groups = %q, want none", fields["Groups"])
	}

	owned := func(path string, wantUID int, wantMode os.FileMode) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			return
		}
		if got := int(fi.Sys().(*syscall.Stat_t).Uid); got != wantUID {
			t.Errorf("%s owned by uid %d, want %d", path, got, wantUID)
		}
		if wantMode != 0 && fi.Mode().Perm() != wantMode {
			t.Errorf("%s mode %v, want %v", path, fi.Mode().Perm(), wantMode)
		}
	}
	owned(filepath.Join(root, "state", service), uid, 0o700)
	owned(filepath.Join(root, "state", service, "touched"), uid, 0)
	owned(filepath.Join(root, "run", string(i.Key())), uid, 0o700)
	owned(i.Status().LogPath, 0, 0o640)

	// A second version reuses the user and the state directory.
	cfg := appConfig(service)
	cfg.Version = "v2"
	j := startReady(t, s, cfg)
	if j.Status().PID == i.Status().PID {
		t.Error("second version shares the first's process")
	}

	// A program that is not there is refused by Start, as a missing file.
	bad := appConfig(service)
	bad.Version, bad.Exec = "v3", []string{"no-such-program"}
	if _, err := s.Start(bad); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Start of a missing program: %v, want an error that is fs.ErrNotExist", err)
	}
}

// The pauses between readiness probes start at probeFirst, so a service
// that listens a few milliseconds after its exec is seen ready within a
// millisecond or so; they never shrink, and they grow to probeInterval, so
// a slow starter is not probed a thousand times a second.
func TestProbePauses(t *testing.T) {
	if got := probePause(0); got != probeFirst {
		t.Errorf("first pause %v, want %v", got, probeFirst)
	}
	var early time.Duration
	for n := range probeEarly {
		early += probePause(n)
	}
	if early != time.Duration(probeEarly)*probeFirst {
		t.Errorf("the first %d pauses add up to %v, want %v", probeEarly, early, time.Duration(probeEarly)*probeFirst)
	}
	prev, capped := time.Duration(0), -1
	for n := range 1000 {
		d := probePause(n)
		if d < prev {
			t.Fatalf("pause %d is %v, shorter than the one before (%v)", n, d, prev)
		}
		if d > probeInterval {
			t.Fatalf("pause %d is %v, longer than probeInterval %v", n, d, probeInterval)
		}
		if d == probeInterval && capped < 0 {
			capped = n
		}
		prev = d
	}
	if capped < 0 {
		t.Fatalf("the pauses never reach probeInterval %v", probeInterval)
	}
	t.Logf("pauses reach %v after %d probes", probeInterval, capped)
}
