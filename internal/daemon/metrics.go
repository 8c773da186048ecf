package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"time"

	"github.com/prometheus/client_golang/prometheus"

	"hostel/internal/accesslog"
	"hostel/internal/api"
	"hostel/internal/front"
	"hostel/internal/metrics"
	"hostel/internal/router"
	"hostel/internal/spec"
)

// This file wires the daemon's Prometheus metrics (internal/metrics):
// the router's per-version request series, the daemon's own, and where
// they are served — GET /metrics on the API socket and, with
// serve --metrics ADDR, a plain HTTP listener for a scraper.

// newMetrics makes the daemon's registry, before the router that counts
// into it. In a cluster every series carries the node's name.
func (d *Daemon) newMetrics() {
	node := ""
	if d.opts.Store.etcd() {
		node = d.nodeName()
	}
	d.metrics = metrics.New(node)
	d.access = accesslog.New(d.opts.Root, 0)
	d.metrics.MustRegister(stateCollector{d})
	d.metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "hostel_access_log_dropped_total",
		Help: "Access log lines that could not be written: their queue was full (a slow disk) or the write failed (a full disk).",
	}, func() float64 { return float64(d.access.Dropped()) }))
	d.metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hostel_router_connections",
		Help: "Client connections open on the public listeners.",
	}, func() float64 {
		if d.front == nil {
			return 0
		}
		return float64(d.front.OpenConnections())
	}))
}

// stateCollector reads, when scraped, what the daemon's parts know: each
// instance's restarts, OOM kills, memory and CPU (the supervisor, from
// its cgroup) and each certificate's expiry (the certificate manager,
// whose hosts are the spec's own domains).
type stateCollector struct{ d *Daemon }

var (
	restartsDesc = prometheus.NewDesc("hostel_restarts_total",
		"Restarts of a version's process after it crashed.", metrics.VersionLabels, nil)
	oomDesc = prometheus.NewDesc("hostel_oom_kills_total",
		"Processes of a version the kernel killed for exceeding its memory limit (its cgroup's count).", metrics.VersionLabels, nil)
	memoryDesc = prometheus.NewDesc("hostel_memory_bytes",
		"Memory charged to a version's cgroup now, page cache included.", metrics.VersionLabels, nil)
	cpuDesc = prometheus.NewDesc("hostel_cpu_seconds_total",
		"CPU time a version's processes used since the version started (its cgroup's).", metrics.VersionLabels, nil)
	certDesc = prometheus.NewDesc("hostel_certificate_expiry_timestamp_seconds",
		"When the certificate served for a domain of the spec expires (Unix time).", []string{"domain"}, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{restartsDesc, oomDesc, memoryDesc, cpuDesc, certDesc} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	cgroups := c.d.cgroups != nil
	for _, st := range c.d.sup.List() {
		lv := metrics.LabelValues(st.Key)
		ch <- prometheus.MustNewConstMetric(restartsDesc, prometheus.CounterValue, float64(st.Restarts), lv...)
		if cgroups {
			ch <- prometheus.MustNewConstMetric(oomDesc, prometheus.CounterValue, float64(st.OOMKills), lv...)
			ch <- prometheus.MustNewConstMetric(memoryDesc, prometheus.GaugeValue, float64(st.MemoryBytes), lv...)
			ch <- prometheus.MustNewConstMetric(cpuDesc, prometheus.CounterValue, st.CPUSeconds, lv...)
		}
	}
	if c.d.certs == nil {
		return
	}
	for _, cs := range c.d.certs.Status() {
		if !cs.NotAfter.IsZero() {
			ch <- prometheus.MustNewConstMetric(certDesc, prometheus.GaugeValue, float64(cs.NotAfter.Unix()), cs.Host)
		}
	}
}

// meteredDaemon is the daemon as the API serves it, with its deploys
// and rollbacks counted and timed.
type meteredDaemon struct{ *Daemon }

func (m meteredDaemon) Deploy(ctx context.Context, req api.DeployRequest, progress func(string)) (*api.DeployResult, error) {
	start := time.Now()
	res, err := m.Daemon.Deploy(ctx, req, progress)
	m.metrics.Deployed("deploy", deployOutcome(res, err), time.Since(start))
	return res, err
}

func (m meteredDaemon) Rollback(ctx context.Context, req api.RollbackRequest, progress func(string)) (*api.DeployResult, error) {
	start := time.Now()
	res, err := m.Daemon.Rollback(ctx, req, progress)
	m.metrics.Deployed("rollback", deployOutcome(res, err), time.Since(start))
	return res, err
}

// deployOutcome is the result label of a deploy that returned res, err.
func deployOutcome(res *api.DeployResult, err error) string {
	switch {
	case err != nil || res == nil || res.Error != "":
		return "failed"
	case res.RolledBack:
		return "rolled_back"
	}
	return "ok"
}

// RequestHook is the router's hook of a daemon: each request counted
// into m and written to a (what bench/router measures the cost of).
func RequestHook(m *metrics.Registry, a *accesslog.Log) router.RequestHook {
	return requestHook{m, a}
}

// requestHook is the router's RequestHook: each request counted into the
// metrics and written to the access log.
type requestHook struct {
	metrics *metrics.Registry
	access  *accesslog.Log
}

func (h requestHook) Version(key spec.VersionKey) router.VersionHook {
	return versionHook{h.metrics.Series(key), h.access.Version(key)}
}

func (h requestHook) Removed(key spec.VersionKey) { h.metrics.Removed(key) }

func (h requestHook) Answered(a router.Answer) { h.metrics.Answered(a) }

type versionHook struct {
	metrics *metrics.Version
	access  *accesslog.Writer
}

func (v versionHook) Started() { v.metrics.Started() }

func (v versionHook) Ended(d time.Duration, o *front.Outcome) {
	v.metrics.Ended(d, o)
	v.access.Log(d, o)
}

func (v versionHook) Refused(d time.Duration, o *front.Outcome) {
	v.metrics.Refused(d, o)
	v.access.Log(d, o)
}

// closeAccessLog writes what the access log has queued, once the router
// is closed.
func (d *Daemon) closeAccessLog() {
	if d.access != nil {
		d.access.Close()
	}
}

// withMetrics serves GET /metrics from this node's registry in front of
// h (the API): metrics are each node's own, never passed to the leader.
func (d *Daemon) withMetrics(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.Handler())
	mux.Handle("/", h)
	return mux
}

// listenMetrics, with --metrics, binds the scraper's listener, served by
// serveMetrics once the daemon is up.
func (d *Daemon) listenMetrics() error {
	if d.opts.MetricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", d.opts.MetricsAddr)
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	d.metricsLn = ln
	return nil
}

func (d *Daemon) serveMetrics() {
	if d.metricsLn == nil {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.Handler())
	d.serve(d.metricsLn, mux)
}

// MetricsAddr returns the bound address of --metrics; "" without.
func (d *Daemon) MetricsAddr() string {
	if d.metricsLn == nil {
		return ""
	}
	return d.metricsLn.Addr().String()
}
