package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"hostel/internal/acme/pebbletest"
	"hostel/internal/nix"
)

// nixServices are the example's services that need nothing but Go.
var nixServices = []string{"quotes", "blog", "shop", "wiki"}

// UseNixExample copies examples/monoliths/hostel.nix, nix/lib.nix and the
// apps' sources into the spec directory. Services beyond nixServices (those
// needing PostgreSQL) are cut out. Identical sources give identical store
// paths, so the Nix store shares builds between tests.
func (e *Env) UseNixExample() {
	e.t.Helper()
	if !nix.Available() {
		e.t.Fatal("Nix is not installed (apt-get install nix-bin; .ci/run does it)")
	}
	ex := filepath.Join(repoRoot(), "examples", "monoliths")
	b, err := os.ReadFile(filepath.Join(ex, "hostel.nix"))
	if err != nil {
		e.t.Fatal(err)
	}
	text := strings.Replace(string(b), "../../nix/lib.nix", "./nix/lib.nix", 1)
	text = keepServices(e.t, text, nixServices)
	e.writeFile("hostel.nix", text)
	lib, err := os.ReadFile(filepath.Join(repoRoot(), "nix", "lib.nix"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.writeFile("nix/lib.nix", string(lib))
	for _, app := range nixServices {
		src, err := os.ReadFile(filepath.Join(ex, app, "main.go"))
		if err != nil {
			e.t.Fatal(err)
		}
		e.writeFile(app+"/main.go", string(src))
	}
	// The daemon's GC roots outlive its root; don't leave them pinning the store.
	e.t.Cleanup(func() { nix.RootsFor(e.Root).RemoveAll() })
}

// keepServices removes every `NAME = { … };` block of the services section
// whose NAME is not in keep.
func keepServices(t testing.TB, text string, keep []string) string {
	t.Helper()
	head := regexp.MustCompile(`(?m)^    ([a-z][a-z0-9-]*) = \{\n(?:.*\n)*?    \};\n\n?`)
	return head.ReplaceAllStringFunc(text, func(block string) string {
		name := head.FindStringSubmatch(block)[1]
		for _, k := range keep {
			if k == name {
				return block
			}
		}
		return ""
	})
}

func (e *Env) writeFile(rel, content string) {
	e.t.Helper()
	p := filepath.Join(e.Dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// RunEnv is Run with extra environment variables.
func (e *Env) RunEnv(env []string, args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Bin, append([]string{"--root", e.Root}, args...)...)
	cmd.Dir = e.Dir
	cmd.Env = append(os.Environ(), env...)
	var o, er strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		e.t.Fatalf("hostel %v: %v", args, err)
	}
	return o.String(), er.String(), code
}

type nixStatus struct {
	Generation uint64
	Services   []struct {
		Name, Version, State, Package string
		PID                           int
	}
}

func (e *Env) nixStatus() map[string]struct {
	Version, Package string
	PID              int
} {
	e.t.Helper()
	var st nixStatus
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]struct {
		Version, Package string
		PID              int
	}{}
	for _, s := range st.Services {
		if s.State != "draining" {
			out[s.Name] = struct {
				Version, Package string
				PID              int
			}{s.Version, s.Package, s.PID}
		}
	}
	return out
}

type generationsJSON struct {
	Current     uint64
	Generations []struct {
		Number      uint64
		Versions    map[string]string
		ClosureSize int64 `json:"closure_size"`
	}
}

// TestNixDeployStory: hostel.nix is evaluated, built and deployed; a
// no-op deploy restarts nothing; changing one app's source rebuilds and
// restarts only it and its dependent; every kept generation is pinned, so
// nix-collect-garbage cannot break a rollback; gc unpins dropped
// generations and lets Nix free their packages.
func TestNixDeployStory(t *testing.T) {
	e := NewEnv(t)
	e.UseNixExample()
	// quotes' source is this run's own, so that its packages are pinned by
	// nothing but this test's daemon; the other apps share the store's builds.
	src := filepath.Join(e.Dir, "quotes", "main.go")
	orig, _ := os.ReadFile(src)
	setQuote := func(q string) {
		e.writeFile("quotes/main.go", strings.Replace(string(orig), "Clear is better than clever.", q, 1))
	}
	stamp := time.Now().Format("150405.000000")
	setQuote("Clear is better than clever " + stamp + ".")
	e.StartDaemon()

	_, stderr, code := e.Run("deploy", "--no-confirm")
	if code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, stderr)
	}
	st1 := e.nixStatus()
	for _, name := range nixServices {
		s := st1[name]
		if !strings.HasPrefix(s.Package, "/nix/store/") || !strings.HasSuffix(s.Package, "-"+name) || s.PID == 0 {
			t.Fatalf("%s: %+v, want a running store-path package", name, s)
		}
	}
	if code, _, body := e.Get("shop.localhost", "/"); code != 200 || !strings.Contains(body, "Teapot") {
		t.Fatalf("shop: %d %q", code, body)
	}
	if code, _, body := e.Get("blog.localhost", "/"); code != 200 || !strings.Contains(body, "Hello") {
		t.Fatalf("blog (through quotes): %d %q", code, body)
	}
	roots := nix.RootsFor(e.Root)
	assertPinned(t, roots, st1, nixServices...)

	// A no-op deploy evaluates, finds everything built, restarts nothing.
	t0 := time.Now()
	out := e.MustRun("deploy", "--no-confirm")
	noop := time.Since(t0)
	t0 = time.Now()
	if b, err := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode", "-E",
		"builtins.toJSON (import "+filepath.Join(e.Dir, "hostel.nix")+" {})").CombinedOutput(); err != nil {
		t.Fatalf("nix-instantiate: %v\n%s", err, b)
	}
	eval := time.Since(t0)
	t.Logf("no-op deploy: %v in all; Nix evaluation alone: %v", noop.Round(time.Millisecond), eval.Round(time.Millisecond))
	if !strings.Contains(out, "nothing changed") || noop-eval > time.Second {
		t.Errorf("no-op deploy: %q in %v (evaluation %v), want nothing changed within 1s beyond evaluation", out, noop, eval)
	}
	if st := e.nixStatus(); !samePIDs(st, st1, nixServices...) {
		t.Errorf("no-op deploy restarted something: %v -> %v", st1, st)
	}

	// Change quotes' source: only quotes is rebuilt; quotes and blog (which
	// needs it) restart, shop and wiki keep running.
	setQuote("Clear is better than clever, says Nix " + stamp + ".")
	planOut, stderr, code := e.Run("plan", "--json")
	if code != 0 {
		t.Fatalf("plan: exit %d\n%s", code, stderr)
	}
	built := regexp.MustCompile(`building '/nix/store/\w+-(\w+)\.drv'`).FindAllStringSubmatch(stderr, -1)
	if len(built) != 1 || built[0][1] != "quotes" {
		t.Errorf("plan built %v, want quotes alone:\n%s", built, stderr)
	}
	for _, want := range []string{`"quotes"`, `"blog"`} {
		if !strings.Contains(planOut, want) {
			t.Errorf("plan lacks %s: %s", want, planOut)
		}
	}
	_, stderr, code = e.Run("deploy", "--no-confirm")
	if code != 0 {
		t.Fatalf("deploy after a source change: exit %d\n%s", code, stderr)
	}
	if strings.Contains(stderr, "building '") {
		t.Errorf("deploy built again what plan built:\n%s", stderr)
	}
	st2 := e.nixStatus()
	if !samePIDs(st2, st1, "shop", "wiki") {
		t.Errorf("shop or wiki restarted: %v -> %v", st1, st2)
	}
	for _, name := range []string{"quotes", "blog"} {
		if st2[name].Version == st1[name].Version || st2[name].PID == st1[name].PID {
			t.Errorf("%s did not get a new version and process: %+v -> %+v", name, st1[name], st2[name])
		}
	}
	if st2["quotes"].Package == st1["quotes"].Package || st2["blog"].Package != st1["blog"].Package {
		t.Errorf("packages: quotes %s -> %s (want new), blog %s -> %s (want same)",
			st1["quotes"].Package, st2["quotes"].Package, st1["blog"].Package, st2["blog"].Package)
	}
	assertPinned(t, roots, st1, nixServices...)
	assertPinned(t, roots, st2, nixServices...)

	var gens generationsJSON
	json.Unmarshal([]byte(e.MustRun("generations", "--json")), &gens)
	if len(gens.Generations) != 2 {
		t.Fatalf("generations: %+v", gens)
	}
	for _, g := range gens.Generations {
		if g.ClosureSize < 1<<20 {
			t.Errorf("generation %d: closure_size %d, want the size of four Go programs", g.Number, g.ClosureSize)
		}
	}

	// Whatever collects garbage, a kept generation keeps its closure.
	if b, err := exec.Command("nix-collect-garbage").CombinedOutput(); err != nil {
		t.Fatalf("nix-collect-garbage: %v\n%s", err, b)
	}
	if _, err := os.Stat(st1["quotes"].Package); err != nil {
		t.Fatalf("generation 1's quotes was collected: %v", err)
	}
	e.MustRun("rollback", "--to", "1")
	if st := e.nixStatus(); st["quotes"].Version != st1["quotes"].Version {
		t.Fatalf("rollback to 1: quotes %+v, want %+v", st["quotes"], st1["quotes"])
	}
	if code, _, body := e.Get("blog.localhost", "/"); code != 200 || !strings.Contains(body, "from quotes "+st1["quotes"].Version) {
		t.Fatalf("blog after rollback: %d %q", code, body)
	}
	e.MustRun("rollback", "--to", "2")
	waitStopped(t, e, st1["quotes"].Version)

	// gc drops generation 1: its versions are unpinned and Nix frees them.
	out = e.MustRun("gc", "--keep", "1")
	if !strings.Contains(out, "removed 1 generations [1]") || !strings.Contains(out, "freed") {
		t.Errorf("gc said %q", out)
	}
	names, _ := roots.Names()
	for _, n := range names {
		if n == "quotes-"+st1["quotes"].Version || n == "blog-"+st1["blog"].Version {
			t.Errorf("generation 1's %s is still pinned after gc", n)
		}
	}
	assertPinned(t, roots, st2, nixServices...)
	if _, err := os.Stat(st1["quotes"].Package); err == nil {
		t.Errorf("generation 1's quotes %s survived gc", st1["quotes"].Package)
	}
	for _, name := range nixServices {
		if _, err := os.Stat(st2[name].Package); err != nil {
			t.Errorf("the current %s was collected: %v", name, err)
		}
	}
	if code, _, body := e.Get("blog.localhost", "/"); code != 200 || !strings.Contains(body, "from quotes "+st2["quotes"].Version) {
		t.Fatalf("blog after gc: %d %q", code, body)
	}
}

