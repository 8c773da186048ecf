package front_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
	"hostel/internal/router"
	"hostel/internal/spec"
)

// loopFront is frontTo with event loops, whatever -front-loops says.
func loopFront(t *testing.T, addr string) (*router.Router, *front.Front, string) {
	t.Helper()
	r, f, pub := frontTo(t, addr, front.Options{Loops: 2})
	// The loops start with Serve: a first connection waits for them.
	c, err := net.Dial("tcp", pub)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	fronttest.WaitFor(t, "the loops to start", func() bool { return front.LoopConns(f) == 0 })
	return r, f, pub
}

// TestLoopServes: keep-alive requests stay in an event loop, on one
// backend connection, and the loop lets the connection go when the client
// does.
func TestLoopServes(t *testing.T) {
	addr, conns := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path=%s", r.URL.RequestURI())
	}), nil)
	_, f, pub := loopFront(t, addr)
	c, br := fronttest.DialFront(t, pub)
	for i := range 50 {
		fmt.Fprintf(c, "GET /n/%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, host)
		resp, body := fronttest.ReadResp(t, br, "GET")
		if want := fmt.Sprintf("path=/n/%d", i); resp.StatusCode != 200 || body != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i, resp.StatusCode, body, want)
		}
	}
	if n := front.LoopConns(f); n != 1 {
		t.Errorf("event loops hold %d connections, want 1", n)
	}
	goroutines := front.GoroutineConns(f)
	if goroutines != 0 || front.Handoffs(f) != 0 {
		t.Errorf("%d connections served by goroutines, %d handed to net/http; want none", goroutines, front.Handoffs(f))
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
	c.Close()
	fronttest.WaitFor(t, "the loop to close the connection", func() bool { return front.LoopConns(f) == 0 })
}

// TestLoopHandsOver: each response a loop does not forward whole (large,
// chunked, preceded by 1xx) is finished by a goroutine on the same
// connection, with the request pipelined behind it, which the goroutine
// answers; the connection leaves the loop and does not go to net/http.
func TestLoopHandsOver(t *testing.T) {
	large := bytes.Repeat([]byte("0123456789abcdef"), 10000) // 160 KB
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/large":
			w.Write(large)
		case "/chunked":
			w.Write([]byte("part one, "))
			w.(http.Flusher).Flush()
			w.Write([]byte("part two"))
		case "/interim":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "after hints")
		default:
			io.WriteString(w, "quick "+r.URL.Path)
		}
	}))
	_, f, pub := loopFront(t, addr)
	for _, tc := range []struct{ path, want string }{
		{"/large", string(large)},
		{"/chunked", "part one, part two"},
		{"/interim", "after hints"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			// The loops count a connection when they take or give it up,
			// which may come a moment after the client has its answer: wait
			// for the count rather than read it once. The previous case's
			// connection leaves the loops first.
			fronttest.WaitFor(t, "the loops to hold no connection", func() bool { return front.LoopConns(f) == 0 })
			c, br := fronttest.DialFront(t, pub)
			get := func(path, want string) {
				t.Helper()
				resp, body := fronttest.ReadResp(t, br, "GET")
				for resp.StatusCode < 200 {
					resp, body = fronttest.ReadResp(t, br, "GET")
				}
				if resp.StatusCode != 200 || body != want {
					t.Fatalf("%s: %d, %d bytes %.40q, want 200, %d bytes %.40q", path, resp.StatusCode, len(body), body, len(want), want)
				}
			}
			fmt.Fprintf(c, "GET /first HTTP/1.1\r\nHost: %s\r\n\r\n", host)
			get("/first", "quick /first")
			fronttest.WaitFor(t, "the loops to hold this connection before the hand-over", func() bool { return front.LoopConns(f) == 1 })
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\nGET /after HTTP/1.1\r\nHost: %s\r\n\r\n", tc.path, host, host)
			get(tc.path, tc.want)
			get("/after", "quick /after")
			fronttest.WaitFor(t, "the loops to give the connection up", func() bool { return front.LoopConns(f) == 0 })
			if n := front.Handoffs(f); n != 0 {
				t.Errorf("%d connections handed to net/http, want 0", n)
			}
		})
	}
}

// TestLoopSlowReader: responses the client's socket cannot take at once
// are written as the client reads them.
func TestLoopSlowReader(t *testing.T) {
	body := bytes.Repeat([]byte("x"), front.MaxLoopResponse-1024)
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
	_, f, pub := loopFront(t, addr)
	c, br := fronttest.DialFront(t, pub)
	partial := front.LoopPartialWrites()
	// 400 pipelined requests: 25 MB of responses that nobody reads for a
	// while overflow the sockets' buffers (a few MB on loopback).
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	const n = 400
	io.WriteString(c, strings.Repeat(fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host), n))
	time.Sleep(100 * time.Millisecond)
	for i := range n {
		resp, got := fronttest.ReadResp(t, br, "GET")
		if resp.StatusCode != 200 || got != string(body) {
			t.Fatalf("response %d: %d, %d bytes, want 200, %d bytes", i, resp.StatusCode, len(got), len(body))
		}
	}
	if front.LoopPartialWrites() == partial {
		t.Error("every response was written at once: the test did not fill the socket")
	}
	if front.Handoffs(f) != 0 || front.LoopConns(f) != 1 {
		t.Errorf("%d handed to net/http, loops hold %d; want 0 and 1", front.Handoffs(f), front.LoopConns(f))
	}
}

