package e2e

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// refusedWithoutToken asserts that each of paths under base, asked by c
// without a session, gets 401 and an empty body.
func refusedWithoutToken(t *testing.T, c *http.Client, base string, paths ...string) {
	t.Helper()
	for _, path := range paths {
		resp, err := c.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || len(b) != 0 {
			t.Errorf("GET %s without the token: %d %q, want 401 and nothing", path, resp.StatusCode, b)
		}
	}
}

// startDashboard runs `hostel dashboard` and returns its login URL (with the
// one-time token).
func (e *Env) startDashboard() string {
	e.t.Helper()
	cmd := exec.Command(e.Bin, "--root", e.Root, "dashboard")
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		e.t.Fatalf("hostel dashboard printed no URL: %v", err)
	}
	return strings.TrimSpace(line)
}

// TestDashboard drives the dashboard in headless Chromium: log in with the
// token, see the services of a deployed spec, watch a deploy appear without
// reloading by hand, follow a log line a service writes, roll back with the
// button (after a confirmation) and see the generation change. A request
// without the token gets 401 and nothing. With HOSTEL_SCREENSHOTS=DIR it
// saves the main pages there (docs/dashboard-*.png).
func TestDashboard(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(monoliths(e, "Hello"))
	e.MustRun("deploy", "--no-confirm")

	login := e.startDashboard()
	if !strings.HasPrefix(login, "http://127.0.0.1:") || !strings.Contains(login, "/login?token=") {
		t.Fatalf("hostel dashboard printed %q, want http://127.0.0.1:PORT/login?token=…", login)
	}
	base := login[:strings.Index(login, "/login")]
	refusedWithoutToken(t, http.DefaultClient, base, "/", "/generations", "/login?token=nope")

	b := newBrowser(t)
	run, waitFor, has, shot := b.run, b.waitFor, b.has, b.shot

	// Log in: the services of the spec, running.
	b.open("log in", login, chromedp.WaitVisible(chromedp.ID("services")))
	table, err := chromedp.Run(b.ctx, chromedp.Text(chromedp.ID("services")))
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"quotes", "blog", "shop", "wiki"} {
		if !strings.Contains(table, svc) {
			t.Errorf("services page lacks %s:\n%s", svc, table)
		}
	}
	if !strings.Contains(table, "running") {
		t.Errorf("services page shows nothing running:\n%s", table)
	}
	shot("services")

	// A deploy from the command line shows on the open page.
	e.WriteSpec(monoliths(e, "Bonjour"))
	e.MustRun("deploy", "--no-confirm")
	has("see generation 2 appear", "#generation", "2")

	// Follow quotes's log: what it wrote, then a line it writes now.
	b.open("open the log", base+"/logs?service=quotes")
	has("see the log", "#log", "listening on")
	e.MustRun("restart", "quotes")
	waitFor("follow a new line", `document.getElementById("log").textContent.split("listening on").length > 2`)
	shot("logs")

	// Shop's access log shows a request made as it opens (in its tail or
	// followed: either way, on the page).
	b.open("open the access log", base+"/logs?service=shop&access=1")
	if code, _, _ := e.Get("shop.example", "/dashboard-probe"); code != http.StatusOK {
		t.Fatalf("GET shop.example/dashboard-probe: %d", code)
	}
	has("follow an access log line", "#log", "/dashboard-probe")

	// Roll back with the button, confirmed in the browser's dialog.
	b.open("open generations", base+"/generations")
	has("see generations", "#current", "2")
	has("see why generation 2 was made", "#generations", "env.GREETING changed")
	shot("generations")
	run("roll back", chromedp.Click(chromedp.ID("rollback-1")))
	has("see the rollback's result", "#message", "is live")
	gen, _ := e.Status()
	if gen == 2 {
		t.Fatalf("generation still 2 after the rollback button")
	}
	has("see the new generation", "#current", strconv.FormatUint(gen, 10))
	if asked := b.dialogs(); len(asked) != 1 || !strings.Contains(asked[0], "Roll production back to generation 1") {
		t.Errorf("confirmation dialogs %q, want one asking to roll back to 1", asked)
	}
}

// browser is a headless Chromium (Debian's chromium) driven through
// chromedp, which accepts every dialog (the rollback's confirmation) and
// keeps what they asked.
type browser struct {
	t   *testing.T
	ctx context.Context
	mu  sync.Mutex
	// asked are the messages of the dialogs accepted.
	asked []string
}

// newBrowser starts Chromium with flags besides the headless defaults; it
// stops with the test.
func newBrowser(t *testing.T, flags ...chromedp.ExecAllocatorOption) *browser {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is missing: scripts/install-deps.sh installs Debian's chromium")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1400, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), append(opts, flags...)...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(cancel)
	b := &browser{t: t, ctx: ctx}
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.asked = append(b.asked, ev.Message)
			b.mu.Unlock()
			chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	return b
}

func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// open loads url, as run(Navigate) does — again if the machine's network
// changed under the load (Chromium ends it with ERR_NETWORK_CHANGED when
// an interface comes or goes, as other tests' namespaces do).
func (b *browser) open(what, url string, then ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	var err error
	for range 5 {
		if err = chromedp.Do(b.ctx, chromedp.Navigate(url)); err == nil || !strings.Contains(err.Error(), "ERR_NETWORK_CHANGED") {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	b.run(what, then...)
}

// shot saves a screenshot of the page as docs/dashboard-NAME.png would
// be, in $HOSTEL_SCREENSHOTS; nothing without.
func (b *browser) shot(name string) {
	b.t.Helper()
	shots := os.Getenv("HOSTEL_SCREENSHOTS")
	if shots == "" {
		return
	}
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(shots, "dashboard-"+name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// waitFor evaluates expr until it is true. It asks again and again
// rather than waiting inside the page, because the live pages reload
// themselves, which ends a wait inside them.
func (b *browser) waitFor(what, expr string) {
	b.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		// A load the page started itself (its live reload) that the
		// machine's network changing under it ended leaves Chromium's
		// error page: load the page again.
		if url, err := chromedp.Run(b.ctx, chromedp.Location()); err == nil && strings.HasPrefix(url, "chrome-error:") {
			chromedp.Run(b.ctx, chromedp.Reload()) // Chromium loads the failed URL again
		}
		if time.Now().After(deadline) {
			url, _ := chromedp.Run(b.ctx, chromedp.Location())
			text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 3000) : ""`))
			b.t.Fatalf("%s: %s not true after 30 s (last error: %v); the page, %s:\n%s", what, expr, err, url, text)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// has waits until the element sel holds text.
func (b *browser) has(what, sel, text string) {
	b.t.Helper()
	b.waitFor(what, `(() => { const el = document.querySelector(`+jsString(sel)+`); return !!el && el.textContent.includes(`+jsString(text)+`); })()`)
}

// dialogs returns the messages of the dialogs accepted so far.
func (b *browser) dialogs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.asked)
}

func jsString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
