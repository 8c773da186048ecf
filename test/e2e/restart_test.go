package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// slowApp builds testdata/slowapp into a package directory every service
// user can read, and returns it.
func slowApp(t testing.TB) string {
	t.Helper()
	return testApp(t, "slowapp", "./test/e2e/testdata/slowapp")
}

// stopDaemonWith sends sig to the daemon and waits for it to exit.
func (e *Env) stopDaemonWith(sig os.Signal) {
	e.t.Helper()
	e.daemon.Process.Signal(sig)
	select {
	case <-e.done:
	case <-time.After(60 * time.Second):
		e.daemon.Process.Kill()
		e.t.Fatalf("daemon did not exit within 60s of %v", sig)
	}
	e.daemon = nil
}

// TestDaemonRestartKeepsServices: stopping `hostel serve` (SIGTERM) lets
// requests in flight finish and leaves every service running; the next
// daemon adopts them (same pids, same routes, same <NEED>_URL endpoints),
// and so does a daemon started after a SIGKILL.
func TestDaemonRestartKeepsServices(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(monolithsAndSlow(t, e))
	e.MustRun("deploy", "--no-confirm")
	_, before := e.Status()

	// A steady stream of requests through every restart: whatever the router
	// accepted must be answered 200; while no daemon listens, connections
	// are refused.
	var addr atomic.Value
	addr.Store(e.HTTP)
	var ok, refused atomic.Int64
	var badMu sync.Mutex
	var bad []string
	stopLoad := make(chan struct{})
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		c := &http.Client{Timeout: 10 * time.Second}
		for {
			select {
			case <-stopLoad:
				return
			case <-time.After(10 * time.Millisecond):
			}
			req, _ := http.NewRequest("GET", "http://"+addr.Load().(string)+"/", nil)
			req.Host = "blog.example"
			resp, err := c.Do(req)
			if err != nil {
				refused.Add(1)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), "Hi!") {
				badMu.Lock()
				bad = append(bad, fmt.Sprintf("%d %q", resp.StatusCode, body))
				badMu.Unlock()
				continue
			}
			ok.Add(1)
		}
	}()

	checkRoutes := func(t *testing.T) {
		t.Helper()
		if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Hi!") {
			t.Errorf("blog (through QUOTES_URL): %d %q", code, body)
		}
		if code, _, body := e.Get("shop.example", "/"); code != 200 || !strings.Contains(body, "The Shop") {
			t.Errorf("shop: %d %q", code, body)
		}
		if code, _, body := e.Get("wiki.example", "/"); code != 200 || !strings.Contains(body, "The wiki") {
			t.Errorf("wiki: %d %q", code, body)
		}
		u, _ := url.Parse(before["quotes"].URL)
		if code, _, body := e.Get(u.Host, "/quote"); code != 200 || !strings.Contains(body, before["quotes"].Version) {
			t.Errorf("quotes by its immutable name %s: %d %q", u.Host, code, body)
		}
	}
	samePIDs := func(t *testing.T, when string) {
		t.Helper()
		_, st := e.Status()
		for name, s := range before {
			if st[name].PID != s.PID || st[name].State != "running" {
				t.Errorf("%s %s: pid %d state %s, want pid %d running", name, when, st[name].PID, st[name].State, s.PID)
			}
		}
	}
	logLine := func(t *testing.T, msg string) {
		t.Helper()
		if code, _, _ := e.Get("slow.example", "/log?msg="+msg); code != 200 {
			t.Fatalf("slow /log: %d", code)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(e.MustRun("logs", "slow", "-n", "20"), msg) {
			if time.Now().After(deadline) {
				t.Errorf("hostel logs slow lacks %q:\n%s", msg, e.MustRun("logs", "slow", "-n", "20"))
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	t.Run("SIGTERM lets requests in flight finish", func(t *testing.T) {
		// A slow answer and a slowly uploaded body, both under way when the
		// daemon is told to stop.
		type result struct {
			code int
			body string
			err  error
		}
		download, upload := make(chan result, 1), make(chan result, 1)
		started := make(chan struct{}, 2)
		go func() {
			req, _ := http.NewRequest("GET", "http://"+e.HTTP+"/slow?ms=3000", nil)
			req.Host = "slow.example"
			resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
			if err != nil {
				download <- result{err: err}
				return
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			first, _ := br.ReadString('\n')
			started <- struct{}{}
			rest, err := io.ReadAll(br)
			download <- result{resp.StatusCode, first + string(rest), err}
		}()
		go func() {
			pr, pw := io.Pipe()
			go func() {
				for range 30 {
					pw.Write([]byte(strings.Repeat("x", 100)))
					if len(started) == 0 {
						started <- struct{}{}
					}
					time.Sleep(100 * time.Millisecond)
				}
				pw.Close()
			}()
			req, _ := http.NewRequest("PUT", "http://"+e.HTTP+"/upload", pr)
			req.Host = "slow.example"
			resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
			if err != nil {
				upload <- result{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			upload <- result{resp.StatusCode, string(b), err}
		}()
		<-started
		<-started
		time.Sleep(300 * time.Millisecond)
		t0 := time.Now()
		e.stopDaemonWith(syscall.SIGTERM)
		t.Logf("daemon stopped in %v", time.Since(t0).Round(time.Millisecond))
		if r := <-download; r.err != nil || r.code != 200 || !strings.HasSuffix(r.body, "done\n") {
			t.Errorf("slow download across SIGTERM: %d %q %v", r.code, r.body, r.err)
		}
		if r := <-upload; r.err != nil || r.code != 200 || r.body != "got 3000 bytes\n" {
			t.Errorf("slow upload across SIGTERM: %d %q %v", r.code, r.body, r.err)
		}
		for name, s := range before {
			if err := syscall.Kill(s.PID, 0); err != nil {
				t.Errorf("%s (pid %d) is gone with the daemon: %v", name, s.PID, err)
			}
		}
	})

	t.Run("restarted daemon adopts them", func(t *testing.T) {
		e.StartDaemon()
		addr.Store(e.HTTP)
		samePIDs(t, "after SIGTERM and start")
		checkRoutes(t)
		logLine(t, "after-sigterm-restart")
	})

	t.Run("after SIGKILL too", func(t *testing.T) {
		e.stopDaemonWith(syscall.SIGKILL)
		e.StartDaemon()
		addr.Store(e.HTTP)
		samePIDs(t, "after SIGKILL and start")
		checkRoutes(t)
		logLine(t, "after-sigkill-restart")
	})

	time.Sleep(200 * time.Millisecond)
	close(stopLoad)
	<-loadDone
	t.Logf("steady load: %d answered 200, %d not connected (daemon down)", ok.Load(), refused.Load())
	if len(bad) > 0 {
		t.Errorf("%d accepted requests failed, e.g. %s", len(bad), bad[0])
	}
	if ok.Load() == 0 {
		t.Error("no request of the steady load succeeded")
	}
}

// TestLogFloodedWhileDownTrimmedAtStart: a service that floods its log
// while the daemon is down has it trimmed by the next daemon's start,
// without waiting for the service to write again (quotes writes nothing
// after its first line), and keeps running.
func TestLogFloodedWhileDownTrimmedAtStart(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(map[string]any{"services": map[string]any{"quotes": e.App("quotes", nil)}})
	e.MustRun("deploy", "--no-confirm")
	_, before := e.Status()
	e.StopDaemon()

	log := filepath.Join(e.Root, "logs", "quotes", before["quotes"].Version+".log")
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Repeat("x", 1023) + "\n"
	for range 25 << 10 { // 25 MiB, past twice the 10 MiB rotation size
		if _, err := f.WriteString(line); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	e.StartDaemon()
	deadline := time.Now().Add(20 * time.Second)
	for {
		fi, err := os.Stat(log)
		if err == nil && fi.Size() <= 10<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log is still %d bytes 20 s after the daemon started (%v)", fi.Size(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "bytes of this log dropped") {
		t.Errorf("the trimmed log does not say what was dropped: %.200q", b)
	}
	if _, after := e.Status(); after["quotes"].PID != before["quotes"].PID {
		t.Errorf("quotes was restarted: pid %d, then %d", before["quotes"].PID, after["quotes"].PID)
	}
}

// monolithsAndSlow is the monoliths and slow (testdata/slowapp, slow.example,
// health-checked): requests that take a while, through a restart or an
// upgrade.
func monolithsAndSlow(t *testing.T, e *Env) map[string]any {
	t.Helper()
	sp := monoliths(e, "Hi")
	sp["services"].(map[string]any)["slow"] = map[string]any{
		"package": slowApp(t), "exec": []string{"bin/slowapp"},
		"domains": []string{"slow.example"}, "health": map[string]any{"path": "/healthz"},
	}
	return sp
}