// waitStopped waits until no process of quotes' version v runs (it drains
// after a switch away from it).
func waitStopped(t *testing.T, e *Env, v string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if !strings.Contains(e.MustRun("status", "--json"), v) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("version %s still runs", v)
}

func assertPinned(t *testing.T, roots nix.Roots, st map[string]struct {
	Version, Package string
	PID              int
}, names ...string) {
	t.Helper()
	for _, n := range names {
		paths, err := roots.Paths(n + "-" + st[n].Version)
		if err != nil || len(paths) != 1 || paths[0] != st[n].Package {
			t.Errorf("GC root of %s-%s: %v %v, want %s", n, st[n].Version, paths, err, st[n].Package)
		}
	}
}

func samePIDs(a, b map[string]struct {
	Version, Package string
	PID              int
}, names ...string) bool {
	for _, n := range names {
		if a[n].PID != b[n].PID || a[n].PID == 0 {
			return false
		}
	}
	return true
}

// TestNixErrorsChangeNothing: a Nix evaluation error exits 2 naming the file
// (and the service), a build failure exits 1 naming the service; neither
// changes what runs.
func TestNixErrorsChangeNothing(t *testing.T) {
	e := NewEnv(t)
	e.UseNixExample()
	e.StartDaemon()
	e.MustRun("deploy", "--no-confirm")
	before := e.nixStatus()
	good, _ := os.ReadFile(filepath.Join(e.Dir, "hostel.nix"))

	for _, tc := range []struct {
		name, from, to string
		code           int
		first          string // the first line of stderr
		nix            string // Nix's own message, after it
	}{
		{"syntax error", "  services = {", "  services = {{", 2, "hostel.nix: nix evaluation failed:", "error: syntax error"},
		{"error in a service", `env.SHOP_TITLE = "The Teapot Shop";`, `env.SHOP_TITLE = 1 + "x";`, 2,
			`hostel.nix: service "shop": nix evaluation failed:`, "cannot add"},
		{"missing source", "src = ./wiki;", "src = ./wikki;", 2, `hostel.nix: service "wiki": nix evaluation failed:`, "wikki"},
		{"spec error", `stop_grace = "5s";`, `stop_grace = "5 parsecs";`, 2, `hostel.nix: service "shop": stop_grace`, ""},
		{"build failure", `lib.goApp { name = "wiki"; src = ./wiki; }`, `lib.goApp { name = "wiki"; src = ./wiki; ldflags = "-bogusflag"; }`, 1,
			`hostel.nix: service "wiki": package failed to build`, "error: builder for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(string(good), tc.from) {
				t.Fatalf("the example lacks %q", tc.from)
			}
			bad := strings.Replace(string(good), tc.from, tc.to, 1)
			e.writeFile("hostel.nix", bad)
			defer e.writeFile("hostel.nix", string(good))
			for _, cmd := range [][]string{{"plan"}, {"deploy", "--no-confirm"}} {
				_, stderr, code := e.Run(cmd...)
				first, rest, _ := strings.Cut(stderr[strings.Index(stderr, "hostel.nix:"):], "\n")
				if code != tc.code || !strings.HasPrefix(first, tc.first) || !strings.Contains(rest, tc.nix) {
					t.Errorf("%s: exit %d, stderr:\n%s\nwant exit %d, a line %q, then %q", cmd[0], code, stderr, tc.code, tc.first, tc.nix)
				}
			}
			if after := e.nixStatus(); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("something changed: %v -> %v", before, after)
			}
		})
	}
}

