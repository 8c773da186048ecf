package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestSocketActivation: `hostel serve` started by systemd-socket-activate,
// which passes sockets the way systemd's socket units do (LISTEN_FDS,
// LISTEN_FDNAMES), serves on them in place of its flags' — the public
// listener, by its name, and the API socket, by its path under the name
// hostel install's socket unit gives all its sockets — and tells NOTIFY_SOCKET it is ready. A
// connection made before the daemon ran waits and is answered. A socket
// under a name the daemon does not know fails the start (exit 2).
func TestSocketActivation(t *testing.T) {
	e := NewEnv(t)
	notifyPath := filepath.Join(t.TempDir(), "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	if err := os.MkdirAll(e.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.Wrap = []string{"systemd-socket-activate", "-l", addr, "--fdname=http",
		"-l", filepath.Join(e.Root, "hostel.sock"), "--fdname=hostel", "-E", "NOTIFY_SOCKET=" + notifyPath}

	// systemd-socket-activate runs hostel at the first connection (this
	// request's or the harness's status): until then it waits in the
	// listener's backlog.
	early := make(chan string, 1)
	go func() {
		var c net.Conn
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if c, err = net.Dial("tcp", addr); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			early <- err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			early <- err.Error()
			return
		}
		resp.Body.Close()
		early <- resp.Status
	}()
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "")
	if e.HTTP != addr {
		t.Errorf("status --json: listen.http %s, want the passed %s", e.HTTP, addr)
	}
	// 404: the router's answer for a host it does not serve.
	select {
	case got := <-early:
		if got != "404 Not Found" {
			t.Errorf("the request made before the daemon ran: %s, want 404 Not Found", got)
		}
	case <-time.After(30 * time.Second):
		t.Error("the request made before the daemon ran was not answered")
	}
	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	if n, err := notify.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Errorf("NOTIFY_SOCKET: got %q, %v; want READY=1", buf[:n], err)
	}
	if fi, err := os.Stat(filepath.Join(e.Root, "hostel.sock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the passed API socket: %v, %v; want mode 0600", fi.Mode(), err)
	}
	e.WriteSpec(map[string]any{"services": map[string]any{"quotes": e.App("quotes", map[string]any{"domains": []string{"quotes.example"}})}})
	e.MustRun("deploy", "--no-confirm")
	if code, _, body := e.Get("quotes.example", "/quote"); code != 200 {
		t.Errorf("quotes through the passed listener: %d %q", code, body)
	}

	// A name it does not know: refused, not left unanswered.
	bad := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command("systemd-socket-activate", "-l", bad, "--fdname=web", e.Bin, "serve", "--root", t.TempDir(), "--http", "127.0.0.1:0", "--https", "")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", bad); err == nil {
			c.Close()
			break
		}
	}
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(out.String(), `LISTEN_FDNAMES: unknown socket name "web"`) {
		t.Errorf("a socket named web: exit %d, %q; want exit 2 naming it", code, out.String())
	}
}

