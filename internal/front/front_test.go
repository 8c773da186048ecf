package front_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
)

func TestFrontKeepAliveAndPipelining(t *testing.T) {
	addr, conns := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path=%s", r.URL.RequestURI())
	}), nil)
	_, f, pub := frontTo(t, addr, front.Options{})
	c, br := fronttest.DialFront(t, pub)
	t.Run("sequence", func(t *testing.T) {
		for i := range 3 {
			fmt.Fprintf(c, "GET /seq/%d?x=%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, i, host)
			resp, body := fronttest.ReadResp(t, br, "GET")
			if want := fmt.Sprintf("path=/seq/%d?x=%d", i, i); resp.StatusCode != 200 || body != want {
				t.Fatalf("request %d: %d %q, want 200 %q", i, resp.StatusCode, body, want)
			}
			if resp.Header.Get("Date") == "" || resp.Header.Get("Content-Length") != fmt.Sprint(len(body)) {
				t.Errorf("header = %v, want Date and Content-Length", resp.Header)
			}
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		var all strings.Builder
		for i := range 5 {
			fmt.Fprintf(&all, "GET /pipe/%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, host)
		}
		io.WriteString(c, all.String())
		for i := range 5 {
			_, body := fronttest.ReadResp(t, br, "GET")
			if want := fmt.Sprintf("path=/pipe/%d", i); body != want {
				t.Fatalf("response %d = %q, want %q", i, body, want)
			}
		}
	})
	if n := front.Handoffs(f); n != 0 {
		t.Errorf("%d connections handed to net/http, want 0", n)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
}

// TestFrontFallback: what the fast path does not take is answered by
// net/http, on the same connection, which stays with net/http.
func TestFrontFallback(t *testing.T) {
	_, f, pub := frontTo(t, fronttest.EchoBackend(t), front.Options{})
	tests := []struct {
		name, req  string
		wantStatus int
		wantBody   string // prefix
	}{
		{"http/1.0", "GET /old HTTP/1.0\r\nHost: " + host + "\r\n\r\n", 200, "GET /old host=" + host},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", 400, ""},
		{"two hosts", "GET / HTTP/1.1\r\nHost: " + host + "\r\nHost: x\r\n\r\n", 400, ""},
		{"bad request line", "GET  / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 400, ""},
		{"bad header name", "GET / HTTP/1.1\r\nHost: " + host + "\r\nBad Name: x\r\n\r\n", 400, ""},
		{"bad escape", "GET /%zz HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 400, ""},
		{"space before colon", "GET / HTTP/1.1\r\nHost: " + host + "\r\nX-A : b\r\n\r\n", 400, ""},
		{"control byte", "GET / HTTP/1.1\r\nHost: " + host + "\r\nX-A: a\x01b\r\n\r\n", 400, ""},
		{"bad version", "GET / HTTP/9.9\r\nHost: " + host + "\r\n\r\n", 505, ""},
		{"oversized header", "GET / HTTP/1.1\r\nHost: " + host + "\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", 431, ""},
		{"redirect host", "GET /p?q=1 HTTP/1.1\r\nHost: old.example.org\r\n\r\n", 301, ""},
		{"unknown host", "GET / HTTP/1.1\r\nHost: nobody.example.org\r\n\r\n", 404, "hostel: no service"},
		{"query re-encoded", "GET /q?a=1;b=2&c=3 HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 200, "GET /q?c=3 host="},
		{"absolute target", "GET http://" + host + "/abs HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 200, "GET /abs host="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := front.Handoffs(f)
			c, br := fronttest.DialFront(t, pub)
			go io.WriteString(c, tt.req)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("reading response: %v", err)
			}
			// The body may be cut short by a server that closes
			// while the client still writes (the oversized header).
			b, _ := io.ReadAll(resp.Body)
			if body := string(b); resp.StatusCode != tt.wantStatus || !strings.HasPrefix(body, tt.wantBody) {
				t.Errorf("got %d %q, want %d %q…", resp.StatusCode, b, tt.wantStatus, tt.wantBody)
			}
			if n := front.Handoffs(f) - before; n != 1 {
				t.Errorf("%d handoffs, want 1", n)
			}
		})
	}
}

func TestFrontPostAfterGets(t *testing.T) {
	_, f, pub := frontTo(t, fronttest.EchoBackend(t), front.Options{})
	c, br := fronttest.DialFront(t, pub)
	steps := []struct{ req, want string }{
		{"GET /a HTTP/1.1\r\nHost: " + host + "\r\n\r\n", `GET /a host=api.example.org body="" proto=http`},
		{"DELETE /b HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 0\r\n\r\n", `DELETE /b host=api.example.org body="" proto=http`},
		{"POST /c HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 5\r\n\r\nhello", `POST /c host=api.example.org body="hello" proto=http`},
		{"POST /d HTTP/1.1\r\nHost: " + host + "\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", `POST /d host=api.example.org body="abcde" proto=http`},
		{"GET /e HTTP/1.1\r\nHost: " + host + "\r\n\r\n", `GET /e host=api.example.org body="" proto=http`},
	}
	for i, s := range steps {
		io.WriteString(c, s.req)
		resp, body := fronttest.ReadResp(t, br, "GET")
		if resp.StatusCode != 200 || body != s.want {
			t.Fatalf("step %d: %d %q, want 200 %q", i, resp.StatusCode, body, s.want)
		}
		wantHandoffs := int64(0)
		if i >= 2 {
			wantHandoffs = 1
		}
		if n := front.Handoffs(f); n != wantHandoffs {
			t.Errorf("step %d: %d handoffs, want %d", i, n, wantHandoffs)
		}
	}
}

// TestFrontUpgradeAfterGet: a websocket on a connection that served a
// fast request first.
func TestFrontUpgradeAfterGet(t *testing.T) {
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			io.WriteString(w, "plain")
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo " + line)
		brw.Flush()
	}), nil)
	_, _, pub := frontTo(t, addr, front.Options{})
	c, br := fronttest.DialFront(t, pub)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	if _, body := fronttest.ReadResp(t, br, "GET"); body != "plain" {
		t.Fatalf("first response %q", body)
	}
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", host)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(c, "hi\n")
	if line, err := br.ReadString('\n'); line != "echo hi\n" {
		t.Fatalf("got %q, %v", line, err)
	}
}

// TestFrontBodylessResponses: HEAD, 204 and 304 carry no body, and the
// connection goes on.
func TestFrontBodylessResponses(t *testing.T) {
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.Header().Set("Etag", `"x"`)
			w.WriteHeader(304)
		default:
			w.Header().Set("Content-Length", "11")
			io.WriteString(w, "hello world")
		}
	}), nil)
	_, f, pub := frontTo(t, addr, front.Options{})
	c, br := fronttest.DialFront(t, pub)
	tests := []struct {
		method, path string
		status       int
		length       string
	}{
		{"HEAD", "/", 200, "11"},
		{"GET", "/204", 204, ""},
		{"GET", "/304", 304, ""},
		{"GET", "/", 200, "11"},
		{"HEAD", "/", 200, "11"},
	}
	for _, tt := range tests {
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: %s\r\n\r\n", tt.method, tt.path, host)
		resp, body := fronttest.ReadResp(t, br, tt.method)
		if resp.StatusCode != tt.status || resp.Header.Get("Content-Length") != tt.length {
			t.Errorf("%s %s: %d Content-Length %q, want %d %q", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Content-Length"), tt.status, tt.length)
		}
		if want := map[bool]string{true: "hello world"}[tt.method == "GET" && tt.status == 200]; body != want {
			t.Errorf("%s %s: body %q, want %q", tt.method, tt.path, body, want)
		}
	}
	if n := front.Handoffs(f); n != 0 {
		t.Errorf("%d handoffs, want 0", n)
	}
}

