package daemon

import (
	"fmt"
	"net"
	"net/http"

	"time"

	"github.com/prometheus/client_golang/prometheus"

	"hostel/internal/accesslog"
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

// requestHook is the router's RequestHook: each request counted into the
// metrics and written to the access log.
type requestHook struct {
	metrics *metrics.Registry
	access  *accesslog.Log
}

func (h requestHook) Version(key spec.VersionKey) router.VersionHook {
	return versionHook{h.metrics.Series(key), h.access.Version(key)}
}

type versionHook struct {
	metrics *metrics.Version
	access  *accesslog.Writer
}

func (v versionHook) Started() { v.metrics.Started() }

func (v versionHook) Ended(d time.Duration, o *front.Outcome) {
	v.metrics.Ended(d, o)
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
