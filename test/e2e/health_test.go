package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// healthStatus is what status --json says of a version's health.
type healthStatus struct {
	Name, Version, State, Error string
	PID, Restarts               int
	Ready                       bool
	LastExit                    string `json:"last_exit"`
	Health                      *struct {
		OK    bool
		At    time.Time
		Error string
	}
}

func (e *Env) healthStatus() (gen uint64, confirmation string, svcs map[string]healthStatus) {
	e.t.Helper()
	var st struct {
		Generation   uint64
		Confirmation string
		Services     []healthStatus
	}
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	svcs = map[string]healthStatus{}
	for _, s := range st.Services {
		svcs[s.Name] = s
	}
	return st.Generation, st.Confirmation, svcs
}

// TestUnhealthyAfterWindowRestarts: a version whose /healthz turns 500
// after its confirm window is restarted by the supervisor, and status
// says so: unhealthy, last exit "unhealthy", the failing check and its
// time, the restart counted. Its generation stays current (a restart is
// not a failure), the other service is untouched, and once /healthz
// answers again the version is running and ready.
func TestUnhealthyAfterWindowRestarts(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	sick := filepath.Join(t.TempDir(), "sick")
	health := map[string]any{"path": "/healthz", "timeout": "10s", "interval": "200ms", "failures": 3}
	write := func(id string, env map[string]string) {
		env["APP_ID"] = id
		e.WriteSpec(map[string]any{"services": map[string]any{
			"web": map[string]any{"package": crashApp(t), "exec": []string{"bin/crashapp"}, "env": env,
				"domains": []string{"web.example"}, "health": health, "stop_grace": "2s"},
			"other": map[string]any{"package": crashApp(t), "exec": []string{"bin/crashapp"}, "env": map[string]string{"APP_ID": "other"},
				"domains": []string{"other.example"}, "health": health},
		}})
	}
	write("one", map[string]string{})
	e.MustRun("deploy", "--no-confirm")
	write("two", map[string]string{"SICK_FILE": sick})
	e.MustRun("deploy", "--confirm", "1s")
	gen, confirmation, before := e.healthStatus()
	if gen != 2 || confirmation != "confirmed" || before["web"].Health == nil || !before["web"].Health.OK {
		t.Fatalf("after the deploy: generation %d %s, web %+v; want 2 confirmed, a passing check", gen, confirmation, before["web"])
	}

	if err := os.WriteFile(sick, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var web healthStatus
	eventually(t, 30*time.Second, "web unhealthy and restarted", func() bool {
		_, _, svcs := e.healthStatus()
		web = svcs["web"]
		return web.State == "unhealthy" && web.Restarts >= 1 && web.Health != nil && strings.Contains(web.Health.Error, "500")
	})
	if web.LastExit != "unhealthy" || web.Ready || !web.Health.At.After(before["web"].Health.At) ||
		!strings.Contains(web.Error, "failed 3 health checks in a row") {
		t.Errorf("web while sick: %+v; want last exit unhealthy, not ready, a later failing check, why in error", web)
	}
	if out := e.MustRun("status"); !strings.Contains(out, "unhealthy (failed 3 health checks in a row") {
		t.Errorf("status does not say why web is unhealthy:\n%s", out)
	}
	if !strings.Contains(e.DaemonLog(), "restarting in") {
		t.Errorf("the daemon's log does not say web is restarted")
	}
	gen, confirmation, svcs := e.healthStatus()
	if o := svcs["other"]; o.PID != before["other"].PID || o.Restarts != 0 || o.State != "running" {
		t.Errorf("other while web is sick: %+v; want untouched (pid %d)", o, before["other"].PID)
	}
	if code, _, body := e.Get("other.example", "/"); code != 200 || body != "other" {
		t.Errorf("other.example while web is sick: %d %q", code, body)
	}
	if gen != 2 || confirmation != "confirmed" {
		t.Errorf("generation %d %s while web is restarted; want 2 confirmed: a restart is not a switch back", gen, confirmation)
	}

	os.Remove(sick)
	eventually(t, 30*time.Second, "web running again", func() bool {
		_, _, svcs := e.healthStatus()
		web = svcs["web"]
		return web.State == "running" && web.Ready
	})
	if web.LastExit != "unhealthy" || web.Restarts < 1 || web.Health == nil || !web.Health.OK {
		t.Errorf("web healed: %+v; want last exit unhealthy, restarts counted, a passing check", web)
	}
	if code, _, body := e.Get("web.example", "/"); code != 200 || body != "two" {
		t.Errorf("web.example healed: %d %q, want 200 two", code, body)
	}
}

// TestReadyEarlyFailsNoRequest: an app with a health path that says
// READY=1 300 ms before its port accepts (as apps that start their HTTP
// server in a goroutine do) is ready only once its health check passes,
// so no request fails: not through a deploy's switch, not through an
// exclusive service's handover, not on a wake from sleep.
func TestReadyEarlyFailsNoRequest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra map[string]any
	}{
		{"deploy", nil},
		{"exclusive deploy", map[string]any{"exclusive": true}},
		{"wake", map[string]any{"idle": "1s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewEnv(t)
			e.StartDaemon()
			write := func(id string) {
				svc := map[string]any{"package": crashApp(t), "exec": []string{"bin/crashapp"},
					"env":     map[string]string{"APP_ID": id, "READY_EARLY": "300ms"},
					"domains": []string{"web.example"}, "health": map[string]any{"path": "/healthz", "timeout": "10s"}}
				for k, v := range tc.extra {
					svc[k] = v
				}
				e.WriteSpec(map[string]any{"services": map[string]any{"web": svc}})
			}
			write("one")
			e.MustRun("deploy", "--no-confirm")
			if tc.name == "wake" {
				e.waitState(20*time.Second, "idle", "web")
				if code, _, body := e.Get("web.example", "/"); code != 200 || body != "one" {
					t.Errorf("first request to the sleeping web: %d %q, want 200 one", code, body)
				}
				return
			}
			failed, served := e.traffic("web.example", func() { write("two"); e.MustRun("deploy", "--no-confirm") })
			if len(failed) > 0 {
				t.Errorf("%d requests failed through the deploy (%d answered two), the first: %v", len(failed), served["two"], failed[0])
			}
			if served["two"] == 0 {
				t.Errorf("no request reached the new version: %v", served)
			}
		})
	}
}

