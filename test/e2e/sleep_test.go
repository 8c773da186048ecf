package e2e

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// sleepStatus is what status --json says of a version's scale to zero.
type sleepStatus struct {
	Name, Version, State, Error string
	PID                         int
	Wakes                       int
	LastRequest                 *time.Time `json:"last_request"`
	LastWakeSeconds             float64    `json:"last_wake_seconds"`
}

func (e *Env) sleepStatus() map[string]sleepStatus {
	e.t.Helper()
	var st struct{ Services []sleepStatus }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]sleepStatus{}
	for _, s := range st.Services {
		out[s.Name] = s
	}
	return out
}

// waitState waits until every named service shows state, up to limit.
func (e *Env) waitState(limit time.Duration, state string, names ...string) map[string]sleepStatus {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st := e.sleepStatus()
		all := true
		for _, n := range names {
			all = all && st[n].State == state
		}
		if all {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("after %s, want %v %s: %+v", limit, names, state, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestIdleSleepsAndWakes: services with idle, health-checked and left
// without requests, are stopped; their routes stay; the first request to
// the dependent wakes the service it needs (reached through QUOTES_URL)
// and then it, each once, and is answered as if they had been running.
// After a daemon restart they run again, and sleep again.
func TestIdleSleepsAndWakes(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	health := map[string]any{"path": "/healthz"}
	e.WriteSpec(map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"idle": "1s", "health": health}),
		"blog":   e.App("blog", map[string]any{"idle": "1s", "health": health, "needs": []string{"quotes"}, "domains": []string{"blog.test"}}),
		"shop":   e.App("shop", map[string]any{"domains": []string{"shop.test"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	before := e.sleepStatus()
	st := e.waitState(20*time.Second, "idle", "blog", "quotes")
	for _, n := range []string{"blog", "quotes"} {
		if pid := before[n].PID; pid == 0 || pidAlive(pid) {
			t.Errorf("%s asleep: its process %d still runs (or had none)", n, pid)
		}
		if st[n].PID != 0 || st[n].LastRequest == nil {
			t.Errorf("%s asleep: status %+v, want no pid and a last request time", n, st[n])
		}
	}
	if s := st["shop"]; s.State != "running" {
		t.Errorf("shop, without idle: %+v, want running", s)
	}

	code, _, body := e.Get("blog.test", "/")
	if code != 200 || !strings.Contains(body, "Quote of the day") {
		t.Fatalf("first request to the sleeping blog: %d %q", code, body)
	}
	st = e.sleepStatus()
	for _, n := range []string{"blog", "quotes"} {
		if s := st[n]; s.State != "running" || s.Wakes != 1 || s.PID == 0 || s.LastWakeSeconds <= 0 {
			t.Errorf("%s after one request: %+v, want running, woken once", n, s)
		}
	}
	// The wakes are counted and timed; the request that woke blog is
	// held in its access log.
	text := e.scrape("")
	for _, n := range []string{"blog", "quotes"} {
		if !hasSample(text, `hostel_wakes_total\{env="production",result="ok",service="`+n+`",version="[0-9a-f]+"\} 1`) ||
			!hasSample(text, `hostel_wake_duration_seconds_count\{env="production",service="`+n+`",version="[0-9a-f]+"\} 1`) {
			t.Errorf("%s: no wake counted in the metrics", n)
		}
	}
	if out := e.MustRun("logs", "blog", "--access"); !strings.Contains(out, `"held":true`) {
		t.Errorf("blog's access log does not show its first request held:\n%s", out)
	}
	log := e.DaemonLog()
	if !strings.Contains(log, "asleep: no request for 1s") {
		t.Errorf("the daemon's log does not say a version went to sleep")
	}
	// Dependencies first: blog's process is started again only once
	// quotes, which it needs, is awake.
	quotesAwake := regexp.MustCompile(`quotes-[0-9a-f]+: awake on`).FindStringIndex(log)
	blogStarts := regexp.MustCompile(`supervisor: blog-[0-9a-f]+: started pid`).FindAllStringIndex(log, -1)
	switch {
	case quotesAwake == nil || len(blogStarts) < 2:
		t.Errorf("the daemon's log does not show quotes woken and blog started again:\n%s", log)
	case blogStarts[len(blogStarts)-1][0] < quotesAwake[0]:
		t.Errorf("blog was started again before quotes, which it needs, was awake:\n%s", log)
	}

	// What sleeps at a restart of the daemon sleeps on after it, and
	// wakes on a request.
	e.waitState(20*time.Second, "idle", "blog", "quotes")
	e.StopDaemon()
	e.StartDaemon()
	e.waitState(20*time.Second, "idle", "blog", "quotes")
	if code, _, body := e.Get("blog.test", "/"); code != 200 || !strings.Contains(body, "Quote of the day") {
		t.Fatalf("after a daemon restart: %d %q", code, body)
	}

	// hostel restart of a sleeping service starts it afresh (a wake).
	e.waitState(20*time.Second, "idle", "quotes")
	if out := e.MustRun("restart", "quotes"); !strings.Contains(out, "restarted quotes") {
		t.Errorf("restart of the sleeping quotes: %q", out)
	}
	if s := e.sleepStatus()["quotes"]; s.State != "running" || s.PID == 0 || !pidAlive(s.PID) {
		t.Errorf("quotes after hostel restart while asleep: %+v, want running with a process", s)
	}
}

// TestPauseResumeCLI: hostel pause holds a service's requests until
// hostel resume; past --max a held request gets 503 with Retry-After; a
// bad service or bound is an input error.
func TestPauseResumeCLI(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(map[string]any{"services": map[string]any{
		"shop": e.App("shop", map[string]any{"domains": []string{"shop.test"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	e.MustRun("pause", "shop", "--max", "1h")
	answered := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+e.HTTP+"/", nil)
		req.Host = "shop.test"
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			answered <- -1
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	select {
	case code := <-answered:
		t.Fatalf("answered %d while paused", code)
	case <-time.After(300 * time.Millisecond):
	}
	if s := e.sleepStatus()["shop"]; s.State != "held" {
		t.Errorf("paused: state %q, want held", s.State)
	}
	e.MustRun("resume", "shop")
	if code := <-answered; code != 200 {
		t.Errorf("after resume: %d, want 200", code)
	}
	if s := e.sleepStatus()["shop"]; s.State != "running" {
		t.Errorf("resumed: state %q, want running", s.State)
	}

	e.MustRun("pause", "shop", "--max", "100ms")
	if code, h, _ := e.Get("shop.test", "/"); code != 503 || h.Get("Retry-After") == "" {
		t.Errorf("held past --max: %d Retry-After %q, want 503 with Retry-After", code, h.Get("Retry-After"))
	}
	// Both requests are in the access log, held: the one released by
	// resume, answered by the app, and the one refused past --max.
	eventually(t, 10*time.Second, "the held requests in the access log", func() bool {
		out, _, _ := e.Run("logs", "shop", "--access")
		return strings.Count(out, `"held":true`) == 2 && strings.Contains(out, `"status":200`) && strings.Contains(out, `"status":503`)
	})
	if !hasSample(e.scrape(""), `hostel_http_requests_total\{code="5xx",env="production",service="shop",version="[0-9a-f]+"\} 1`) {
		t.Errorf("the request refused past --max is not counted as 5xx")
	}
	e.MustRun("resume", "shop")
	for _, args := range [][]string{{"pause", "nope"}, {"pause", "shop", "--max", "-1s"}, {"resume", "nope"}} {
		if _, errOut, code := e.Run(args...); code != 2 {
			t.Errorf("hostel %v: exit %d (%s), want 2", args, code, errOut)
		}
	}
}

// TestDeployTouchesSleepingService: a deploy that changes a sleeping
// service starts its new version — checked, routed — which sleeps again
// after idle, and removes the old one; a deploy that keeps a sleeping
// version leaves it asleep.
func TestDeployTouchesSleepingService(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	spec := func(greeting string) map[string]any {
		return map[string]any{"services": map[string]any{
			"quotes": e.App("quotes", map[string]any{"idle": "1s", "env": map[string]string{"GREETING": greeting}, "domains": []string{"quotes.test"}}),
			"shop":   e.App("shop", map[string]any{"idle": "1s", "domains": []string{"shop.test"}}),
		}}
	}
	e.WriteSpec(spec("Hello"))
	e.MustRun("deploy", "--no-confirm")
	old := e.waitState(20*time.Second, "idle", "quotes", "shop")

	e.WriteSpec(spec("Bonjour"))
	e.MustRun("deploy", "--confirm", "2s")
	st := e.sleepStatus()
	if s := st["quotes"]; s.Version == old["quotes"].Version || s.State != "running" || s.PID == 0 {
		t.Errorf("quotes after a deploy that changed it: %+v, want its new version running", s)
	}
	if s := st["shop"]; s.Version != old["shop"].Version || s.State != "idle" || s.Wakes != 0 {
		t.Errorf("shop, kept by the deploy: %+v, want the same version still asleep, never woken", s)
	}
	e.waitState(20*time.Second, "idle", "quotes")
	if code, _, body := e.Get("quotes.test", "/quote"); code != 200 || !strings.Contains(body, "Bonjour") {
		t.Errorf("the new quotes, woken: %d %q", code, body)
	}
	var all struct{ Services []sleepStatus }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &all); err != nil {
		t.Fatal(err)
	}
	for _, s := range all.Services {
		if s.Name == "quotes" && s.Version == old["quotes"].Version {
			t.Errorf("the replaced quotes version is still listed: %+v", s)
		}
	}
}