// TestFrontStreaming: server-sent events reach the client as they are
// sent, and a client that hangs up mid-stream ends the backend request.
func TestFrontStreaming(t *testing.T) {
	next := make(chan struct{})
	ended := make(chan struct{})
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				close(ended)
				return
			}
		}
	}), nil)
	r, _, pub := frontTo(t, addr, front.Options{})
	c, br := fronttest.DialFront(t, pub)
	fmt.Fprintf(c, "GET /events HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if te := resp.TransferEncoding; len(te) != 1 || te[0] != "chunked" {
		t.Errorf("Transfer-Encoding = %v, want chunked", te)
	}
	rd := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := rd.ReadString('\n')
		if want := fmt.Sprintf("data: %d\n", i); line != want {
			t.Fatalf("event %d: %q, %v; want %q", i, line, err, want)
		}
		rd.ReadString('\n')
		next <- struct{}{}
	}
	c.Close()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend request did not end after the client hung up")
	}
	waitIdle(t, r, apiV1)
}

// TestFrontDirect: a request Direct does not pass goes to the Handler.
func TestFrontDirect(t *testing.T) {
	opts := front.Options{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "wrapper") }),
		Direct:  func(h, path string) bool { return !strings.HasPrefix(path, "/.well-known/") },
	}
	_, _, pub := frontTo(t, fronttest.EchoBackend(t), opts)
	for path, want := range map[string]string{"/x": "GET /x host=", "/.well-known/acme-challenge/t": "wrapper"} {
		c, br := fronttest.DialFront(t, pub)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host)
		if _, body := fronttest.ReadResp(t, br, "GET"); !strings.HasPrefix(body, want) {
			t.Errorf("%s: %q, want %q…", path, body, want)
		}
	}
}