// TestUpgradeUnderLoad: under steady traffic (blog, which calls quotes
// through QUOTES_URL, on keep-alive connections), hostel upgrade replaces
// the daemon by a new process that takes over every socket and service:
// no request fails, a slow request under way finishes, the services keep
// their pids, the old daemon exits. A binary that is not hostel is refused
// (exit 2); one that dies while it takes over leaves the old binary
// serving (exit 1, saying why); SIGHUP upgrades too. With
// HOSTEL_TEST_STORE=etcd the state is in an etcd the daemon does not run
// (an upgrade refuses --etcd-embed, whose member's ports it cannot pass).
func TestUpgradeUnderLoad(t *testing.T) {
	e := NewEnv(t)
	if e.Store == "etcd" {
		e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--etcd", startEtcd(t))
	} else {
		e.StartDaemon()
	}
	e.WriteSpec(monolithsAndSlow(t, e))
	e.MustRun("deploy", "--no-confirm")
	_, before := e.Status()
	samePIDs := func(when string) {
		t.Helper()
		_, st := e.Status()
		for name, s := range before {
			if st[name].PID != s.PID || st[name].State != "running" {
				t.Errorf("%s %s: pid %d state %s, want pid %d running", name, when, st[name].PID, st[name].State, s.PID)
			}
		}
	}
	// hostel serve that dies by SIGKILL once it has its sockets and the
	// store, before it adopts anything (a failpoint).
	dying := filepath.Join(t.TempDir(), "hostel-dying")
	script := fmt.Sprintf("#!/bin/sh\n[ \"$1\" = version ] && exec %s version\nHOSTEL_FAILPOINTS=api-socket-bound=kill exec %s \"$@\"\n", e.Bin, e.Bin)
	if err := os.WriteFile(dying, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}

	pid := e.daemon.Process.Pid
	holders := holderPIDs(t, e.Root)
	kept := keepAliveConns(t, e.HTTP, "blog.example")
	failed, n := trafficOn([]string{e.HTTP}, 4, "blog.example", func() {
		slow := make(chan string, 1)
		go func() {
			req, _ := http.NewRequest("GET", "http://"+e.HTTP+"/slow?ms=1500", nil)
			req.Host = "slow.example"
			resp, err := httpClient.Do(req)
			if err != nil {
				slow <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			slow <- fmt.Sprintf("%d %s", resp.StatusCode, strings.Fields(string(b)))
		}()
		time.Sleep(300 * time.Millisecond)

		out := e.MustRun("upgrade")
		var old, next int
		var version string
		if _, err := fmt.Sscanf(out[strings.Index(out, "pid "):], "pid %d → %d, hostel %s", &old, &next, &version); err != nil || old != pid || next == pid {
			t.Fatalf("hostel upgrade printed %q; want pid %d → a new pid", out, pid)
		}
		waitUntil(t, "the old daemon to exit", func() bool { return !running(old) })
		kept.again(t, "after hostel upgrade")
		if got := <-slow; got != "200 [started done]" {
			t.Errorf("a slow request under way across the upgrade: %s", got)
		}
		samePIDs("after hostel upgrade")
		if got := holderPIDs(t, e.Root); len(holders) != 1 || !slices.Equal(got, holders) {
			t.Errorf("socket holders %v before hostel upgrade, %v after; want the one kept", holders, got)
		}
		pid = next

		if _, errOut, code := e.Run("upgrade", "/bin/true"); code != 2 || !strings.Contains(errOut, "/bin/true is not a hostel binary") {
			t.Errorf("hostel upgrade /bin/true: exit %d, %q; want 2, not a hostel binary", code, errOut)
		}
		if !running(pid) {
			t.Fatalf("a refused upgrade ended the daemon")
		}

		_, errOut, code := e.Run("upgrade", dying)
		if code != 1 || !strings.Contains(errOut, "exited (signal: killed) before it was ready") || !strings.Contains(errOut, "the old binary serves on") {
			t.Errorf("hostel upgrade to a binary that dies: exit %d, %q; want 1, saying why and that the old binary serves on", code, errOut)
		}
		waitUntil(t, "the daemon of the failed upgrade to exit", func() bool { return !running(pid) })
		kept.again(t, "after a failed upgrade")
		e.MustRun("status")
		samePIDs("after a failed upgrade")
		if i := strings.Index(errOut, "serves on (pid "); i < 0 {
			t.Fatalf("hostel upgrade to a binary that dies: no pid in %q", errOut)
		} else {
			fmt.Sscanf(errOut[i:], "serves on (pid %d)", &pid)
		}
		if !running(pid) {
			t.Fatalf("the old binary's new daemon, pid %d, does not run", pid)
		}

		syscall.Kill(pid, syscall.SIGHUP)
		waitUntil(t, "the daemon to exit after SIGHUP", func() bool { return !running(pid) })
		kept.again(t, "after SIGHUP")
		e.MustRun("status")
		samePIDs("after SIGHUP")
		if got := strings.Count(e.DaemonLog(), "upgrade: pid "); got != 2 {
			t.Errorf("the daemon's log tells %d upgrades that went through, want 2 (hostel upgrade, SIGHUP)", got)
		}
	}, nil)
	if len(failed) > 0 {
		t.Errorf("%d of %d requests failed across the upgrades; first: %v", len(failed), n, failed[:min(5, len(failed))])
	}
	t.Logf("%d requests across 3 upgrades", n)
}

// keptConns are client connections to a daemon's public listener, each
// left idle after a request, or new with nothing sent, whose next request
// is sent once the daemon was replaced.
type keptConns []keptConn

type keptConn struct {
	name, req string
	status    int // of the request before; 0 for none
	c         net.Conn
	br        *bufio.Reader
}

// keepAliveConns opens three connections to addr for host: one idle after
// a GET (which the router's fast path serves), one after a POST with a
// body (which net/http serves), one with nothing sent yet.
func keepAliveConns(t *testing.T, addr, host string) keptConns {
	t.Helper()
	kept := keptConns{
		{name: "idle after a GET", req: "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n"},
		{name: "idle after a POST", req: "POST / HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 1\r\n\r\nx"},
		{name: "new, nothing sent", req: "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n"},
	}
	for i := range kept {
		k := &kept[i]
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		k.c, k.br = c, bufio.NewReader(c)
		if i < 2 {
			k.status = k.do(t)
			if k.status == 0 {
				t.Fatalf("%s: no answer before the upgrade", k.name)
			}
		}
	}
	return kept
}

// do sends the connection's request and returns the answer's status, 0
// if none came.
func (k *keptConn) do(t *testing.T) int {
	t.Helper()
	k.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(k.c, k.req); err != nil {
		t.Errorf("%s: %v", k.name, err)
		return 0
	}
	resp, err := http.ReadResponse(k.br, &http.Request{Method: strings.Fields(k.req)[0]})
	if err != nil {
		t.Errorf("%s: %v", k.name, err)
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		t.Errorf("%s: the answer closes the connection", k.name)
	}
	return resp.StatusCode
}

// again sends each connection's request once more: the daemon that
// serves now answers it on the same connection, which was not closed.
func (kept keptConns) again(t *testing.T, when string) {
	t.Helper()
	for i := range kept {
		k := &kept[i]
		want := k.status
		if want == 0 {
			want = 200
		}
		if got := k.do(t); got != want {
			t.Errorf("%s %s: status %d, want %d on the same connection", k.name, when, got, want)
		}
		k.status = want
	}
}

// running reports whether process pid exists and is not a zombie (a
// daemon an upgrade replaced is reparented, and nobody may reap it).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// TestKilledDaemonRefusesNothing: without systemd, a holder process keeps
// the daemon's listening sockets open when it dies: under a steady stream
// of new connections, a `kill -9` of the daemon and its start again half
// a second later (a supervisor's restart) refuse none — those made
// meanwhile wait and are answered by the next daemon, on the same
// address. hostel shutdown ends the holder: then connections are refused.
func TestKilledDaemonRefusesNothing(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	e.WriteSpec(map[string]any{"services": map[string]any{"quotes": e.App("quotes", map[string]any{"domains": []string{"quotes.example"}})}})
	e.MustRun("deploy", "--no-confirm")
	addr := e.HTTP

	var refused, answered, waited atomic.Int64
	var otherMu sync.Mutex
	var other []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				req, _ := http.NewRequest("GET", "http://"+addr+"/quote", nil)
				req.Host = "quotes.example"
				t0 := time.Now()
				resp, err := c.Do(req)
				switch {
				case errors.Is(err, syscall.ECONNREFUSED):
					refused.Add(1)
				case err != nil:
					// Cut in flight: that connection was the killed daemon's.
					otherMu.Lock()
					other = append(other, err.Error())
					otherMu.Unlock()
				default:
					resp.Body.Close()
					if resp.StatusCode == 200 {
						answered.Add(1)
						if time.Since(t0) > 300*time.Millisecond {
							waited.Add(1)
						}
					}
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	e.daemon.Process.Kill()
	<-e.done
	e.daemon = nil
	time.Sleep(500 * time.Millisecond)
	e.StartDaemon()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if e.HTTP != addr {
		t.Errorf("the daemon after the kill listens on %s, want the held %s", e.HTTP, addr)
	}
	if refused.Load() != 0 || waited.Load() == 0 || len(other) > 2 {
		t.Errorf("across kill -9: %d refused, %d answered (%d after waiting for the next daemon), cut: %v; want none refused, some waited",
			refused.Load(), answered.Load(), waited.Load(), other)
	}
	t.Logf("across kill -9: %d answered, %d of them after waiting for the next daemon, %d cut in flight", answered.Load(), waited.Load(), len(other))

	e.Shutdown()
	if _, err := net.DialTimeout("tcp", addr, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after hostel shutdown, a connection to %s: %v; want refused (the holder gone)", addr, err)
	}
}

// TestKilledWhileHolderStarts: a daemon killed the moment its socket
// holder was forked, before the holder itself ran a line, and started
// again at once, finds the holder (its socket listens from the fork on),
// takes the sockets and serves on the same address — it is not refused
// as "another daemon", nor do its listeners fail as taken.
func TestKilledWhileHolderStarts(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	addr := e.HTTP
	e.StopDaemon() // its holder keeps the sockets; the next daemon takes them

	cmd := exec.Command(e.Bin, append([]string{"serve", "--root", e.Root}, e.args...)...)
	cmd.Env = append(os.Environ(), "HOSTEL_FAILPOINTS=holder-after-spawn=kill")
	out, err := cmd.CombinedOutput()
	if !strings.Contains(string(out), "failpoint holder-after-spawn: kill") {
		t.Fatalf("hostel serve did not die at holder-after-spawn: %v\n%s", err, out)
	}
	e.StartDaemon()
	if e.HTTP != addr {
		t.Errorf("the daemon after the kill listens on %s, want the held %s", e.HTTP, addr)
	}
}

// TestKilledDaemonKeepsEndpoints: a service's calls to what it needs
// (QUOTES_URL, an endpoint of the daemon's router) are not refused while
// the daemon is dead (or stopped, for a restart) either: the holder keeps the endpoints' sockets too,
// as they are when it dies (deploys open and close them) — under systemd,
// which holds the listeners, the endpoints alone — and a call made
// meanwhile is answered by the next daemon.
func TestKilledDaemonKeepsEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name    string
		systemd bool
		stop    bool // SIGTERM, not kill -9
	}{
		{"holder", false, false},
		{"systemd", true, false},
		{"stopped", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewEnv(t)
			if tc.systemd {
				holdLikeSystemd(t, e)
			}
			e.StartDaemon()
			sp := monoliths(e, "Hi")
			svcs := sp["services"].(map[string]any)
			delete(svcs, "shop")
			delete(svcs, "wiki")
			e.WriteSpec(sp)
			e.MustRun("deploy", "--no-confirm")
			_, st := e.Status()
			env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st["blog"].PID))
			if err != nil {
				t.Fatal(err)
			}
			var endpoint string
			for _, kv := range strings.Split(string(env), "\x00") {
				if v, ok := strings.CutPrefix(kv, "QUOTES_URL=http://"); ok {
					endpoint = v
				}
			}
			if endpoint == "" {
				t.Fatalf("blog has no QUOTES_URL: %q", env)
			}
			// The holder takes the endpoints a moment after they open.
			time.Sleep(300 * time.Millisecond)

			if tc.stop {
				e.StopDaemon()
			} else {
				e.daemon.Process.Kill()
				<-e.done
				e.daemon = nil
			}
			c, err := net.DialTimeout("tcp", endpoint, 2*time.Second)
			if err != nil {
				t.Fatalf("a call to QUOTES_URL (%s) while the daemon is dead: %v; want it to wait for the next daemon", endpoint, err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /quote HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			e.StartDaemon()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("the call made while the daemon was dead: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("the call made while the daemon was dead: %d, want 200 from quotes", resp.StatusCode)
			}
			if _, st2 := e.Status(); st2["blog"].PID != st["blog"].PID {
				t.Errorf("blog was restarted (pid %d → %d): its QUOTES_URL should have been kept", st["blog"].PID, st2["blog"].PID)
			}
		})
	}
}