// TestLoopClientGone: a client that hangs up while its request is with
// the backend ends the backend request, and the in-flight count drops.
func TestLoopClientGone(t *testing.T) {
	var canceled atomic.Bool
	started := make(chan struct{}, 1)
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			canceled.Store(true)
		case <-time.After(5 * time.Second):
		}
	}))
	r, _, pub := loopFront(t, addr)
	c, _ := fronttest.DialFront(t, pub)
	fmt.Fprintf(c, "GET /slow HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	<-started
	if n := r.InFlight(apiV1); n != 1 {
		t.Fatalf("in flight = %d, want 1", n)
	}
	c.Close()
	fronttest.WaitFor(t, "the backend request to end", canceled.Load)
	fronttest.WaitFor(t, "the in-flight count to drop", func() bool { return r.InFlight(apiV1) == 0 })
}

// TestLoopBackendDown: a backend that refuses connections gets a 502, and
// the connection carries on.
func TestLoopBackendDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, _, pub := loopFront(t, addr)
	c, br := fronttest.DialFront(t, pub)
	for range 2 {
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		resp, body := fronttest.ReadResp(t, br, "GET")
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "unavailable") {
			t.Fatalf("got %d %q, want 502", resp.StatusCode, body)
		}
	}
}

// TestLoopClose: Close with a request in flight closes the connection and
// leaves nothing counted.
func TestLoopClose(t *testing.T) {
	started := make(chan struct{}, 1)
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	}))
	r, f, pub := loopFront(t, addr)
	c, br := fronttest.DialFront(t, pub)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	<-started
	f.Close()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("connection still open after Close")
	}
	if n := front.LoopConns(f); n != 0 {
		t.Errorf("loops hold %d connections after Close", n)
	}
	if n := r.InFlight(apiV1); n != 0 {
		t.Errorf("in flight = %d after Close, want 0", n)
	}
}

// TestLoopTLS: a TLS connection is served by an event loop after its
// handshake, gives a large response and an upload back to a goroutine
// mid-stream, and the goroutine carries on with the same TLS session.
func TestLoopTLS(t *testing.T) {
	cfg, pool := fronttest.SelfSigned(t)
	large := bytes.Repeat([]byte("abcdefgh"), 20000) // 160 KB
	r := router.New(router.Options{Zone: zone, Logf: t.Logf})
	r.AddBackend(apiV1, fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/large" {
			w.Write(large)
			return
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s body=%q proto=%s", r.Method, r.URL.Path, b, r.Header.Get("X-Forwarded-Proto"))
	})))
	mustSwap(t, r, router.Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := front.New(r, front.Options{TLSConfig: cfg, Loops: 1})
	go f.ServeTLS(ln)
	t.Cleanup(func() { f.Close(); r.Close() })

	dial := func() (*tls.Conn, *bufio.Reader) {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	get := func(br *bufio.Reader, path, want string) {
		t.Helper()
		resp, body := fronttest.ReadResp(t, br, "GET")
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("%s: %d, %d bytes %.50q, want 200 %.50q", path, resp.StatusCode, len(body), body, want)
		}
	}

	c, br := dial()
	for i := range 20 {
		fmt.Fprintf(c, "GET /q%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, host)
		get(br, "/q", fmt.Sprintf("GET /q%d body=\"\" proto=https", i))
	}
	if n := front.LoopConns(f); n != 1 {
		t.Fatalf("loops hold %d connections, want 1", n)
	}
	// Pipelined: quick, large (handed over mid-response), quick, upload.
	fmt.Fprintf(c, "GET /a HTTP/1.1\r\nHost: %s\r\n\r\nGET /large HTTP/1.1\r\nHost: %s\r\n\r\n"+
		"GET /b HTTP/1.1\r\nHost: %s\r\n\r\nPOST /up HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\nhi", host, host, host, host)
	get(br, "/a", `GET /a body="" proto=https`)
	get(br, "/large", string(large))
	get(br, "/b", `GET /b body="" proto=https`)
	get(br, "/up", `POST /up body="hi" proto=https`)
	if n := front.LoopConns(f); n != 0 {
		t.Errorf("loops hold %d connections after the hand-over, want 0", n)
	}

	// A second connection: an upload first, straight to net/http.
	c2, br2 := dial()
	fmt.Fprintf(c2, "POST /first HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\n\r\nabcGET /then HTTP/1.1\r\nHost: %s\r\n\r\n", host, host)
	get(br2, "/first", `POST /first body="abc" proto=https`)
	get(br2, "/then", `GET /then body="" proto=https`)
}

// TestLoopHalfClose: a client that shuts its sending side down after its
// request (as `printf … | nc` does) still gets a quick answer; a slow
// request of such a client is ended as one that hung up.
func TestLoopHalfClose(t *testing.T) {
	var canceled atomic.Bool
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
				canceled.Store(true)
				return
			case <-time.After(5 * time.Second):
			}
		}
		io.WriteString(w, "ok "+r.URL.Path)
	}))
	_, f, pub := loopFront(t, addr)

	c, br := fronttest.DialFront(t, pub)
	fmt.Fprintf(c, "GET /quick HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	c.(*net.TCPConn).CloseWrite()
	resp, body := fronttest.ReadResp(t, br, "GET")
	if resp.StatusCode != 200 || body != "ok /quick" {
		t.Fatalf("got %d %q, want 200 \"ok /quick\"", resp.StatusCode, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the response: %v, want EOF", err)
	}

	c2, _ := fronttest.DialFront(t, pub)
	fmt.Fprintf(c2, "GET /slow HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	c2.(*net.TCPConn).CloseWrite()
	fronttest.WaitFor(t, "the slow request to be ended", canceled.Load)
	fronttest.WaitFor(t, "the loop to let both connections go", func() bool { return front.LoopConns(f) == 0 })
}
