package dashboard

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// chartSpan is how far back the inline charts go.
const chartSpan = time.Hour

// instance names a service of an environment, as the services page shows
// it (its versions summed).
type instance struct{ Service, Env string }

// counts is one scrape's counters of one version.
type counts struct {
	requests, errors float64
	// cpu is the CPU seconds its process used, memory the bytes it holds
	// (from its cgroup).
	cpu, memory float64
	// buckets are the request duration histogram's cumulative counts, by
	// upper bound (seconds), in the order of bounds.
	buckets []float64
}

// scrape is one reading of the daemon's metrics.
type scrape struct {
	at time.Time
	// byVersion holds each version's counters, keyed by
	// service/env/version (a version's series start from zero when it
	// starts, and vanish when it stops: rates are taken per version, over
	// the versions in both scrapes).
	byVersion map[string]counts
	bounds    []float64
}

// Rates is what the services page shows of a service's traffic, from the
// last two scrapes of the daemon's metrics.
type Rates struct {
	// Known is false until two scrapes were taken, and while the
	// instance has no series (not routed).
	Known bool
	// RPS is the requests per second, ErrorRate the share of them
	// answered 5xx (0 without requests).
	RPS, ErrorRate float64
	// P50 and P99 are the latency's quantiles, interpolated within the
	// histogram's buckets; HasLatency is false (and they zero) when no
	// request ended between the two scrapes.
	P50, P99   time.Duration
	HasLatency bool
	// chart is the requests per second between each two scrapes of the
	// last chartSpan, oldest first, chartAt when each ended; cpuChart the
	// CPU used meanwhile (seconds per second), memChart the memory held
	// at its end (bytes). Never changed in place once written, so that a
	// page may read them while the next scrape is added.
	chart, cpuChart, memChart []float64
	chartAt                   []time.Time
}

// history keeps the rates of the daemon's metrics, scraped over the last
// chartSpan: each scrape is compared with the one before as it comes, so
// that a page reads them without computing anything.
type history struct {
	mu    sync.Mutex
	last  *scrape
	rated map[instance]Rates
	// err is why the last scrape failed; nil after one that worked.
	err error
}

// note is what the services page shows for an instance without rates.
func (h *history) note() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return "no rates: " + h.err.Error()
	}
	return "measuring…"
}

// failed records a scrape that failed.
func (h *history) failed(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = err
}

// add parses one scrape in the text format and keeps it.
func (h *history) add(at time.Time, text []byte) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return fmt.Errorf("parse the daemon's metrics: %w", err)
	}
	sc := scrape{at: at, byVersion: map[string]counts{}}
	key := func(m *dto.Metric) (string, string) {
		var svc, env, ver, code string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "service":
				svc = l.GetValue()
			case "env":
				env = l.GetValue()
			case "version":
				ver = l.GetValue()
			case "code":
				code = l.GetValue()
			}
		}
		return svc + "/" + env + "/" + ver, code
	}
	if f := fams["hostel_http_requests_total"]; f != nil {
		for _, m := range f.GetMetric() {
			k, code := key(m)
			c := sc.byVersion[k]
			c.requests += m.GetCounter().GetValue()
			if code == "5xx" {
				c.errors += m.GetCounter().GetValue()
			}
			sc.byVersion[k] = c
		}
	}
	if f := fams["hostel_http_request_duration_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			k, _ := key(m)
			c := sc.byVersion[k]
			c.buckets = c.buckets[:0]
			bounds := sc.bounds[:0]
			for _, b := range m.GetHistogram().GetBucket() {
				bounds = append(bounds, b.GetUpperBound())
				c.buckets = append(c.buckets, float64(b.GetCumulativeCount()))
			}
			sc.bounds = bounds
			sc.byVersion[k] = c
		}
	}
	for name, set := range map[string]func(*counts, float64){
		"hostel_cpu_seconds_total": func(c *counts, v float64) { c.cpu += v },
		"hostel_memory_bytes":      func(c *counts, v float64) { c.memory += v },
	} {
		for _, m := range fams[name].GetMetric() {
			k, _ := key(m)
			c := sc.byVersion[k]
			set(&c, m.GetCounter().GetValue()+m.GetGauge().GetValue())
			sc.byVersion[k] = c
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = nil
	h.addLocked(sc)
	return nil
}

// addLocked rates sc against the scrape before it.
func (h *history) addLocked(sc scrape) {
	prev := h.last
	h.last = &sc
	if prev == nil {
		return
	}
	if h.rated == nil {
		h.rated = map[instance]Rates{}
	}
	secs := sc.at.Sub(prev.at).Seconds()
	deltas := between(*prev, sc)
	for in, r := range h.rated {
		if _, ok := deltas[in]; !ok {
			// No series any more (stopped, or not routed): no rate, and
			// the chart goes on at zero.
			r.Known, r.RPS, r.ErrorRate, r.HasLatency = false, 0, 0, false
			h.rated[in] = r.point(sc.at, 0, 0, 0)
		}
	}
	for in, d := range deltas {
		r := h.rated[in]
		rps := d.requests / secs
		r.Known, r.RPS, r.ErrorRate, r.HasLatency = true, rps, 0, false
		if d.requests > 0 {
			r.ErrorRate = d.errors / d.requests
		}
		if p50 := quantile(0.5, sc.bounds, d.buckets); !math.IsNaN(p50) {
			r.HasLatency = true
			r.P50 = time.Duration(p50 * float64(time.Second))
			r.P99 = time.Duration(quantile(0.99, sc.bounds, d.buckets) * float64(time.Second))
		}
		h.rated[in] = r.point(sc.at, rps, d.cpu/secs, d.memory)
	}
}

// point adds the charts' points at, and drops those older than chartSpan
// before it.
func (r Rates) point(at time.Time, rps, cpu, memory float64) Rates {
	r.chart, r.cpuChart, r.memChart = append(r.chart, rps), append(r.cpuChart, cpu), append(r.memChart, memory)
	r.chartAt = append(r.chartAt, at)
	i := 0
	for i < len(r.chartAt) && at.Sub(r.chartAt[i]) > chartSpan {
		i++
	}
	r.chart, r.cpuChart, r.memChart, r.chartAt = r.chart[i:], r.cpuChart[i:], r.memChart[i:], r.chartAt[i:]
	return r
}

// delta is what happened to each instance between two scrapes: its
// memory is what it holds at the second.
type delta struct {
	requests, errors, cpu, memory float64
	buckets                       []float64
}

func between(a, b scrape) map[instance]*delta {
	out := map[instance]*delta{}
	for k, cb := range b.byVersion {
		ca, ok := a.byVersion[k]
		if !ok {
			ca = counts{} // a version started between the scrapes
		}
		parts := strings.SplitN(k, "/", 3)
		in := instance{parts[0], parts[1]}
		d := out[in]
		if d == nil {
			d = &delta{buckets: make([]float64, len(b.bounds))}
			out[in] = d
		}
		d.requests += math.Max(0, cb.requests-ca.requests)
		d.errors += math.Max(0, cb.errors-ca.errors)
		d.cpu += math.Max(0, cb.cpu-ca.cpu)
		d.memory += cb.memory
		for i := range cb.buckets {
			if i < len(d.buckets) {
				var before float64
				if i < len(ca.buckets) {
					before = ca.buckets[i]
				}
				d.buckets[i] += math.Max(0, cb.buckets[i]-before)
			}
		}
	}
	return out
}

// quantile is q of a histogram's cumulative counts, interpolated within
// its bucket as Prometheus's histogram_quantile does.
func quantile(q float64, bounds, cum []float64) float64 {
	if len(cum) == 0 || cum[len(cum)-1] == 0 {
		return math.NaN()
	}
	rank := q * cum[len(cum)-1]
	i := sort.Search(len(cum), func(i int) bool { return cum[i] >= rank })
	if i >= len(bounds) {
		return bounds[len(bounds)-1]
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = bounds[i-1], cum[i-1]
	}
	in := cum[i] - below
	if in == 0 || math.IsInf(bounds[i], 1) {
		return lo
	}
	return lo + (bounds[i]-lo)*(rank-below)/in
}

// rates returns every instance's Rates, as of the last scrape.
func (h *history) rates() map[instance]Rates {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.rated)
}