// holdLikeSystemd has the test hold e's public HTTP listener and API
// socket and pass them to every daemon StartDaemon runs, the way systemd's
// hostel.socket does (LISTEN_PID: the daemon's own pid, so it is not
// taken for a daemon an upgrade started).
func holdLikeSystemd(t *testing.T, e *Env) {
	t.Helper()
	if err := os.MkdirAll(e.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	api, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(e.Root, "hostel.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	api.SetUnlinkOnClose(false) // its copy is the daemon's
	for _, l := range []interface{ File() (*os.File, error) }{ln.(*net.TCPListener), api} {
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		e.Files = append(e.Files, f)
	}
	ln.Close()
	api.Close()
	t.Cleanup(func() {
		for _, f := range e.Files {
			f.Close()
		}
	})
	e.Wrap = []string{"sh", "-c", `LISTEN_PID=$$ exec "$@"`, "sh"}
	e.DaemonEnv = []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=http:hostel"}
}

// TestWakeDuringUpgrade: a request to a sleeping service that reaches
// the daemon an upgrade is replacing, once it gave the services up and
// before the new daemon serves (held 2 s there by a failpoint), waits
// for the new daemon, which wakes the service; the old daemon serves the
// request — 200, not 503.
func TestWakeDuringUpgrade(t *testing.T) {
	e := NewEnv(t)
	// Every daemon of the test sleeps there; the new one, after the old
	// one handed over.
	e.DaemonEnv = []string{"HOSTEL_FAILPOINTS=api-socket-bound=sleep(2s)"}
	if e.Store == "etcd" {
		e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--etcd", startEtcd(t))
	} else {
		e.StartDaemon()
	}
	e.WriteSpec(map[string]any{"services": map[string]any{
		"shop": e.App("shop", map[string]any{"idle": "1s", "domains": []string{"shop.test"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	e.waitState(20*time.Second, "idle", "shop")

	upgraded := make(chan string, 1)
	go func() {
		out, errOut, code := e.Run("upgrade")
		upgraded <- fmt.Sprintf("exit %d %s%s", code, out, errOut)
	}()
	waitUntil(t, "the old daemon to hand over", func() bool { return strings.Contains(e.DaemonLog(), "handing the store and the services over") })
	code, _, body := e.Get("shop.test", "/")
	if code != 200 {
		t.Errorf("a request to the sleeping shop during the upgrade: %d %q, want 200", code, body)
	}
	if !strings.Contains(e.DaemonLog(), "shop-") || !strings.Contains(e.DaemonLog(), "woken by the daemon that replaced this one") {
		t.Errorf("the request did not reach the daemon being replaced in its handover:\n%s", e.DaemonLog())
	}
	if got := <-upgraded; !strings.HasPrefix(got, "exit 0") {
		t.Errorf("hostel upgrade: %s", got)
	}
	// Woken once, by the new daemon's router (asleep again, maybe: idle 1s).
	if s := e.sleepStatus()["shop"]; s.Wakes != 1 {
		t.Errorf("after the upgrade: %+v, want woken once, by the new daemon", s)
	}
}
