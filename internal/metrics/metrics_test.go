package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/router"
	"hostel/internal/spec"
)

var key = spec.InstanceKey("api", "0123456789ab", "pr-7")

// TestVersionCounts: a request's end lands in its status class, with its
// bytes and duration, under the version's labels.
func TestVersionCounts(t *testing.T) {
	r := New("n1")
	v := r.Version(key)
	for _, o := range []front.Outcome{{Status: 200, Bytes: 10}, {Status: 201, Bytes: 5}, {Status: 503}, {Status: 0}, {Status: 999}} {
		v.Started()
		v.Ended(time.Millisecond, &o)
	}
	if r.Version(key) != v {
		t.Error("a second Version(key) made new series")
	}
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	text, _ := io.ReadAll(rec.Body)
	labels := `env="pr-7",node="n1",service="api",version="0123456789ab"`
	for _, want := range []string{
		`hostel_http_requests_total{code="2xx",` + labels + `} 2`,
		`hostel_http_requests_total{code="5xx",` + labels + `} 1`,
		`hostel_http_requests_total{code="none",` + labels + `} 2`,
		`hostel_http_response_bytes_total{` + labels + `} 15`,
		`hostel_http_request_duration_seconds_count{` + labels + `} 5`,
		`hostel_http_requests_in_flight{` + labels + `} 0`,
	} {
		if !strings.Contains(string(text), want+"\n") {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

// TestAnswersCounted: the router's own answers count by kind, each kind
// there from the start (at 0).
func TestAnswersCounted(t *testing.T) {
	r := New("")
	r.Answered(router.AnswerUnknownHost)
	r.Answered(router.AnswerUnknownHost)
	r.Answered(router.AnswerRedirect)
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	text, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`hostel_router_answers_total{answer="unknown_host"} 2`,
		`hostel_router_answers_total{answer="redirect"} 1`,
		`hostel_router_answers_total{answer="https_redirect"} 0`,
		`hostel_router_answers_total{answer="not_running"} 0`,
	} {
		if !strings.Contains(string(text), want+"\n") {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

// BenchmarkVersionHook is what the metrics add to a request: Started and
// Ended on its version's series.
func BenchmarkVersionHook(b *testing.B) {
	v := New("").Version(key)
	o := &front.Outcome{Status: 200, Bytes: 1234, Method: "GET", Host: "api.example", Target: "/"}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			v.Started()
			v.Ended(300*time.Microsecond, o)
		}
	})
}

// TestRemovedDropsSeries: a version removed from the router leaves no
// series behind; served again, it starts from zero.
func TestRemovedDropsSeries(t *testing.T) {
	r := New("")
	v := r.Version(key)
	v.Started()
	v.Ended(time.Millisecond, &front.Outcome{Status: 200})
	r.Removed(key)
	scrape := func() string {
		rec := httptest.NewRecorder()
		r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	if text := scrape(); strings.Contains(text, `version="0123456789ab"`) {
		t.Errorf("series of a removed version are still scraped:\n%s", text)
	}
	r.Version(key).Started()
	if text := scrape(); !strings.Contains(text, `hostel_http_requests_total{code="2xx",env="pr-7",service="api",version="0123456789ab"} 0`) {
		t.Errorf("a version served again does not start from zero:\n%s", text)
	}
}