// traffic sends requests to host from four clients while during runs,
// and on until the new version answered for a while; it returns what
// failed and, by body, what answered 200.
func (e *Env) traffic(host string, during func()) (failed []string, served map[string]int) {
	e.t.Helper()
	var mu sync.Mutex
	served = map[string]int{}
	failed, _ = trafficOn([]string{e.HTTP}, 4, host, during, func(_ int, body string) {
		mu.Lock()
		served[body]++
		mu.Unlock()
	})
	return failed, served
}

// trafficOn asks each HTTP listener of addrs for host's / from perAddr
// clients each, in a loop, while during runs and for 500 ms after (past
// a new version's first moments, and the old one's drain). answered, if
// not nil, is told each 200: the index of its listener and its body (from
// several goroutines at once). It returns what failed, and how many
// requests were made.
func trafficOn(addrs []string, perAddr int, host string, during func(), answered func(i int, body string)) (failed []string, requests int64) {
	var mu sync.Mutex
	var n atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	c := &http.Client{Timeout: 10 * time.Second}
	for i, addr := range addrs {
		for range perAddr {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					n.Add(1)
					req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
					req.Host = host
					resp, err := c.Do(req)
					var what string
					if err == nil {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode == 200 {
							if answered != nil {
								answered(i, string(b))
							}
							continue
						}
						what = fmt.Sprintf("through %s: %d %q", addr, resp.StatusCode, b)
					} else {
						what = fmt.Sprintf("through %s: %v", addr, err)
					}
					mu.Lock()
					failed = append(failed, what)
					mu.Unlock()
				}
			})
		}
	}
	during()
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	return failed, n.Load()
}
