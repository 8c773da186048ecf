package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lockApp builds testdata/lockapp, which refuses to run beside another
// process of its service, into a package directory service users can read.
func lockApp(t testing.TB) string {
	t.Helper()
	return testApp(t, "lockapp", "./test/e2e/testdata/lockapp")
}

// traffic sends requests to host until stop is closed and counts them,
// and those that did not answer 200.
type traffic struct {
	ok, bad atomic.Int64
	mu      sync.Mutex
	errs    []string
	done    chan struct{}
}

func (e *Env) startTraffic(host string, stop chan struct{}) *traffic {
	tr := &traffic{done: make(chan struct{})}
	c := &http.Client{Timeout: time.Minute}
	go func() {
		defer close(tr.done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("GET", "http://"+e.HTTP+"/", nil)
			req.Host = host
			resp, err := c.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				tr.bad.Add(1)
				tr.mu.Lock()
				tr.errs = append(tr.errs, err.Error())
				tr.mu.Unlock()
				continue
			}
			tr.ok.Add(1)
		}
	}()
	return tr
}

// TestExclusiveDeploy: deploys of an exclusive service under traffic never
// run two of its versions at once (the app refuses to start beside
// another) and lose no request; a new version that fails gives the
// requests back to the old one, started again. The same change without
// exclusive fails, which shows the app tells an overlap.
func TestExclusiveDeploy(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	pkg := lockApp(t)
	write := func(v string, exclusive bool, env map[string]string) {
		if env == nil {
			env = map[string]string{}
		}
		env["V"] = v
		e.WriteSpec(map[string]any{"services": map[string]any{
			"lock": map[string]any{"package": pkg, "exec": []string{"bin/lockapp"}, "env": env, "exclusive": exclusive,
				"health": map[string]any{"path": "/healthz"}, "domains": []string{"lock.test"}},
		}})
	}
	write("1", true, nil)
	e.MustRun("deploy", "--no-confirm")
	stop := make(chan struct{})
	tr := e.startTraffic("lock.test", stop)
	for _, v := range []string{"2", "3", "4"} {
		write(v, true, nil)
		e.MustRun("deploy", "--no-confirm")
		if code, _, body := e.Get("lock.test", "/"); code != 200 || strings.TrimSpace(body) != "v"+v {
			t.Errorf("after the deploy of v%s: %d %q", v, code, body)
		}
	}
	write("5", true, map[string]string{"FAIL": "1"})
	if _, _, code := e.Run("deploy", "--no-confirm"); code != 1 {
		t.Errorf("deploy of a failing exclusive version: exit %d, want 1", code)
	}
	if code, _, body := e.Get("lock.test", "/"); code != 200 || strings.TrimSpace(body) != "v4" {
		t.Errorf("after the failed deploy: %d %q, want v4 started again", code, body)
	}
	close(stop)
	<-tr.done
	if tr.bad.Load() != 0 || tr.ok.Load() == 0 {
		t.Errorf("traffic through the deploys: %d ok, %d failed %v", tr.ok.Load(), tr.bad.Load(), tr.errs)
	}
	write("6", false, nil)
	if _, _, code := e.Run("deploy", "--no-confirm"); code != 1 {
		t.Errorf("the same change without exclusive: exit %d, want 1 (two versions at once)", code)
	}
}
