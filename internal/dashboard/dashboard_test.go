package dashboard

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/api"
	"hostel/internal/plan"
)

// fakeDaemon answers like a daemon running n services; it is the API's
// stand-in for the page logic and the benchmark (the real daemon is in
// test/e2e's TestDashboard).
type fakeDaemon struct {
	mu         sync.Mutex
	n          int
	current    uint64
	rolledBack []uint64
	scrapes    int
	// deploys is what FollowDeploys passes on after its backlog, deployed.
	deploys  chan api.DeployEvent
	deployed []api.DeployEvent
}

func (f *fakeDaemon) Status(context.Context) (*api.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := &api.Status{Generation: f.current}
	now := time.Now()
	for i := range f.n {
		st.Services = append(st.Services, api.ServiceStatus{
			Name: fmt.Sprintf("svc%04d", i), Version: "abc123def456", Env: "production", State: "running",
			Domains: []string{fmt.Sprintf("svc%04d.example", i)}, Node: "node1", CPUSeconds: 1.5, MemoryBytes: 40 << 20,
			LastRequest: &now,
		})
	}
	if f.n > 0 {
		backup := now.Add(-time.Hour)
		st.Services[0].Database = &api.DatabaseStatus{Name: "svc0000_db", SizeBytes: 3 << 20, LastBackup: &backup}
		expiry := now.Add(30 * 24 * time.Hour)
		st.Certificates = []api.CertStatus{{Host: "svc0000.example", Service: "svc0000", State: "valid",
			Status: "valid until " + expiry.Format(time.DateOnly), NotAfter: &expiry}}
	}
	return st, nil
}

func (f *fakeDaemon) Generations(context.Context) (*api.Generations, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := &api.Generations{Current: f.current}
	for n := uint64(1); n <= 2; n++ {
		g.Generations = append(g.Generations, api.Generation{Number: n, Current: n == f.current,
			Versions: map[string]string{"web": fmt.Sprintf("v%d", n), "db": "v1"}})
	}
	// The first was made before hostel kept plans; the second keeps its.
	g.Generations[1].Plan = []plan.Change{
		{Name: "db", Action: plan.Keep, From: "v1", To: "v1", Reasons: []string{}},
		{Name: "web", Action: plan.Update, From: "v1", To: "v2", Reasons: []string{"env.GREETING changed", "<needs> changed"}},
	}
	return g, nil
}

func (f *fakeDaemon) Envs(context.Context) (*api.EnvList, error) { return &api.EnvList{}, nil }

func (f *fakeDaemon) EnvStatus(ctx context.Context, _ string) (*api.Status, error) {
	return f.Status(ctx)
}

func (f *fakeDaemon) Rollback(_ context.Context, req api.RollbackRequest, _ func(string)) (*api.DeployResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rolledBack = append(f.rolledBack, req.To)
	f.current = req.To
	return &api.DeployResult{Generation: req.To}, nil
}

func (f *fakeDaemon) EnvLogs(_ context.Context, _, service, _ string, _ int, _ bool, w io.Writer) error {
	_, err := fmt.Fprintf(w, "%s says hello\n", service)
	return err
}

func (f *fakeDaemon) AccessLogs(_ context.Context, _, service string, _ int, _ bool, w io.Writer) error {
	_, err := fmt.Fprintf(w, `{"service":%q}`+"\n", service)
	return err
}

func (f *fakeDaemon) FollowDeploys(ctx context.Context, fn func(api.DeployEvent)) error {
	f.mu.Lock()
	backlog := slices.Clone(f.deployed)
	f.mu.Unlock()
	for _, ev := range backlog {
		fn(ev)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-f.deploys:
			fn(ev)
		}
	}
}