// chartPoints is the most points a chart draws: a minute each over the
// hour, whatever the scrapes' interval.
const chartPoints = 60

// Chart is an inline SVG line of the requests per second over the last
// hour: markup in the page, nothing fetched.
func (r Rates) Chart() template.HTML {
	return spark(r.chart, "requests per second", func(v float64) string { return fmt.Sprintf("%.1f/s", v) })
}

// CPUChart is the CPU the service used over the last hour, as Chart.
func (r Rates) CPUChart() template.HTML {
	return spark(r.cpuChart, "CPU", func(v float64) string { return fmt.Sprintf("%.0f %%", 100*v) })
}

// MemoryChart is the memory the service held over the last hour, as
// Chart.
func (r Rates) MemoryChart() template.HTML {
	return spark(r.memChart, "memory", func(v float64) string { return fmt.Sprintf("%.0f MiB", v/(1<<20)) })
}

// spark draws pts as a small line, its label saying what and the top
// (top formats it).
func spark(pts []float64, what string, top func(float64) string) template.HTML {
	if len(pts) > chartPoints {
		// Each point the mean of its share of the scrapes.
		per := float64(len(pts)) / chartPoints
		down := make([]float64, chartPoints)
		for i := range down {
			part := pts[int(float64(i)*per):int(float64(i+1)*per)]
			for _, v := range part {
				down[i] += v / float64(len(part))
			}
		}
		pts = down
	}
	if len(pts) < 2 {
		return ""
	}
	most := slices.Max(pts)
	const w, hgt = 120.0, 24.0
	var line strings.Builder
	for i, v := range pts {
		y := hgt - 1
		if most > 0 {
			y = hgt - 1 - (hgt-2)*v/most
		}
		fmt.Fprintf(&line, "%.1f,%.1f ", w*float64(i)/float64(len(pts)-1), y)
	}
	return template.HTML(fmt.Sprintf(`<svg class="chart" width="%g" height="%g" viewBox="0 0 %g %g" role="img" aria-label="%s, last hour, up to %s"><polyline fill="none" stroke="#36c" stroke-width="1.5" points="%s"/></svg>`,
		w, hgt, w, hgt, template.HTMLEscapeString(what), template.HTMLEscapeString(top(most)), strings.TrimSpace(line.String())))
}

// Sample scrapes the daemon's metrics every interval until ctx ends; the
// services page shows the rates of the last two scrapes and charts the
// last hour's. A failed scrape is skipped: the page says the rates are
// not known, and why, rather than showing stale ones as fresh.
func (s *Server) Sample(ctx context.Context, every time.Duration) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.done, cancel)()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		var b bytes.Buffer
		err := s.daemon.Metrics(ctx, &b)
		if err == nil {
			err = s.history.add(time.Now(), b.Bytes())
		}
		if err != nil && ctx.Err() == nil {
			s.history.failed(fmt.Errorf("GET /metrics: %w", err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
