package front_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
)

// TestMaxConnections: past Options.MaxConnections a new connection is
// answered 503 with Retry-After and closed (a TLS one is closed), whatever
// path the open ones are on — an event loop, a goroutine, net/http, a
// websocket — and a connection is counted until it closes.
func TestMaxConnections(t *testing.T) {
	upgraded := make(chan struct{})
	app := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			fmt.Fprintf(w, "ok %s", r.URL.Path)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		close(upgraded)
		io.Copy(c, brw) // echo until the client goes
	}))
	_, f, pub := frontTo(t, app, front.Options{MaxConnections: 4})

	var open []net.Conn
	openOne := func(raw string, method string) {
		t.Helper()
		c, br := fronttest.RawConn(t, "http://"+pub)
		io.WriteString(c, raw)
		if resp, body := fronttest.ReadResp(t, br, method); resp.StatusCode != 200 || !strings.HasPrefix(body, "ok") {
			t.Fatalf("%q: %d %q", raw, resp.StatusCode, body)
		}
		open = append(open, c)
	}
	// Kept alive on each path: the fast path (an event loop or a
	// goroutine), net/http (HTTP/1.0 keep-alive, an upload).
	openOne("GET /fast HTTP/1.1\r\nHost: "+host+"\r\n\r\n", "GET")
	openOne("GET /old HTTP/1.0\r\nHost: "+host+"\r\nConnection: keep-alive\r\n\r\n", "GET")
	openOne("POST /up HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 2\r\n\r\nhi", "POST")
	// A websocket, hijacked out of net/http.
	ws, wsr := fronttest.RawConn(t, "http://"+pub)
	io.WriteString(ws, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	if resp, err := http.ReadResponse(wsr, nil); err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	<-upgraded

	refused := func() {
		t.Helper()
		c, br := fronttest.RawConn(t, "http://"+pub)
		io.WriteString(c, "GET /over HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		resp, body := fronttest.ReadResp(t, br, "GET")
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "connections") {
			t.Fatalf("past the limit: %d %v %q, want 503 with Retry-After", resp.StatusCode, resp.Header, body)
		}
		if _, err := br.ReadByte(); err == nil {
			t.Error("connection left open past the limit")
		}
	}
	refused()
	if n := front.OpenConns(f); n != 4 {
		t.Errorf("%d connections counted, want 4", n)
	}

	// One closes: a new one is served. The websocket too.
	open[0].Close()
	fronttest.WaitFor(t, "a connection given back", func() bool { return front.OpenConns(f) == 3 })
	openOne("GET /again HTTP/1.1\r\nHost: "+host+"\r\n\r\n", "GET")
	refused()
	ws.Close()
	fronttest.WaitFor(t, "the websocket's connection given back", func() bool { return front.OpenConns(f) == 3 })
	for _, c := range open {
		c.Close()
	}
	fronttest.WaitFor(t, "every connection given back", func() bool { return front.OpenConns(f) == 0 })
}

// TestMaxConnectionsTLS: past the limit a TLS connection is closed before
// its handshake; HTTP/2 and HTTP/1.1 connections are counted.
func TestMaxConnectionsTLS(t *testing.T) {
	f, pub, pool := tlsFrontTo(t, fronttest.StartBackend(t, "tls"), front.Options{MaxConnections: 2})
	cfg := func(proto string) *tls.Config {
		return &tls.Config{RootCAs: pool, NextProtos: []string{proto}}
	}
	var open []*tls.Conn
	for _, proto := range []string{"h2", "http/1.1"} {
		c, err := tls.Dial("tcp", pub, cfg(proto))
		if err != nil {
			t.Fatalf("%s: %v", proto, err)
		}
		open = append(open, c)
	}
	// A request on the HTTP/1.1 one: it stays open, in a loop or not.
	fmt.Fprintf(open[1], "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	if resp, err := http.ReadResponse(bufio.NewReader(open[1]), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("HTTP/1.1 over TLS: %v %v", resp, err)
	}
	fronttest.WaitFor(t, "two connections counted", func() bool { return front.OpenConns(f) == 2 })
	d := &net.Dialer{Timeout: 5 * time.Second}
	if c, err := tls.DialWithDialer(d, "tcp", pub, cfg("http/1.1")); err == nil {
		c.Close()
		t.Fatal("a TLS connection past the limit was served")
	}
	for _, c := range open {
		c.Close()
	}
	fronttest.WaitFor(t, "every connection given back", func() bool { return front.OpenConns(f) == 0 })
	c, err := tls.Dial("tcp", pub, cfg("http/1.1"))
	if err != nil {
		t.Fatalf("after the others closed: %v", err)
	}
	c.Close()
}

// failingListener fails its first Accepts with err, as a listener does
// when the process is out of descriptors.
type failingListener struct {
	net.Listener
	fails atomic.Int32
	err   error
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// TestAcceptOutOfDescriptors: an Accept that fails for want of
// descriptors (EMFILE, ENFILE) does not end the listener: connections are
// served again once there are.
func TestAcceptOutOfDescriptors(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE} {
		t.Run(errno.Error(), func(t *testing.T) {
			r, _, _ := frontTo(t, fronttest.StartBackend(t, "v1"), front.Options{})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			fl := &failingListener{Listener: ln, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}}
			fl.fails.Store(3)
			f := front.New(r, front.Options{Loops: *fronttest.Loops, Logf: t.Logf})
			served := make(chan error, 1)
			go func() { served <- f.Serve(fl) }()
			t.Cleanup(func() { f.Close() })
			if code, _, body := fronttest.Get(t, "http://"+ln.Addr().String()+"/", host); code != 200 {
				t.Fatalf("after %v: %d %q", errno, code, body)
			}
			select {
			case err := <-served:
				t.Fatalf("Serve returned %v", err)
			default:
			}
		})
	}
}
