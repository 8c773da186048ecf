package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