// TestFrontTimeouts: a client that sends its header too slowly, or keeps a
// connection idle too long, is disconnected.
func TestFrontTimeouts(t *testing.T) {
	_, _, pub := frontTo(t, fronttest.EchoBackend(t), front.Options{ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	closedWithin := func(t *testing.T, c net.Conn, br *bufio.Reader, d time.Duration) {
		t.Helper()
		start := time.Now()
		c.SetReadDeadline(start.Add(5 * time.Second))
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("read a byte, want the connection closed")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the connection was not closed")
		}
		if el := time.Since(start); el > d {
			t.Errorf("closed after %v, want within %v", el, d)
		}
	}
	t.Run("slow header", func(t *testing.T) {
		c, br := fronttest.DialFront(t, pub)
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n", host)
		closedWithin(t, c, br, 2*time.Second)
	})
	t.Run("silent connection", func(t *testing.T) {
		c, br := fronttest.DialFront(t, pub)
		closedWithin(t, c, br, 2*time.Second)
	})
	t.Run("idle", func(t *testing.T) {
		c, br := fronttest.DialFront(t, pub)
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		fronttest.ReadResp(t, br, "GET")
		start := time.Now()
		closedWithin(t, c, br, 2*time.Second)
		if el := time.Since(start); el < 250*time.Millisecond {
			t.Errorf("idle connection closed after %v, before the idle timeout", el)
		}
	})
}

// TestFrontShutdown: Shutdown waits for a request in flight, closes idle
// connections and refuses new ones.
func TestFrontShutdown(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	}), nil)
	_, f, pub := frontTo(t, addr, front.Options{})
	idle, idleBR := fronttest.DialFront(t, pub)
	fmt.Fprintf(idle, "GET /first HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	fronttest.ReadResp(t, idleBR, "GET")
	// A connection handed to net/http, idle too.
	fallback, fallbackBR := fronttest.DialFront(t, pub)
	fmt.Fprintf(fallback, "POST /p HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\n\r\nx", host)
	fronttest.ReadResp(t, fallbackBR, "POST")

	busy, busyBR := fronttest.DialFront(t, pub)
	fmt.Fprintf(busy, "GET /slow HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- f.Shutdown(context.Background()) }()
	for _, c := range []struct {
		name string
		br   *bufio.Reader
	}{{"fast", idleBR}, {"net/http", fallbackBR}} {
		if _, err := c.br.ReadByte(); err == nil {
			t.Errorf("idle %s connection: read a byte, want it closed", c.name)
		}
	}
	if _, err := net.DialTimeout("tcp", pub, time.Second); err == nil {
		t.Error("a new connection was accepted during shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	resp, body := fronttest.ReadResp(t, busyBR, "GET")
	if resp.StatusCode != 200 || body != "done /slow" || !resp.Close {
		t.Errorf("in-flight request: %d %q close=%v, want 200 \"done /slow\" and Connection: close", resp.StatusCode, body, resp.Close)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the request finished")
	}
}

// TestFrontConcurrent mixes fast and net/http requests on many
// connections (meant for -race).
func TestFrontConcurrent(t *testing.T) {
	_, f, pub := frontTo(t, fronttest.EchoBackend(t), front.Options{})
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				method, body := "GET", ""
				switch (g + i) % 7 {
				case 3:
					method = "HEAD"
				case 5:
					method, body = "POST", fmt.Sprint(i)
				}
				req, _ := http.NewRequest(method, "http://"+pub+fmt.Sprintf("/%d/%d", g, i), strings.NewReader(body))
				if body == "" {
					req.Body = nil
				}
				req.Host = host
				resp, err := c.Do(req)
				if err != nil {
					t.Errorf("%s: %v", method, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				want := fmt.Sprintf("%s /%d/%d host=%s body=%q", method, g, i, host, body)
				if method == "HEAD" {
					want = ""
				}
				if resp.StatusCode != 200 || !strings.HasPrefix(string(b), want) {
					t.Errorf("%s /%d/%d: %d %q", method, g, i, resp.StatusCode, b)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d of the connections handed to net/http", front.Handoffs(f))
}

// TestFrontTLS: over TLS, HTTP/1.1 requests take the fast path and say
// X-Forwarded-Proto https; those handed to net/http after a fast one still
// see TLS; HTTP/2 connections are net/http's.
func TestFrontTLS(t *testing.T) {
	f, addr, pool := tlsFrontTo(t, fronttest.EchoBackend(t), front.Options{})

	t.Run("http/1.1", func(t *testing.T) {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		steps := []struct{ req, want string }{
			{"GET /a HTTP/1.1\r\nHost: " + host + "\r\n\r\n", `GET /a host=api.example.org body="" proto=https`},
			{"POST /b HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 2\r\n\r\nhi", `POST /b host=api.example.org body="hi" proto=https`},
			{"GET /c HTTP/1.1\r\nHost: old.example.org\r\n\r\n", ""},
		}
		before := front.Handoffs(f)
		for i, s := range steps {
			io.WriteString(c, s.req)
			resp, body := fronttest.ReadResp(t, br, "GET")
			if s.want == "" {
				if loc := resp.Header.Get("Location"); resp.StatusCode != 301 || loc != "https://"+host+"/c" {
					t.Errorf("redirect: %d %q, want 301 https://%s/c", resp.StatusCode, loc, host)
				}
				continue
			}
			if resp.StatusCode != 200 || body != s.want {
				t.Errorf("step %d: %d %q, want %q", i, resp.StatusCode, body, s.want)
			}
		}
		if n := front.Handoffs(f) - before; n != 1 {
			t.Errorf("%d handoffs, want 1 (the POST)", n)
		}
	})
	t.Run("h2", func(t *testing.T) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
		defer c.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https://"+addr+"/h2", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.Proto != "HTTP/2.0" || !strings.HasSuffix(string(b), "proto=https") {
			t.Errorf("got %s %q, want HTTP/2.0 and proto=https", resp.Proto, b)
		}
	})
}

// TestFrontConnectionClose: a client's Connection: close is answered with
// Connection: close, and the connection ends after the response.
func TestFrontConnectionClose(t *testing.T) {
	_, f, pub := frontTo(t, fronttest.EchoBackend(t), front.Options{})
	c, br := fronttest.DialFront(t, pub)
	fmt.Fprintf(c, "GET /bye HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, body := fronttest.ReadResp(t, br, "GET")
	if !resp.Close || !strings.HasPrefix(body, "GET /bye ") {
		t.Errorf("got close=%v %q, want Connection: close and the body", resp.Close, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the response: %v, want EOF", err)
	}
	if n := front.Handoffs(f); n != 0 {
		t.Errorf("%d handoffs, want 0", n)
	}
}
