package daemon

import (
	"fmt"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"hostel/internal/metrics"
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