// TestNixNewService: `hostel new NAME --from SERVICE` copies the folder,
// registers the service in hostel.nix, and the next deploy runs it at
// NAME.localhost without touching the others.
func TestNixNewService(t *testing.T) {
	e := NewEnv(t)
	e.UseNixExample()
	e.StartDaemon()
	e.MustRun("deploy", "--no-confirm")
	before := e.nixStatus()

	out := e.MustRun("new", "teashop", "--from", "shop")
	if !strings.Contains(out, "teashop") {
		t.Errorf("new said %q", out)
	}
	if _, err := os.Stat(filepath.Join(e.Dir, "teashop", "main.go")); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := e.Run("new", "teashop", "--from", "shop"); code != 2 || !strings.Contains(stderr, "already defined") {
		t.Errorf("new again: exit %d %q, want 2 and already defined", code, stderr)
	}
	e.MustRun("deploy", "--no-confirm")
	after := e.nixStatus()
	if !samePIDs(after, before, nixServices...) {
		t.Errorf("the others restarted: %v -> %v", before, after)
	}
	if !strings.HasSuffix(after["teashop"].Package, "-teashop") {
		t.Errorf("teashop: %+v", after["teashop"])
	}
	if code, _, body := e.Get("teashop.localhost", "/"); code != 200 || !strings.Contains(body, "Teapot") {
		t.Errorf("teashop.localhost: %d %q", code, body)
	}
	if code, hdr, _ := e.Get("www.teashop.localhost", "/x"); code != 301 || !strings.Contains(hdr.Get("Location"), "teashop.localhost/x") {
		t.Errorf("www.teashop.localhost: %d %v", code, hdr)
	}

	e.MustRun("new", "hello")
	e.MustRun("deploy", "--no-confirm")
	if code, _, body := e.Get("hello.localhost", "/"); code != 200 || !strings.Contains(body, "hello from hello") {
		t.Errorf("hello.localhost: %d %q", code, body)
	}
}

