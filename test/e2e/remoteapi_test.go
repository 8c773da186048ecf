package e2e

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hostel/internal/api"
)

// startRemoteAPI starts e's daemon with --api-listen on a free port and
// returns the remote API's URL and the token in ROOT/api/token.
func (e *Env) startRemoteAPI() (url, token string) {
	e.t.Helper()
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--api-listen", "127.0.0.1:0")
	var st struct{ Listen struct{ API string } }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil || st.Listen.API == "" {
		e.t.Fatalf("status --json over the socket: listen.api = %q (%v)", st.Listen.API, err)
	}
	b, err := os.ReadFile(filepath.Join(e.Root, "api", "token"))
	if err != nil {
		e.t.Fatal(err)
	}
	return "https://" + st.Listen.API, strings.TrimSpace(string(b))
}

// TestRemoteAPI: a client with no daemon of its own deploys and reads
// status through another's --api-listen with its token; without the
// token, with another, or to a daemon whose key is not the token's, it gets
// nothing and changes nothing.
func TestRemoteAPI(t *testing.T) {
	e := NewEnv(t)
	url, token := e.startRemoteAPI()
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{"api", 0o700 | os.ModeDir}, {"api/token", 0o600}, {"api/key.pem", 0o600}} {
		if fi, err := os.Stat(filepath.Join(e.Root, f.path)); err != nil || fi.Mode() != f.mode {
			t.Errorf("ROOT/%s: %v %v, want mode %v", f.path, fi.Mode(), err, f.mode)
		}
	}
	if !strings.Contains(e.DaemonLog(), "made a new token in "+filepath.Join(e.Root, "api", "token")) {
		t.Errorf("the daemon's log does not say where its new token is:\n%s", e.DaemonLog())
	}

	// The client's machine: another root, where no daemon runs.
	c := NewEnv(t)
	c.WriteSpec(map[string]any{"services": map[string]any{
		"quotes": c.App("quotes", map[string]any{"domains": []string{"quotes.test"}}),
	}})
	auth := []string{"HOSTEL_TOKEN=" + token}
	out, stderr, code := c.RunEnv(auth, "--api", url, "deploy", "--no-confirm")
	if code != 0 || !strings.Contains(out, "generation 1 is live") {
		t.Fatalf("deploy --api: exit %d\n%s\n%s", code, out, stderr)
	}
	if code, _, body := e.Get("quotes.test", "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("quotes.test after deploy --api: %d %q", code, body)
	}
	// HOSTEL_API says it as well as --api.
	out, stderr, code = c.RunEnv(append(auth, "HOSTEL_API="+url), "status", "--json")
	var st api.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Generation != 1 || len(st.Services) != 1 ||
		st.Services[0].State != "running" || st.Listen.API == "" {
		t.Fatalf("status --json over HOSTEL_API: exit %d\n%s\n%s", code, out, stderr)
	}
	if _, stderr, code = c.RunEnv(auth, "--api", url, "logs", "quotes", "-n", "5"); code != 0 {
		t.Errorf("logs --api: exit %d\n%s", code, stderr)
	}

	other, err := api.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	wrongSecret, _ := api.NewToken(other.Pin) // this daemon's pin, another secret
	wrongPin := other
	wrongPin.Pin[31] ^= 1 // this daemon's secret, another daemon's key
	before := strings.Count(e.DaemonLog(), "remote API: refused")
	for _, tt := range []struct {
		name     string
		env      []string
		wantCode int
		want     string
	}{
		{"no token", nil, 2, "HOSTEL_TOKEN is not set"},
		{"not a token", []string{"HOSTEL_TOKEN=letmein"}, 2, "not a hostel token"},
		{"another secret", []string{"HOSTEL_TOKEN=" + wrongSecret.String()}, 2, "refused the token in HOSTEL_TOKEN (401)"},
		{"another key", []string{"HOSTEL_TOKEN=" + wrongPin.String()}, 1, "is not the one HOSTEL_TOKEN names"},
		{"a closed port", auth, 1, "cannot reach the hostel daemon at https://127.0.0.1:1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			to := url
			if tt.name == "a closed port" {
				to = "https://127.0.0.1:1"
			}
			for _, args := range [][]string{{"status"}, {"deploy", "--no-confirm"}, {"rollback"}} {
				out, stderr, code := c.RunEnv(tt.env, append([]string{"--api", to}, args...)...)
				first, _, _ := strings.Cut(stderr, "\n")
				if code != tt.wantCode || !strings.Contains(first, tt.want) || out != "" {
					t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d and a first line saying %q", args[0], code, out, stderr, tt.wantCode, tt.want)
				}
				if strings.Contains(stderr, token) {
					t.Errorf("%s: stderr shows the token", args[0])
				}
			}
		})
	}
	// What the refused requests asked for did not happen.
	if gen, svcs := e.Status(); gen != 1 || svcs["quotes"].State != "running" {
		t.Errorf("after refused requests: generation %d, %+v; want 1, quotes running", gen, svcs)
	}

	// Without the token, any path is 401 and nothing else; a wrong pin
	// never gets as far as a request.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, p := range []struct{ method, path string }{{"GET", "/v1/status"}, {"POST", "/v1/rollback"}, {"GET", "/nothing"}} {
		req, _ := http.NewRequest(p.method, url+p.path, strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer "+wrongSecret.String())
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s with another token: %d, want 401", p.method, p.path, resp.StatusCode)
		}
	}
	log := e.DaemonLog()
	if strings.Count(log, "remote API: refused") <= before || !strings.Contains(log, "without the token") {
		t.Errorf("the daemon did not log the refused requests:\n%s", log)
	}
	for _, secret := range []string{token, wrongSecret.String(), strings.Split(token, ".")[1]} {
		if strings.Contains(log, secret) {
			t.Errorf("the daemon's log holds a token:\n%s", log)
		}
	}

	// A restart keeps the key and the token: the client's still works.
	e.StopDaemon()
	url2, token2 := e.startRemoteAPI()
	if token2 != token {
		t.Errorf("the token changed across a restart")
	}
	if strings.Count(e.DaemonLog(), "made a new token") != 0 {
		t.Errorf("the restarted daemon made a new token:\n%s", e.DaemonLog())
	}
	if out, stderr, code := c.RunEnv(auth, "--api", url2, "generations"); code != 0 || !strings.Contains(out, "1 (current)") {
		t.Errorf("generations --api after a restart: exit %d\n%s\n%s", code, out, stderr)
	}
}

