package e2e

import (
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"hostel/internal/api"
)

// TestDashboardRemoteAPI: with --api-listen the daemon serves the
// dashboard on the remote API's listener, behind its token. Without the
// token (or with another) every page, stream and asset gets 401 and
// nothing. A browser that trusts the daemon's key (and nothing else) logs
// in with the token over TLS, sees the services, watches a deploy whose
// new service is slow to start say what it starts before it ends, sees
// it end, and finds on the generations page what each deploy did and why.
func TestDashboardRemoteAPI(t *testing.T) {
	e := NewEnv(t)
	url, token := e.startRemoteAPI()
	e.WriteSpec(monoliths(e, "Hello"))
	e.MustRun("deploy", "--no-confirm")

	tok, err := api.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := api.NewToken(tok.Pin) // this daemon's pin, another secret
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	refusedWithoutToken(t, hc, url, "/", "/generations", "/static/app.js", "/events", "/deploys/stream", "/logs/stream?service=quotes",
		"/login", "/login?token="+other.String(), "/nothing")
	// The API beside it still wants the token as a header.
	if resp, err := hc.Get(url + "/v1/status"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/status without the token: %v %v, want 401", resp.StatusCode, err)
	}

	// The browser trusts the daemon's key, as the token pins it: the
	// certificate is self-signed.
	b := newBrowser(t, chromedp.Flag("ignore-certificate-errors-spki-list", base64.StdEncoding.EncodeToString(tok.Pin[:])))
	b.open("log in", url+"/login?token="+token, chromedp.WaitVisible(chromedp.ID("services")))
	for _, svc := range []string{"quotes", "blog", "shop", "wiki"} {
		b.has("see "+svc, "#services", svc)
	}
	if strings.Contains(e.DaemonLog(), tok.String()) {
		t.Errorf("the daemon's log holds the token")
	}

	// A deploy whose new service waits for a file before it listens: the
	// page says what it starts while it waits, then that it is done.
	goAhead := filepath.Join(filepath.Dir(e.Root), "go-ahead")
	s := monoliths(e, "Bonjour")
	s["services"].(map[string]any)["late"] = map[string]any{"package": lateApp(t), "exec": []string{"app", "-await", goAhead},
		"domains": []string{"late.test"}}
	e.WriteSpec(s)
	type outcome struct {
		stdout, stderr string
		code           int
	}
	deployed := make(chan outcome, 1)
	go func() {
		o, er, code := e.Run("deploy", "--no-confirm")
		deployed <- outcome{o, er, code}
	}()
	b.has("see the deploy say what it starts", "#deploys", "to start:")
	b.has("see the slow service among them", "#deploys", "late-")
	b.shot("deploy")
	select {
	case o := <-deployed:
		t.Fatalf("the deploy ended before its slow service could start: exit %d\n%s", o.code, o.stderr)
	default:
	}
	if err := os.WriteFile(goAhead, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if o := <-deployed; o.code != 0 {
		t.Fatalf("deploy: exit %d\n%s\n%s", o.code, o.stdout, o.stderr)
	}
	b.has("see the deploy end", "#deploys", "done, generation 2 is live")

	// The generations, with what each deploy did and why.
	b.open("open generations", url+"/generations")
	b.has("see generation 2's reasons", "#generations", "env.GREETING changed")
	b.has("see the new service", "#generations", "add late")
	b.has("see generation 1's reasons", "#generations", "new service")
}