// sshd runs a real OpenSSH server on a free loopback port that lets root in
// with a fresh key, and returns the NIX_SSHOPTS that reach it.
func sshd(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Fatal("sshd is not installed (apt-get install openssh-server; .ci/run does it)")
	}
	dir := t.TempDir()
	for _, k := range []string{"host", "client"} {
		if b, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, b)
		}
	}
	pub, _ := os.ReadFile(filepath.Join(dir, "client.pub"))
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	port := freePort(t)
	cfg := fmt.Sprintf(`HostKey %[1]s/host
ListenAddress 127.0.0.1
AuthorizedKeysFile %[1]s/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile %[1]s/sshd.pid
`, dir)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600)
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config"), "-p", fmt.Sprint(port))
	var log strings.Builder
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", log.String())
		}
	})
	opts := fmt.Sprintf("-p %d -i %s/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR", port, dir)
	deadline := time.Now().Add(10 * time.Second)
	for {
		args := append(strings.Fields(opts), "-o", "BatchMode=yes", "root@127.0.0.1", "true")
		if exec.Command("ssh", args...).Run() == nil {
			return opts
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd does not let us in:\n%s", log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freePort is a port no other part of the test process was given
// (pebbletest.FreePorts).
func freePort(t *testing.T) int {
	t.Helper()
	return pebbletest.FreePorts(t, 1)[0]
}

// TestNixRemoteDeploy: deploy --target builds here, copies the closures with
// nix copy over SSH and applies through the other machine's daemon, reached
// over the same SSH (here a real sshd on loopback in front of a second
// daemon with its own root).
func TestNixRemoteDeploy(t *testing.T) {
	local := NewEnv(t)
	local.UseNixExample()
	remote := NewEnv(t)
	remote.UseNixExample()
	remote.StartDaemon()
	opts := sshd(t)
	env := []string{"NIX_SSHOPTS=" + opts, "HOSTEL_REMOTE_BIN=" + remote.Bin, "HOSTEL_REMOTE_ROOT=" + remote.Root}

	// No local daemon runs: everything goes to the target.
	out, stderr, code := local.RunEnv(env, "plan", "--target", "root@127.0.0.1")
	if code != 0 || !strings.Contains(out, "4 add") {
		t.Fatalf("plan --target: exit %d\n%s\n%s", code, out, stderr)
	}
	out, stderr, code = local.RunEnv(env, "deploy", "--no-confirm", "--target", "root@127.0.0.1")
	if code != 0 || !strings.Contains(out, "generation 1 is live") {
		t.Fatalf("deploy --target: exit %d\n%s\n%s", code, out, stderr)
	}
	if !strings.Contains(stderr, "copying closures to ssh://root@127.0.0.1") || !strings.Contains(stderr, "switched: generation 1 is live") {
		t.Errorf("deploy --target stderr lacks the copy or the remote's progress:\n%s", stderr)
	}
	st := remote.nixStatus()
	for _, name := range nixServices {
		if !strings.HasPrefix(st[name].Package, "/nix/store/") || st[name].PID == 0 {
			t.Errorf("remote %s: %+v", name, st[name])
		}
	}
	assertPinned(t, nix.RootsFor(remote.Root), st, nixServices...)
	if code, _, body := remote.Get("shop.localhost", "/"); code != 200 || !strings.Contains(body, "Teapot") {
		t.Errorf("remote shop: %d %q", code, body)
	}
	out, stderr, code = local.RunEnv(env, "deploy", "--no-confirm", "--target", "root@127.0.0.1")
	if code != 0 || !strings.Contains(out, "nothing changed") {
		t.Errorf("second deploy --target: exit %d %q\n%s", code, out, stderr)
	}

	// A spec error is found before anything is copied; an unreachable
	// machine is a failure.
	_, stderr, code = local.RunEnv(append(env, "NIX_SSHOPTS=-p 1 -o ConnectTimeout=5"), "deploy", "--no-confirm", "--target", "root@127.0.0.1")
	if code != 1 {
		t.Errorf("deploy to a closed port: exit %d, want 1\n%s", code, stderr)
	}
	if st2 := remote.nixStatus(); !samePIDs(st2, st, nixServices...) {
		t.Errorf("the remote changed: %v -> %v", st, st2)
	}
}

// addToStore adds src to the Nix store and returns its path, rooted for
// the test's length (an indirect root in its temporary directory): another
// test's Nix garbage collection on this machine must not take it between
// its adding and the daemon's pinning.
func addToStore(t *testing.T, src string) string {
	t.Helper()
	path, err := addToStoreRooted(src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// addToStoreRooted adds src to the Nix store and roots its path in dir
// (dir/root, an indirect root: gone with dir).
func addToStoreRooted(src, dir string) (string, error) {
	out, err := exec.Command("nix-store", "--add", src).Output()
	if err != nil {
		return "", fmt.Errorf("nix-store --add: %w", err)
	}
	path := strings.TrimSpace(string(out))
	if b, err := exec.Command("nix-store", "--add-root", filepath.Join(dir, "root"), "--realise", path).CombinedOutput(); err != nil {
		return "", fmt.Errorf("nix-store --add-root: %w: %s", err, b)
	}
	return path, nil
}
