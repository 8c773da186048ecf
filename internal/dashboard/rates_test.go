package dashboard

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/metrics"
	"hostel/internal/spec"
)

// TestRates: two scrapes of the daemon's metrics give each service's
// requests per second, error rate and p50/p99, and the page shows them.
func TestRates(t *testing.T) {
	d, ts, f := start(t, 2)
	t0 := time.Now()
	for i := range 3 {
		var b bytes.Buffer
		if err := f.Metrics(context.Background(), &b); err != nil {
			t.Fatal(err)
		}
		if err := d.history.add(t0.Add(time.Duration(i)*10*time.Second), b.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	r := d.history.rates()[instance{"svc0000", "production"}]
	if !r.Known || r.RPS != 1 || math.Abs(r.ErrorRate-0.1) > 1e-9 {
		t.Errorf("rates %+v, want 1 req/s, 10%% errors", r)
	}
	// Half the requests under 5 ms, the rest under 50 ms: p50 at 5 ms,
	// p99 interpolated in (5 ms, 50 ms].
	if r.P50 != 5*time.Millisecond || r.P99 != time.Duration((0.005+0.045*0.98)*float64(time.Second)) {
		t.Errorf("p50 %v, p99 %v", r.P50, r.P99)
	}
	if len(r.chart) != 2 || !strings.Contains(string(r.Chart()), "<polyline") {
		t.Errorf("chart %v %q", r.chart, r.Chart())
	}
	if got := d.history.rates()[instance{"svc0001", "production"}]; got.Known {
		t.Errorf("svc0001 has no series, yet rates %+v", got)
	}
	c := client(t)
	_, page := get(t, c, ts.URL+"/login?token="+d.Token())
	for _, want := range []string{"1.0 <svg", "10.0 %", "5.0 ms", "measuring…"} {
		if !strings.Contains(page, want) {
			t.Errorf("services page lacks %q", want)
		}
	}
}

// TestRatesUnavailable: a scrape that fails says why on the page, in
// place of the rates.
func TestRatesUnavailable(t *testing.T) {
	d, ts, _ := start(t, 1)
	d.history.failed(fmt.Errorf("GET /metrics: daemon answered 404 Not Found"))
	_, page := get(t, client(t), ts.URL+"/login?token="+d.Token())
	if !strings.Contains(page, "no rates: GET /metrics: daemon answered 404 Not Found") {
		t.Errorf("services page does not say why it has no rates:\n%s", page)
	}
}

// TestRatesOverADeploy: a version's series vanish when it stops and the
// new one's start from zero; the rate counts the new version's requests,
// never a negative difference.
func TestRatesOverADeploy(t *testing.T) {
	var h history
	t0 := time.Now()
	scrape := func(at time.Duration, version string, n int) {
		t.Helper()
		text := fmt.Sprintf("# TYPE hostel_http_requests_total counter\nhostel_http_requests_total{service=\"web\",env=\"production\",version=%q,code=\"2xx\"} %d\n", version, n)
		if err := h.add(t0.Add(at), []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	scrape(0, "v1", 1000)
	scrape(10*time.Second, "v2", 50)
	if r := h.rates()[instance{"web", "production"}]; r.RPS != 5 {
		t.Errorf("rate across a deploy %v req/s, want 5", r.RPS)
	}
}

// TestRatesOfTheDaemonsRegistry reads what the daemon's own registry
// (internal/metrics) serves, so that the names and labels read here are
// the ones it writes.
func TestRatesOfTheDaemonsRegistry(t *testing.T) {
	reg := metrics.New("")
	v := reg.Series(spec.Key("web", "0123456789ab"))
	srv := httptest.NewServer(reg.Handler())
	t.Cleanup(srv.Close)
	var h history
	t0 := time.Now()
	scrape := func(at time.Duration) {
		t.Helper()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if err := h.add(t0.Add(at), b); err != nil {
			t.Fatal(err)
		}
	}
	scrape(0)
	for i := range 20 {
		v.Started()
		status := 200
		if i%4 == 0 {
			status = 502
		}
		v.Ended(3*time.Millisecond, &front.Outcome{Status: status})
	}
	scrape(10 * time.Second)
	r := h.rates()[instance{"web", spec.DefaultEnv}]
	if !r.Known || r.RPS != 2 || r.ErrorRate != 0.25 || !r.HasLatency || r.P50 <= 0 || r.P50 > 5*time.Millisecond {
		t.Errorf("rates %+v, want 2 req/s, 25%% errors, p50 at most 5 ms", r)
	}
}

// TestUsageCharts: the CPU and memory the daemon's metrics give of each
// version (from its cgroup) are charted per service over the scrapes,
// its versions summed: CPU as the share of a core used between two
// scrapes, memory as held at each.
func TestUsageCharts(t *testing.T) {
	var h history
	t0 := time.Now()
	for i, v := range []struct{ cpuA, cpuB, memA, memB float64 }{
		{0, 1, 16 << 20, 0},
		{5, 1, 32 << 20, 16 << 20}, // a: 0.5 s/s; b: idle
		{5, 3, 32 << 20, 32 << 20}, // b: 0.2 s/s
	} {
		text := fmt.Sprintf(`# TYPE hostel_cpu_seconds_total counter
hostel_cpu_seconds_total{service="api",env="production",version="a"} %g
hostel_cpu_seconds_total{service="api",env="production",version="b"} %g
# TYPE hostel_memory_bytes gauge
hostel_memory_bytes{service="api",env="production",version="a"} %g
hostel_memory_bytes{service="api",env="production",version="b"} %g
`, v.cpuA, v.cpuB, v.memA, v.memB)
		if err := h.add(t0.Add(time.Duration(i)*10*time.Second), []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	r := h.rates()[instance{"api", "production"}]
	if !slices.Equal(r.cpuChart, []float64{0.5, 0.2}) || !slices.Equal(r.memChart, []float64{48 << 20, 64 << 20}) {
		t.Fatalf("cpu %v, memory %v; want [0.5 0.2], [48 MiB 64 MiB]", r.cpuChart, r.memChart)
	}
	for chart, want := range map[string]string{string(r.CPUChart()): "CPU, last hour, up to 50 %", string(r.MemoryChart()): "memory, last hour, up to 64 MiB"} {
		if !strings.Contains(chart, want) || !strings.Contains(chart, "<polyline") {
			t.Errorf("chart %q, want %q", chart, want)
		}
	}
}