// Metrics serves a scrape of web's counters: 10 more requests each
// call, one of them a 5xx, half under 5 ms and half under 50 ms.
func (f *fakeDaemon) Metrics(_ context.Context, w io.Writer) error {
	f.mu.Lock()
	f.scrapes++
	n := float64(f.scrapes * 10)
	f.mu.Unlock()
	_, err := fmt.Fprintf(w, `# TYPE hostel_http_requests_total counter
hostel_http_requests_total{service="svc0000",env="production",version="abc123def456",code="2xx"} %g
hostel_http_requests_total{service="svc0000",env="production",version="abc123def456",code="5xx"} %g
# TYPE hostel_http_request_duration_seconds histogram
hostel_http_request_duration_seconds_bucket{service="svc0000",env="production",version="abc123def456",le="0.001"} 0
hostel_http_request_duration_seconds_bucket{service="svc0000",env="production",version="abc123def456",le="0.005"} %g
hostel_http_request_duration_seconds_bucket{service="svc0000",env="production",version="abc123def456",le="0.05"} %g
hostel_http_request_duration_seconds_bucket{service="svc0000",env="production",version="abc123def456",le="+Inf"} %g
hostel_http_request_duration_seconds_sum{service="svc0000",env="production",version="abc123def456"} 1
hostel_http_request_duration_seconds_count{service="svc0000",env="production",version="abc123def456"} %g
`, n*0.9, n*0.1, n/2, n, n, n)
	return err
}

func start(t testing.TB, n int) (*Server, *httptest.Server, *fakeDaemon) {
	t.Helper()
	f := &fakeDaemon{n: n, current: 2, deploys: make(chan api.DeployEvent)}
	d := New(f, Options{})
	ts := httptest.NewServer(d)
	t.Cleanup(ts.Close)
	return d, ts, f
}

func client(t testing.TB) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second}
}

