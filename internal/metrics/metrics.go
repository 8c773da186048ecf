// Package metrics is hostel's Prometheus metrics: the per-version request
// series the router's hook counts into (router.RequestHook), and the
// registry the daemon adds its other series to, served in Prometheus's
// text format (docs/metrics.md lists them).
//
// The request path resolves nothing: each backend gets its version's
// counters once, as it is made (Version), and a request only adds to them.
// Labels are the spec's names (service, environment, version): never the
// client's Host header, so that what clients send cannot grow the series.
package metrics

import (
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"hostel/internal/front"
	"hostel/internal/router"
	"hostel/internal/spec"
)

// VersionLabels are the labels of every per-version series, in order.
var VersionLabels = []string{"service", "env", "version"}

// LabelValues returns key's values of VersionLabels.
func LabelValues(key spec.VersionKey) []string {
	v := string(key.Version())
	hash := v
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		hash = v[i+1:]
	}
	return []string{key.Service(), key.Owner(), hash}
}

// classes are the values of the code label, by status/100; index 0 is a
// request that got no response ("none": the client left first).
var classes = [...]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// Registry holds hostel's series. The zero value is not usable; call New.
type Registry struct {
	reg *prometheus.Registry
	// node labels every series in a cluster; "" on one machine.
	node string

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight *prometheus.GaugeVec
	bytes    *prometheus.CounterVec

	// answers are the router's own answers, by router.Answer.
	answers [router.NumAnswers]prometheus.Counter

	wakes      *prometheus.CounterVec
	wakeTime   *prometheus.HistogramVec
	deploys    *prometheus.CounterVec
	deployTime *prometheus.HistogramVec

	mu       sync.Mutex
	versions map[spec.VersionKey]*Version
}

var _ router.RequestHook = (*Registry)(nil)

// New returns a registry with the request series and the Go runtime's
// and the process's own. node, if not "", labels every series (node=…):
// the node's name in a cluster, whose nodes are scraped one by one.
func New(node string) *Registry {
	r := &Registry{reg: prometheus.NewRegistry(), node: node, versions: map[spec.VersionKey]*Version{}}
	r.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostel_http_requests_total",
		Help: "Requests forwarded to a version, by status class (code=\"none\": no response was sent).",
	}, append(VersionLabels[:3:3], "code"))
	r.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hostel_http_request_duration_seconds",
		Help:    "Time from a request's slot taken to given back: the app's answer, written to the client.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, VersionLabels)
	r.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "hostel_http_requests_in_flight",
		Help: "Requests forwarded to a version and not answered yet.",
	}, VersionLabels)
	r.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostel_http_response_bytes_total",
		Help: "Bytes of response bodies written to clients.",
	}, VersionLabels)
	r.wakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostel_wakes_total",
		Help: "Versions woken from sleep by a request, by result (ok, failed).",
	}, append(VersionLabels[:3:3], "result"))
	r.wakeTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hostel_wake_duration_seconds",
		Help:    "Time from a sleeping version's first request to the version ready to serve it.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, VersionLabels)
	r.deploys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostel_deploys_total",
		Help: "Deploys and rollbacks (op) this node carried out, by result (ok, rolled_back, failed).",
	}, []string{"op", "result"})
	r.deployTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hostel_deploy_duration_seconds",
		Help:    "Time a deploy or rollback took, from the request to its end (the confirm window included).",
		Buckets: []float64{.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
	}, []string{"op", "result"})
	answers := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostel_router_answers_total",
		Help: "Requests the router answered itself, with no version to forward them to, by answer: redirect, https_redirect, unknown_host, not_running.",
	}, []string{"answer"})
	for a := range router.NumAnswers {
		r.answers[a] = answers.WithLabelValues(a.String())
	}
	r.MustRegister(r.requests, r.duration, r.inflight, r.bytes, answers, r.wakes, r.wakeTime, r.deploys, r.deployTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// MustRegister adds collectors, labelled with the node if any. It panics
// on a name registered twice: a programming error.
func (r *Registry) MustRegister(cs ...prometheus.Collector) {
	var reg prometheus.Registerer = r.reg
	if r.node != "" {
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"node": r.node}, reg)
	}
	reg.MustRegister(cs...)
}

// Handler serves the registry in Prometheus's text format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Answered counts an answer of the router's own (router.RequestHook).
func (r *Registry) Answered(a router.Answer) {
	if a >= 0 && a < router.NumAnswers {
		r.answers[a].Inc()
	}
}

// Woke counts a wake of key that took d and failed with err (nil: it
// went through).
func (r *Registry) Woke(key spec.VersionKey, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	lv := LabelValues(key)
	r.wakes.WithLabelValues(append(lv, result)...).Inc()
	if err == nil {
		r.wakeTime.WithLabelValues(lv...).Observe(d.Seconds())
	}
}

// Deployed counts a deploy or rollback (op) that ended with result after d.
func (r *Registry) Deployed(op, result string, d time.Duration) {
	r.deploys.WithLabelValues(op, result).Inc()
	r.deployTime.WithLabelValues(op, result).Observe(d.Seconds())
}

// Version returns key's request series (router.RequestHook).
func (r *Registry) Version(key spec.VersionKey) router.VersionHook { return r.Series(key) }

// Series returns key's request series, made on the first call for key
// and the same after.
func (r *Registry) Series(key spec.VersionKey) *Version {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.versions[key]; ok {
		return v
	}
	lv := LabelValues(key)
	v := &Version{
		duration: r.duration.WithLabelValues(lv...),
		inflight: r.inflight.WithLabelValues(lv...),
		bytes:    r.bytes.WithLabelValues(lv...),
	}
	for i, c := range classes {
		v.codes[i] = r.requests.WithLabelValues(append(lv[:3:3], c)...)
	}
	r.versions[key] = v
	return v
}

// Removed drops key's request series (router.RequestHook): its version
// is no longer served here, and the series of every version ever
// deployed would otherwise stay until the daemon restarts. Requests
// still in flight to it end on series no longer scraped; if key is
// served again, its series start again from zero (a counter reset,
// which Prometheus's rate() allows for).
func (r *Registry) Removed(key spec.VersionKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.versions[key]; !ok {
		return
	}
	delete(r.versions, key)
	lv := LabelValues(key)
	r.duration.DeleteLabelValues(lv...)
	r.inflight.DeleteLabelValues(lv...)
	r.bytes.DeleteLabelValues(lv...)
	for _, c := range classes {
		r.requests.DeleteLabelValues(append(lv[:3:3], c)...)
	}
}

// Version is one version's request series, resolved once.
type Version struct {
	codes    [len(classes)]prometheus.Counter
	duration prometheus.Observer
	inflight prometheus.Gauge
	bytes    prometheus.Counter
}

// Started counts a request in flight.
func (v *Version) Started() { v.inflight.Inc() }

// Ended counts a request's end: its status class, duration and bytes.
func (v *Version) Ended(d time.Duration, o *front.Outcome) {
	v.inflight.Dec()
	v.count(d, o)
}

// Refused counts a held request answered without reaching the version,
// as Ended does (it was never in flight).
func (v *Version) Refused(d time.Duration, o *front.Outcome) { v.count(d, o) }

func (v *Version) count(d time.Duration, o *front.Outcome) {
	class := o.Status / 100
	if class < 0 || class >= len(classes) {
		class = 0
	}
	v.codes[class].Inc()
	v.duration.Observe(d.Seconds())
	if o.Bytes > 0 {
		v.bytes.Add(float64(o.Bytes))
	}
}
