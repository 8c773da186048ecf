package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
	"hostel/internal/spec"
)

// countingHook counts the requests RequestHook is told of, per key, and
// keeps the outcome of the last one to end.
type countingHook struct {
	mu             sync.Mutex
	started, ended map[spec.VersionKey]int
	last           map[spec.VersionKey]front.Outcome
	removed        []spec.VersionKey
	refused        map[spec.VersionKey][]front.Outcome
	answers        [NumAnswers]int
}

func newCountingHook() *countingHook {
	return &countingHook{started: map[spec.VersionKey]int{}, ended: map[spec.VersionKey]int{},
		last: map[spec.VersionKey]front.Outcome{}, refused: map[spec.VersionKey][]front.Outcome{}}
}

func (h *countingHook) Version(key spec.VersionKey) VersionHook { return versionCounter{h, key} }

func (h *countingHook) Removed(key spec.VersionKey) {
	h.mu.Lock()
	h.removed = append(h.removed, key)
	h.mu.Unlock()
}

func (h *countingHook) Answered(a Answer) {
	h.mu.Lock()
	h.answers[a]++
	h.mu.Unlock()
}

type versionCounter struct {
	h   *countingHook
	key spec.VersionKey
}

func (v versionCounter) Started() {
	v.h.mu.Lock()
	v.h.started[v.key]++
	v.h.mu.Unlock()
}

func (v versionCounter) Refused(d time.Duration, o *front.Outcome) {
	v.h.mu.Lock()
	v.h.refused[v.key] = append(v.h.refused[v.key], *o)
	v.h.mu.Unlock()
}

func (v versionCounter) Ended(d time.Duration, o *front.Outcome) {
	v.h.mu.Lock()
	v.h.ended[v.key]++
	v.h.last[v.key] = *o
	v.h.mu.Unlock()
}

func (h *countingHook) counts(key spec.VersionKey) (started, ended int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.started[key], h.ended[key]
}

func (h *countingHook) lastOutcome(key spec.VersionKey) front.Outcome {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last[key]
}

// TestEveryPathReleasesItsSlot drives every kind of request and response
// through the front end (event loops or goroutines, as -front-loops says),
// and checks after each that the backend's in-flight count is back to
// zero, that the hook saw as many ends as starts, and that the last
// request time moved: no exit of any path misses the release.
func TestEveryPathReleasesItsSlot(t *testing.T) {
	entered := make(chan struct{}, 1)
	large := strings.Repeat("l", 200<<10)
	app := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/quick":
			io.WriteString(w, "quick")
		case "/large":
			io.WriteString(w, large)
		case "/chunked":
			w.(http.Flusher).Flush()
			io.WriteString(w, "chunked")
		case "/streamed":
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 3 {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
			}
		case "/early":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "early")
		case "/upgrade":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
			line, _ := brw.ReadString('\n')
			io.WriteString(c, line)
		case "/hangup":
			entered <- struct{}{}
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		case "/poisoned":
			c, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisonedHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
		case "/upload":
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%d bytes", len(b))
		}
	}))
	hook := newCountingHook()
	r := New(Options{Zone: zone, Logf: t.Logf, Requests: hook})
	t.Cleanup(func() { r.Close() })
	r.AddBackend(apiV1, app)
	r.AddBackend(apiV2, "127.0.0.1:1") // refuses connections
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV1, "down.example.org": apiV2}})
	_, pub := fronttest.Serve(t, r, front.Options{})

	type kind struct {
		name, raw string
		key       spec.VersionKey
		// status and bytes are the outcome the hook must be told (the
		// final status, the body's bytes); bytes -1: not checked.
		status int
		bytes  int64
		// talk, if set, goes on with the connection after the request
		// is sent; else the response is read whole.
		talk func(t *testing.T, c net.Conn, br *bufio.Reader)
	}
	get := func(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n" }
	kinds := []kind{
		{name: "quick", raw: get("/quick"), key: apiV1, status: 200, bytes: 5},
		{name: "large", raw: get("/large"), key: apiV1, status: 200, bytes: int64(len(large))},
		{name: "chunked", raw: get("/chunked"), key: apiV1, status: 200, bytes: 7},
		{name: "streamed", raw: get("/streamed"), key: apiV1, status: 200, bytes: 27},
		{name: "1xx", raw: get("/early"), key: apiV1, status: 200, bytes: 5},
		{name: "HTTP/1.0", raw: "GET /quick HTTP/1.0\r\nHost: " + host + "\r\n\r\n", key: apiV1, status: 200, bytes: 5},
		{name: "upload", raw: "POST /upload HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 5\r\n\r\nhello", key: apiV1, status: 200, bytes: 7},
		{name: "app refused", raw: "GET /x HTTP/1.1\r\nHost: down.example.org\r\n\r\n", key: apiV2, status: 502, bytes: -1},
		{name: "app refused, HTTP/1.0", raw: "GET /x HTTP/1.0\r\nHost: down.example.org\r\n\r\n", key: apiV2, status: 502, bytes: -1},
		{name: "app poisoned", raw: get("/poisoned"), key: apiV1, status: 200, bytes: 8},
		{name: "upgrade", raw: "GET /upgrade HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n", key: apiV1, status: 101, bytes: -1,
			talk: func(t *testing.T, c net.Conn, br *bufio.Reader) {
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("upgrade: %v %v", resp, err)
				}
				io.WriteString(c, "ping\n")
				if line, _ := br.ReadString('\n'); line != "ping\n" {
					t.Fatalf("upgraded connection echoed %q", line)
				}
			}},
		{name: "client hang-up", raw: get("/hangup"), key: apiV1, status: 0, bytes: 0,
			talk: func(t *testing.T, c net.Conn, _ *bufio.Reader) {
				<-entered
				c.Close()
			}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			started, _ := hook.counts(k.key)
			before := time.Now()
			c, br := fronttest.RawConn(t, "http://"+pub)
			io.WriteString(c, k.raw)
			if k.talk != nil {
				k.talk(t, c, br)
			} else {
				resp, err := http.ReadResponse(br, nil)
				for err == nil && resp.StatusCode < 200 {
					resp, err = http.ReadResponse(br, nil)
				}
				if err != nil {
					t.Fatalf("reading response: %v", err)
				}
				io.Copy(io.Discard, resp.Body)
			}
			c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := r.WaitIdle(ctx, k.key); err != nil {
				t.Fatalf("in flight to %s: %d, want 0 (%v)", k.key, r.InFlight(k.key), err)
			}
			fronttest.WaitFor(t, "the hook to see the end", func() bool {
				s, e := hook.counts(k.key)
				return s == e && s > started
			})
			o := hook.lastOutcome(k.key)
			if o.Status != k.status || k.bytes >= 0 && o.Bytes != k.bytes {
				t.Errorf("outcome: status %d, %d bytes; want %d, %d", o.Status, o.Bytes, k.status, k.bytes)
			}
			if o.Method == "" || o.Host == "" || o.Target == "" {
				t.Errorf("outcome without its request: %+v", o)
			}
			if last := r.LastRequest(k.key); last.Before(before.Add(-time.Second)) {
				t.Errorf("LastRequest = %v, want after %v", last, before)
			}
		})
	}
	var n atomic.Int64
	for _, key := range []spec.VersionKey{apiV1, apiV2} {
		s, e := hook.counts(key)
		n.Add(int64(s))
		if s != e {
			t.Errorf("%s: %d started, %d ended", key, s, e)
		}
	}
	if n.Load() < int64(len(kinds)) {
		t.Errorf("hook saw %d requests, want at least %d", n.Load(), len(kinds))
	}
	r.RemoveBackend(apiV2)
	r.RemoveBackend(apiV2) // not registered any more: nothing to tell
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if len(hook.removed) != 1 || hook.removed[0] != apiV2 {
		t.Errorf("hook told of removals %v, want [%s]", hook.removed, apiV2)
	}
}