// TestRemoteAPIRefusesBadFlags: a bad --api-listen or --api is refused at
// once (exit 2, the flag named in the first line), and --api means nothing to
// the commands that work here only.
func TestRemoteAPIRefusesBadFlags(t *testing.T) {
	e := NewEnv(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--http", "127.0.0.1:0", "--https", "", "--api-listen", "https://127.0.0.1:7443"}, "--api-listen: "},
		{[]string{"serve", "--http", "127.0.0.1:0", "--https", "", "--api-listen", "127.0.0.1:70000"}, "is not a port"},
		{[]string{"serve", "--http", "127.0.0.1:0", "--https", "", "--api-listen", "bad host:1"}, "neither an IP address nor a host name"},
		{[]string{"serve", "--http", "127.0.0.1:0", "--https", "", "--api", "https://127.0.0.1:7443"}, "--api: hostel serve works on this machine's daemon only"},
		{[]string{"--api", "http://127.0.0.1:7443", "status"}, "HTTPS only"},
		{[]string{"--api", "https://127.0.0.1", "status"}, "with the port"},
		{[]string{"--api", "https://127.0.0.1:7443", "db", "shell", "quotes"}, "db shell quotes: --api"},
		{[]string{"--api", "https://127.0.0.1:7443", "deploy", "--target", "root@127.0.0.1"}, "--target and --api"},
	} {
		e.WriteSpec(map[string]any{"services": map[string]any{"quotes": e.App("quotes", nil)}})
		_, stderr, code := e.RunEnv([]string{"HOSTEL_TOKEN=hostel1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, tt.args...)
		first, _, _ := strings.Cut(stderr, "\n")
		if code != 2 || !strings.Contains(first, tt.want) {
			t.Errorf("hostel %s: exit %d, stderr %q; want exit 2 and a first line saying %q", strings.Join(tt.args, " "), code, stderr, tt.want)
		}
	}
	if _, err := os.Stat(filepath.Join(e.Root, "api")); !os.IsNotExist(err) {
		t.Errorf("a refused serve made ROOT/api: %v", err)
	}
}

// TestNixRemoteAPIDeploy: deploy --api of a hostel.nix copies the closures
// the daemon's store lacks through the API, as --target does with nix copy
// over SSH. The daemon's store is its own (a chroot store, NIX_REMOTE), so
// that it lacks what the client built; a store path that neither machine
// has is refused, naming the service, with nothing changed.
func TestNixRemoteAPIDeploy(t *testing.T) {
	local := NewEnv(t)
	local.UseNixExample()
	remote := NewEnv(t)
	store := t.TempDir()
	remote.DaemonEnv = []string{"NIX_REMOTE=local?root=" + store}
	url, token := remote.startRemoteAPI()
	auth := []string{"HOSTEL_TOKEN=" + token}
	inRemoteStore := func(paths ...string) []string {
		t.Helper()
		cmd := exec.Command("nix-store", append([]string{"--check-validity", "--print-invalid"}, paths...)...)
		cmd.Env = append(os.Environ(), "NIX_REMOTE=local?root="+store)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nix-store --check-validity in the daemon's store: %v", err)
		}
		return strings.Fields(string(out))
	}

	out, stderr, code := local.RunEnv(auth, "--api", url, "deploy", "--no-confirm")
	if code != 0 || !strings.Contains(out, "generation 1 is live") {
		t.Fatalf("deploy --api: exit %d\n%s\n%s", code, out, stderr)
	}
	if !strings.Contains(stderr, "store paths to "+url) {
		t.Errorf("deploy --api did not say it copied store paths:\n%s", stderr)
	}
	st := remote.nixStatus()
	var pkgs []string
	for _, name := range nixServices {
		if !strings.HasPrefix(st[name].Package, "/nix/store/") || st[name].PID == 0 {
			t.Errorf("remote %s: %+v", name, st[name])
		}
		pkgs = append(pkgs, st[name].Package)
	}
	if missing := inRemoteStore(pkgs...); len(missing) > 0 {
		t.Errorf("the daemon's store lacks %v after deploy --api", missing)
	}
	if code, _, body := remote.Get("shop.localhost", "/"); code != 200 || !strings.Contains(body, "Teapot") {
		t.Errorf("remote shop: %d %q", code, body)
	}
	// Nothing left to copy: nothing copied.
	out, stderr, code = local.RunEnv(auth, "--api", url, "deploy", "--no-confirm")
	if code != 0 || !strings.Contains(out, "nothing changed") || strings.Contains(stderr, "store paths to") {
		t.Errorf("second deploy --api: exit %d %q\n%s", code, out, stderr)
	}

	// A store path neither machine has.
	os.Remove(filepath.Join(local.Dir, "hostel.nix"))
	local.WriteSpec(map[string]any{"services": map[string]any{
		"ghost": map[string]any{"package": "/nix/store/00000000000000000000000000000000-ghost", "exec": []string{"bin/ghost"}},
	}})
	_, stderr, code = local.RunEnv(auth, "--api", url, "deploy", "--no-confirm")
	first, _, _ := strings.Cut(stderr, "\n")
	if code != 2 || !strings.Contains(first, `service "ghost"`) || !strings.Contains(first, "is not on "+url) {
		t.Errorf("deploy --api of a path neither has: exit %d, stderr %q; want exit 2 naming the service", code, stderr)
	}
	if st2 := remote.nixStatus(); !samePIDs(st2, st, nixServices...) || len(st2) != len(st) {
		t.Errorf("the remote changed: %v -> %v", st, st2)
	}
}