func get(t testing.TB, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestNoSessionGetsNothing: without the token's session every page,
// stream and asset answers 401 with an empty body.
func TestNoSessionGetsNothing(t *testing.T) {
	_, ts, f := start(t, 3)
	for _, path := range []string{"/", "/generations", "/logs?service=web", "/logs/stream?service=web", "/events", "/static/app.js", "/certificates", "/databases", "/login?token=wrong", "/login", "/deploys/stream", "/nothing"} {
		c := client(t)
		c.Timeout = 2 * time.Second // a stream served without a session would never end
		code, body := get(t, c, ts.URL+path)
		if code != http.StatusUnauthorized || body != "" {
			t.Errorf("GET %s: %d %q, want 401 and nothing", path, code, body)
		}
	}
	resp, err := http.PostForm(ts.URL+"/rollback", url.Values{"to": {"1"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || len(f.rolledBack) != 0 {
		t.Errorf("POST /rollback without a session: %d, rolled back %v", resp.StatusCode, f.rolledBack)
	}
}

// TestTokenWorksOnce: the token opens one session; used again it opens
// nothing, and the first session still works.
func TestTokenWorksOnce(t *testing.T) {
	d, ts, _ := start(t, 3)
	login := ts.URL + "/login?token=" + d.Token()
	c := client(t)
	code, body := get(t, c, login)
	if code != http.StatusOK || !strings.Contains(body, "svc0002") {
		t.Fatalf("first login: %d, page lacks svc0002:\n%s", code, body)
	}
	if code, _ := get(t, client(t), login); code != http.StatusUnauthorized {
		t.Errorf("second use of the token: %d, want 401", code)
	}
	if code, _ := get(t, c, ts.URL+"/generations"); code != http.StatusOK {
		t.Errorf("the first session after the token's reuse: %d", code)
	}
}

// TestGivenToken: a dashboard given its token (the remote API's, as the
// daemon serves it) lets it log in again and again, never another; each
// refusal is told; over TLS the session cookie is Secure.
func TestGivenToken(t *testing.T) {
	var mu sync.Mutex
	refused := 0
	d := New(&fakeDaemon{n: 1, current: 1}, Options{Token: "hostel1.secret.pin", Refused: func(*http.Request) {
		mu.Lock()
		refused++
		mu.Unlock()
	}})
	ts := httptest.NewTLSServer(d)
	t.Cleanup(ts.Close)
	if d.Token() != "" {
		t.Errorf("Token() = %q for a given token, want \"\"", d.Token())
	}
	for i := range 2 {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Transport: ts.Client().Transport, Jar: jar}
		resp, err := c.Get(ts.URL + "/login?token=hostel1.secret.pin")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "svc0000") {
			t.Fatalf("login %d: %d, page lacks svc0000", i+1, resp.StatusCode)
		}
		if cookie := resp.Request.Response.Header.Get("Set-Cookie"); !strings.Contains(cookie, "Secure") || !strings.Contains(cookie, "HttpOnly") {
			t.Errorf("login %d over TLS: Set-Cookie %q, want Secure and HttpOnly", i+1, cookie)
		}
	}
	for _, path := range []string{"/login?token=hostel1.secret.pi", "/login?token=", "/"} {
		resp, err := ts.Client().Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || len(b) != 0 {
			t.Errorf("GET %s: %d %q, want 401 and nothing", path, resp.StatusCode, b)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if refused != 3 {
		t.Errorf("refusals told: %d, want 3", refused)
	}
}

// TestSessionsBounded: logins with a reusable token keep at most
// maxSessions sessions, the newest among them.
func TestSessionsBounded(t *testing.T) {
	d := New(&fakeDaemon{n: 1, current: 1}, Options{Token: "tok"})
	ts := httptest.NewServer(d)
	t.Cleanup(ts.Close)
	d.mu.Lock()
	for i := range maxSessions {
		d.sessions[fmt.Sprint(i)] = "csrf"
	}
	d.mu.Unlock()
	c := client(t)
	if code, _ := get(t, c, ts.URL+"/login?token=tok"); code != http.StatusOK {
		t.Fatalf("login past the bound: %d", code)
	}
	d.mu.Lock()
	n := len(d.sessions)
	d.mu.Unlock()
	if n != maxSessions {
		t.Errorf("%d sessions, want %d", n, maxSessions)
	}
}

// readEvent reads server-sent events from r until one of kind, and
// returns its data.
func readEvent(t *testing.T, r *bufio.Reader, kind string) string {
	t.Helper()
	event := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("no %q event: %v", kind, err)
		}
		line = strings.TrimSuffix(line, "\n")
		if e, ok := strings.CutPrefix(line, "event: "); ok {
			event = e
		}
		if d, ok := strings.CutPrefix(line, "data: "); ok && event == kind {
			return d
		}
	}
}

// TestDeployStream: the deploys stream passes on what the daemon said of
// its deploys so far, then each event as it comes; Close ends it.
func TestDeployStream(t *testing.T) {
	d, ts, f := start(t, 1)
	f.deployed = []api.DeployEvent{{Op: 3, Kind: "deploy", Start: true}}
	c := client(t)
	get(t, c, ts.URL+"/login?token="+d.Token())
	c.Timeout = 0
	resp, err := c.Get(ts.URL + "/deploys/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if got := readEvent(t, br, "deploy"); !strings.Contains(got, `"op":3`) || !strings.Contains(got, `"start":true`) {
		t.Errorf("first event %s, want deploy 3's start", got)
	}
	f.deploys <- api.DeployEvent{Op: 3, Kind: "deploy", Progress: "starting quotes-abc"}
	if got := readEvent(t, br, "deploy"); !strings.Contains(got, `"progress":"starting quotes-abc"`) {
		t.Errorf("next event %s, want the progress line", got)
	}
	d.Close()
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, br); ended <- err }()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream goes on after Close")
	}
}