// TestRefusedHeldRequestIsTold: a request held on a paused version past
// the pause's bound gets 503 without reaching it; the hook is told of it
// as refused (status, held), never as started.
func TestRefusedHeldRequestIsTold(t *testing.T) {
	app := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the paused app was reached: %s", r.URL)
	}))
	hook := newCountingHook()
	r, pub := startRouter(t, Options{Requests: hook})
	r.AddBackend(apiV1, app)
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV1},
		Paused: map[string]time.Duration{apiV1.Service(): 50 * time.Millisecond}})
	req, _ := http.NewRequest("GET", pub+"/x?y=1", nil)
	req.Host = host
	resp, _ := fronttest.Send(t, fronttest.Client, req)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("held past the pause's bound: %d, want 503", resp.StatusCode)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	got := hook.refused[apiV1]
	if len(got) != 1 || got[0].Status != http.StatusServiceUnavailable || !got[0].Held ||
		got[0].Method != "GET" || got[0].Target != "/x?y=1" || got[0].Bytes == 0 {
		t.Errorf("refused: %+v, want one held GET /x?y=1 answered 503", got)
	}
	if hook.started[apiV1] != 0 || hook.ended[apiV1] != 0 {
		t.Errorf("a refused request was started %d, ended %d times", hook.started[apiV1], hook.ended[apiV1])
	}
}

// TestAnswersAreTold: what the router answers itself — a redirect, a
// redirect to HTTPS, an unknown host, a domain whose version runs
// nowhere — is told to the hook, once each, as its kind of answer; a
// request forwarded to a version is not.
func TestAnswersAreTold(t *testing.T) {
	hook := newCountingHook()
	certs := &certSet{}
	certs.add("shop.example")
	r, pub := startRouter(t, Options{Requests: hook, Certs: certs, HTTPSPort: "8443"})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	mustSwap(t, r, Table{
		Domains:   map[string]spec.VersionKey{"shop.example": apiV1, "plain.example": apiV1, "down.example": apiV2},
		Redirects: map[string]string{"www.plain.example": "plain.example"},
		TLS:       map[string]TLS{"shop.example": {HTTPS: true}},
	})
	for _, c := range []struct {
		host   string
		status int
	}{
		{"plain.example", 200},
		{"www.plain.example", 301},
		{"shop.example", 301},
		{"nothing.example", 404},
		{"other.nothing.example", 404},
		{"down.example", 503},
	} {
		if status, _, _ := fronttest.Get(t, pub+"/", c.host); status != c.status {
			t.Fatalf("GET %s/: %d, want %d", c.host, status, c.status)
		}
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	want := [NumAnswers]int{AnswerRedirect: 1, AnswerHTTPS: 1, AnswerUnknownHost: 2, AnswerNotRunning: 1}
	if hook.answers != want {
		t.Errorf("answers told %v, want %v", hook.answers, want)
	}
}
