package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestArgsSubstitution: ${NAME}, a whole-argument $NAME and $$ in exec and
// release, as the real binary runs them; an unknown name refused by plan
// with exit 2; a version that listens on a port of its own is told so.
func TestArgsSubstitution(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	web := map[string]any{
		// The spec of docs/apps.md's static site, serving its state directory.
		"exec": []string{"/usr/bin/python3", "-m", "http.server", "$PORT", "--bind", "$HOST", "--directory", "${STATE_DIRECTORY}"},
		// $$ is a $: the shell gets '$PORT' (quoted: printed as it is)
		// and its own "$@"; ${HOSTEL_SERVICE} is hostel's.
		"release": []string{"/bin/sh", "-c", `printf '%s|' '$$PORT' ${HOSTEL_SERVICE} "$@" > "$STATE_DIRECTORY/release.txt"`,
			"sh", "$HOSTEL_VERSION", "a$$b"},
		"domains": []string{"web.example"},
	}
	e.WriteSpec(map[string]any{"services": map[string]any{"web": web}})
	e.MustRun("deploy", "--no-confirm")
	_, st := e.Status()
	if code, _, body := e.Get("web.example", "/release.txt"); code != 200 || body != "$PORT|web|"+st["web"].Version+"|a$b|" {
		t.Errorf("release's output: %d %q, want %q", code, body, "$PORT|web|"+st["web"].Version+"|a$b|")
	}

	t.Run("unknown name", func(t *testing.T) {
		bad := map[string]any{"exec": []string{"/usr/bin/python3", "-m", "http.server", "$PRT"}}
		e.WriteSpec(map[string]any{"services": map[string]any{"web": bad}})
		want := `hostel.json: service "web": exec[3]: $PRT is not in the service's environment (write $$ for a literal $)`
		for _, args := range [][]string{{"plan"}, {"deploy", "--no-confirm"}} {
			_, stderr, code := e.Run(args...)
			if code != 2 || !strings.Contains(stderr, want) {
				t.Errorf("hostel %s: exit %d, stderr %q; want exit 2 and %q", args[0], code, stderr, want)
			}
		}
		// A release serves nothing: it has no PORT.
		bad["release"] = []string{"/bin/echo", "$PORT"}
		bad["exec"] = web["exec"]
		e.WriteSpec(map[string]any{"services": map[string]any{"web": bad}})
		want = `hostel.json: service "web": release[1]: $PORT is not in a release's environment (a release serves nothing) (write $$ for a literal $)`
		if _, stderr, code := e.Run("plan"); code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("hostel plan: exit %d, stderr %q; want exit 2 and %q", code, stderr, want)
		}
		if _, st2 := e.Status(); st2["web"].PID != st["web"].PID {
			t.Errorf("a refused spec changed web: %+v → %+v", st["web"], st2["web"])
		}
	})

	t.Run("wrong port", func(t *testing.T) {
		// Listens on a port of its own, not on PORT: one below the
		// ephemeral range, from which the daemon's PORTs come (a port 0
		// of the app's own could be the one PORT just named).
		own := strconv.Itoa(belowEphemeral(t))
		other := map[string]any{"exec": []string{"/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", own},
			"env": map[string]string{"PYTHONUNBUFFERED": "1"}, "health": map[string]any{"timeout": "2s"}}
		e.WriteSpec(map[string]any{"services": map[string]any{"web": other}})
		_, stderr, code := e.Run("deploy", "--no-confirm")
		t.Logf("hostel deploy:\n%s", stderr)
		if code != 1 || !strings.Contains(stderr, "listens on 127.0.0.1:"+own+", not on PORT=") {
			t.Errorf("deploy of a version on another port: exit %d, stderr %q; want exit 1 and where it listens", code, stderr)
		}
		if code, _, _ := e.Get("web.example", "/release.txt"); code != 200 {
			t.Errorf("web after the failed deploy: %d", code)
		}
	})
}

// TestAppsOfTheDocs deploys examples/apps, the apps of docs/apps.md —
// Python with gunicorn and uvicorn, Node, Ruby with puma, a static site,
// a Go binary — with Debian's interpreters, all in one deploy, and checks
// that each answers and that what each prints reaches hostel logs.
func TestAppsOfTheDocs(t *testing.T) {
	for _, p := range []string{"/usr/bin/python3", "/usr/bin/node", "/usr/bin/puma"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is missing (scripts/install-deps.sh test installs it)", p)
		}
	}
	for _, mod := range []string{"gunicorn", "uvicorn"} {
		if exec.Command("/usr/bin/python3", "-c", "import "+mod).Run() != nil {
			t.Skipf("python3's %s is missing (scripts/install-deps.sh test installs it)", mod)
		}
	}
	e := NewEnv(t)
	// The examples, copied where every service user can read them, with
	// the Go app built as its docs say.
	apps := filepath.Join(filepath.Dir(e.Dir), "apps")
	if out, err := exec.Command("cp", "-r", filepath.Join(repoRoot(), "examples", "apps"), apps).CombinedOutput(); err != nil {
		t.Fatalf("copying examples/apps: %v\n%s", err, out)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(apps, "go", "bin", "counter"), "./examples/apps/go")
	build.Dir = repoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if out, err := exec.Command("chmod", "-R", "a+rX", apps).CombinedOutput(); err != nil {
		t.Fatalf("chmod: %v\n%s", err, out)
	}
	e.StartDaemon()
	e.MustRun("deploy", "--no-confirm", filepath.Join(apps, "hostel.json"))
	want := map[string]string{
		"python":  "hello from gunicorn",
		"asgi":    "hello from uvicorn",
		"node":    "hello from node",
		"ruby":    "hello from puma",
		"static":  "hello from a static site",
		"counter": "hello from go, visit 1",
	}
	for name, body := range want {
		path := "/visit"
		if name == "static" {
			path = "/"
		}
		if code, _, got := e.Get(name+".localhost", path); code != 200 || !strings.Contains(got, body) {
			t.Errorf("%s: %d %q, want 200 and %q", name, code, got, body)
		}
	}
	// What an app prints reaches its log at once (PYTHONUNBUFFERED=1,
	// $stdout.sync): no buffer waits for 8 KiB.
	for name, line := range map[string]string{"python": "python: GET /visit", "asgi": "asgi: GET /visit",
		"node": "node: GET /visit", "ruby": "ruby: GET /visit", "counter": "go: GET /visit"} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			if logs := e.MustRun("logs", name); strings.Contains(logs, line) {
				break
			} else if time.Now().After(deadline) {
				t.Errorf("hostel logs %s lacks %q:\n%s", name, line, logs)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// The Go app's count is in its STATE_DIRECTORY: a new version, one at
	// a time (exclusive), goes on from it.
	if code, _, got := e.Get("counter.localhost", "/"); code != 200 || !strings.Contains(got, "visit 2") {
		t.Errorf("counter: %d %q, want visit 2", code, got)
	}
}

// belowEphemeral returns a free TCP port on loopback below the kernel's
// ephemeral range (ip_local_port_range), which no port 0 is given from.
func belowEphemeral(t *testing.T) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	for p := low - 2000; p < low; p++ {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatalf("no free port below %d", low)
	return 0
}