// TestRollbackNeedsCSRF: a session's rollback form goes through only with
// the session's CSRF token.
func TestRollbackNeedsCSRF(t *testing.T) {
	d, ts, f := start(t, 1)
	c := client(t)
	get(t, c, ts.URL+"/login?token="+d.Token())
	_, page := get(t, c, ts.URL+"/generations")
	i := strings.Index(page, `name="csrf" value="`)
	if i < 0 {
		t.Fatalf("no CSRF field in the generations page:\n%s", page)
	}
	csrf := page[i+len(`name="csrf" value="`):]
	csrf = csrf[:strings.IndexByte(csrf, '"')]

	resp, err := c.PostForm(ts.URL+"/rollback", url.Values{"to": {"1"}, "csrf": {"forged"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || len(f.rolledBack) != 0 {
		t.Fatalf("forged CSRF: %d, rolled back %v", resp.StatusCode, f.rolledBack)
	}
	resp, err = c.PostForm(ts.URL+"/rollback", url.Values{"to": {"1"}, "csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(f.rolledBack) != 1 || f.rolledBack[0] != 1 || !strings.Contains(string(b), "generation 1 is live") {
		t.Fatalf("rollback: rolled back %v, page:\n%s", f.rolledBack, b)
	}
}

// TestPages: the certificates and databases pages show what the daemon
// says of them.
func TestPages(t *testing.T) {
	d, ts, _ := start(t, 2)
	c := client(t)
	get(t, c, ts.URL+"/login?token="+d.Token())
	expiry := time.Now().Add(30 * 24 * time.Hour).Local().Format(time.DateOnly)
	for path, wants := range map[string][]string{
		"/certificates": {"svc0000.example", "valid until", expiry},
		"/databases":    {"svc0000_db", "3.0 MiB", time.Now().Add(-time.Hour).Local().Format(time.DateOnly)},
		"/generations":  {"<code>update web v1 → v2</code>: env.GREETING changed; &lt;needs&gt; changed", "add db v1", "add web v1", `id="rollback-1"`},
	} {
		code, page := get(t, c, ts.URL+path)
		for _, want := range wants {
			if code != http.StatusOK || !strings.Contains(page, want) {
				t.Errorf("GET %s: %d, page lacks %q", path, code, want)
			}
		}
		if path == "/generations" && (strings.Contains(page, "keep db") || strings.Contains(page, "change web")) {
			t.Errorf("GET /generations shows a kept service, or the diff of a generation with its plan:\n%s", page)
		}
	}
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name      string
		prev, cur map[string]string
		want      string
	}{
		{"first", nil, map[string]string{"b": "1", "a": "2"}, "add a 2|add b 1"},
		{"changed and removed", map[string]string{"a": "1", "b": "1"}, map[string]string{"a": "2"}, "change a 1 → 2|remove b 1"},
		{"same", map[string]string{"a": "1"}, map[string]string{"a": "1"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(diff(tt.prev, tt.cur), "|"); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// BenchmarkFirstRender is the services page with 1,000 services, as a
// browser's first request after login gets it (the fake daemon answers at
// once: this is the dashboard's own share).
func BenchmarkFirstRender(b *testing.B) {
	b.Run("status only", func(b *testing.B) { benchmarkFirstRender(b, false) })
	b.Run("with an hour of rates", func(b *testing.B) { benchmarkFirstRender(b, true) })
}

func benchmarkFirstRender(b *testing.B, withHour bool) {
	d, ts, _ := start(b, 1000)
	c := client(b)
	if code, body := get(b, c, ts.URL+"/login?token="+d.Token()); code != http.StatusOK || !strings.Contains(body, "svc0999") {
		b.Fatalf("login: %d", code)
	}
	if withHour {
		// An hour of scrapes every 10 s, each service's counters
		// growing: every row has its rates and a full chart.
		bounds := []float64{0.001, 0.005, 0.05, math.Inf(1)}
		t0 := time.Now().Add(-chartSpan)
		for i := range 361 {
			sc := scrape{at: t0.Add(time.Duration(i) * 10 * time.Second), byVersion: map[string]counts{}, bounds: bounds}
			for j := range 1000 {
				n := float64(i * (j + 1))
				sc.byVersion[fmt.Sprintf("svc%04d/production/abc123def456", j)] = counts{requests: n, errors: n / 100, buckets: []float64{0, n / 2, n, n}}
			}
			d.history.addLocked(sc)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		if code, _ := get(b, c, ts.URL+"/"); code != http.StatusOK {
			b.Fatal(code)
		}
	}
}
