package cli

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestShutdownLeavesAHeldSocket: once the daemon answered the shutdown,
// `hostel shutdown` waits until it no longer answers — and a socket held
// for the next daemon (systemd's hostel.socket) takes the connection of a
// status call and answers nothing: the command returns all the same,
// rather than wait on that call for ever.
func TestShutdownLeavesAHeldSocket(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "hostel.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// The daemon: it answers the shutdown, then exits; its socket stays
	// open, taking connections into its backlog.
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil || req.URL.Path != "/v1/shutdown" {
			t.Errorf("the first call: %v %v, want POST /v1/shutdown", req, err)
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 23\r\n\r\n{\"stopped\":[\"a-0123\"]}\n")
	}()

	done := make(chan int, 1)
	var stdout, stderr bytes.Buffer
	go func() { done <- run([]string{"--root", dir, "shutdown"}, &stdout, &stderr) }()
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(stdout.String(), "stopped a-0123") {
			t.Errorf("exit %d, stdout %q, stderr %q; want 0 and the version stopped", code, stdout.String(), stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("hostel shutdown still waits on the held socket after 30 s")
	}
}
