package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// scrape returns the text of GET /metrics from url, or from the API
// socket when url is "".
func (e *Env) scrape(url string) string {
	e.t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	if url == "" {
		url = "http://hostel/metrics"
		c.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(e.Root, "hostel.sock"))
		}}
	}
	resp, err := c.Get(url)
	if err != nil {
		e.t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

// nodeLabel is the label a clustered daemon (the etcd store) adds to
// every series.
var nodeLabel = regexp.MustCompile(`\{node="[^"]*"\}|,node="[^"]*"|node="[^"]*",`)

// sample returns the value of the series name{labels} (labels as written,
// sorted by name, without node) in a scrape; -1 if absent.
func sample(text, series string) float64 {
	text = nodeLabel.ReplaceAllString(text, "")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// hasSample reports whether a scrape holds a line (without its node
// label) that the regular expression line matches whole.
func hasSample(text, line string) bool {
	return regexp.MustCompile(`(?m)^` + line + `$`).MatchString(nodeLabel.ReplaceAllString(text, ""))
}

// metricsAddr returns where `serve --metrics` listens, from status --json.
func (e *Env) metricsAddr() string {
	e.t.Helper()
	var st struct{ Listen struct{ Metrics string } }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	if st.Listen.Metrics == "" {
		e.t.Fatal("status --json: no listen.metrics with --metrics")
	}
	return st.Listen.Metrics
}

// accessLine is a line of the access log (docs/metrics.md).
type accessLine struct {
	Service, Env, Version, Host, Method, Path string
	Status                                    int
	Bytes                                     int64
	Duration                                  float64
	Client                                    string
	Held                                      bool
}

// TestMetrics: the router counts each request to a version by its status
// class, with its bytes and duration, and the daemon serves the series at
// GET /metrics on the API socket and on --metrics ADDR, in a text that
// promtool (Debian's prometheus package) accepts. Each request is also a
// JSON line of the access log, which logs --access prints.
func TestMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is missing: scripts/install-deps.sh installs Debian's prometheus")
	}
	e := NewEnv(t)
	if _, errOut, code := e.Run("serve", "--root", e.Root, "--http", "127.0.0.1:0", "--https", "", "--metrics", "9101"); code != 2 ||
		!strings.HasPrefix(errOut, "--metrics: \"9101\": want HOST:PORT") {
		t.Errorf("serve --metrics 9101: exit %d, %q; want 2 and what is wrong", code, errOut)
	}
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--metrics", "127.0.0.1:0")
	e.WriteSpec(map[string]any{"services": map[string]any{
		"wiki": e.App("wiki", map[string]any{"domains": []string{"wiki.example"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	_, svcs := e.Status()
	version := svcs["wiki"].Version
	// The daemon says when it has no cgroups to measure with.
	cgroups := !strings.Contains(e.DaemonLog(), "limits (memory, cpu, processes) are not enforced")
	var body int
	for range 3 {
		code, _, b := e.Get("wiki.example", "/")
		if code != http.StatusOK {
			t.Fatalf("GET wiki.example/: %d", code)
		}
		body += len(b)
	}
	if code, _, b := e.Get("wiki.example", "/nopage"); code != http.StatusNotFound {
		t.Fatalf("GET wiki.example/nopage: %d, want 404", code)
	} else {
		body += len(b)
	}

	// A host no service has: counted as the router's answer, never by
	// the name the client sent.
	if code, _, _ := e.Get("no-such-host-4711.example", "/"); code != http.StatusNotFound {
		t.Fatalf("GET no-such-host-4711.example/: %d, want 404", code)
	}

	labels := fmt.Sprintf(`env="production",service="wiki",version="%s"`, version)
	for _, src := range []string{"", "http://" + e.metricsAddr() + "/metrics"} {
		text := e.scrape(src)
		for _, c := range []struct {
			series string
			want   float64
		}{
			{`hostel_http_requests_total{code="2xx",` + labels + `}`, 3},
			{`hostel_http_requests_total{code="4xx",` + labels + `}`, 1},
			{`hostel_http_requests_total{code="5xx",` + labels + `}`, 0},
			{`hostel_http_response_bytes_total{` + labels + `}`, float64(body)},
			{`hostel_http_request_duration_seconds_count{` + labels + `}`, 4},
			{`hostel_http_requests_in_flight{` + labels + `}`, 0},
			{`hostel_deploys_total{op="deploy",result="ok"}`, 1},
			{`hostel_deploy_duration_seconds_count{op="deploy",result="ok"}`, 1},
			{`hostel_restarts_total{` + labels + `}`, 0},
			{`hostel_router_answers_total{answer="unknown_host"}`, 1},
			{`hostel_router_answers_total{answer="redirect"}`, 0},
		} {
			if got := sample(text, c.series); got != c.want {
				t.Errorf("%s: %s = %v, want %v", src, c.series, got, c.want)
			}
		}
		if strings.Contains(text, "no-such-host-4711") {
			t.Errorf("%s: the metrics name a Host a client sent", src)
		}
		if sample(text, "hostel_router_connections") < 0 {
			t.Errorf("%s: no hostel_router_connections", src)
		}
		if cgroups && sample(text, `hostel_memory_bytes{`+labels+`}`) <= 0 {
			t.Errorf("%s: no memory use for wiki with cgroups", src)
		}
		f := filepath.Join(t.TempDir(), "metrics.txt")
		os.WriteFile(f, []byte(text), 0o644)
		cmd := exec.Command(promtool, "check", "metrics")
		in, _ := os.Open(f)
		defer in.Close()
		cmd.Stdin = in
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	}

	// The access log: one JSON line per request, in order.
	var lines []accessLine
	fetch := func() string {
		out, _, _ := e.Run("logs", "wiki", "--access", "-n", "10")
		return out
	}
	var out string
	eventually(t, 10*time.Second, "four lines in the access log", func() bool { out = fetch(); return strings.Count(out, "\n") >= 4 })
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		lines = append(lines, accessLine{})
		if err := json.Unmarshal([]byte(l), &lines[len(lines)-1]); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
	}
	if len(lines) != 4 {
		t.Fatalf("access log: %d lines, want 4:\n%s", len(lines), out)
	}
	for i, l := range lines {
		wantStatus, wantPath := 200, "/"
		if i == 3 {
			wantStatus, wantPath = 404, "/nopage"
		}
		if l.Service != "wiki" || l.Env != "production" || l.Version != version || l.Host != "wiki.example" ||
			l.Method != "GET" || l.Path != wantPath || l.Status != wantStatus || l.Bytes == 0 ||
			l.Duration <= 0 || !strings.HasPrefix(l.Client, "127.0.0.1:") || l.Held {
			t.Errorf("access log line %d: %+v", i, l)
		}
	}
	if _, errOut, code := e.Run("logs", "wiki", "--access", "--version", version); code != 2 {
		t.Errorf("logs --access --version: exit %d, want 2 (%s)", code, errOut)
	}

	// A new version replaces the old one: the old one's request series go
	// with it, the new one's are there.
	e.WriteSpec(map[string]any{"services": map[string]any{
		"wiki": e.App("wiki", map[string]any{"domains": []string{"wiki.example"}, "env": map[string]string{"V": "2"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	_, svcs = e.Status()
	next := svcs["wiki"].Version
	if next == version {
		t.Fatalf("the new spec kept version %s", version)
	}
	e.Get("wiki.example", "/")
	eventually(t, 30*time.Second, "the old version's series gone", func() bool {
		return !strings.Contains(e.scrape(""), `version="`+version+`"`)
	})
	if text := e.scrape(""); sample(text, `hostel_http_requests_total{code="2xx",env="production",service="wiki",version="`+next+`"}`) != 1 {
		t.Errorf("the new version's request series are not there")
	}
}

// TestMetricsScrapedByPrometheus: a real Prometheus (Debian's) scrapes
// serve --metrics: its target is up, and a hostel series is stored.
func TestMetricsScrapedByPrometheus(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is missing: scripts/install-deps.sh installs Debian's prometheus")
	}
	e := NewEnv(t)
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--metrics", "127.0.0.1:0")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: hostel
    static_configs: [{targets: [%q]}]
`, e.metricsAddr())), 0o644)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	web := ln.Addr().String()
	ln.Close()
	var log lockedBuffer
	cmd := exec.Command(bin, "--config.file", cfg, "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", web)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", log.String())
		}
	})
	// query returns the values of an instant query, or nil.
	query := func(q string) []string {
		resp, err := http.Get("http://" + web + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct{ Value []any }
			}
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil {
			return nil
		}
		var vs []string
		for _, s := range r.Data.Result {
			if len(s.Value) == 2 {
				vs = append(vs, fmt.Sprint(s.Value[1]))
			}
		}
		return vs
	}
	eventually(t, 30*time.Second, "Prometheus to scrape hostel (up == 1)", func() bool {
		vs := query(`up{job="hostel"}`)
		return len(vs) == 1 && vs[0] == "1"
	})
	eventually(t, 10*time.Second, "a hostel series in Prometheus", func() bool {
		return len(query("hostel_router_connections")) == 1
	})
}

// lockedBuffer is a bytes.Buffer two writers may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
