package front_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"hostel/internal/front/fronttest"
)

// The transport of requests with a body, upgrades and Expect
// (roundtrip.go), beyond the bodies of forward_test.go: what
// http.Transport did for them before it.

// TestExpectContinue: a request with "Expect: 100-continue" sends its body
// once the app asks for it (the app's 100 reaches the client, which then
// sends it); an app that answers without asking gets no body, its answer
// reaches the client whole, and the next request is served on another
// connection.
func TestExpectContinue(t *testing.T) {
	addr, conns := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			w.WriteHeader(http.StatusExpectationFailed)
			io.WriteString(w, "not that body")
			return
		}
		b, _ := io.ReadAll(r.Body) // net/http's server sends the 100
		fmt.Fprintf(w, "got %q", b)
	}), nil)
	_, pub := routeTo(t, addr)

	t.Run("asked", func(t *testing.T) {
		c, br := fronttest.RawConn(t, pub)
		fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusContinue {
			t.Fatalf("got %v, %v; want 100 Continue before the body", resp, err)
		}
		io.WriteString(c, "hello")
		if resp, body := fronttest.ReadResp(t, br, "POST"); resp.StatusCode != 200 || body != `got "hello"` {
			t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, `got "hello"`)
		}
	})
	t.Run("answered first", func(t *testing.T) {
		before := conns.Load()
		c, br := fronttest.RawConn(t, pub)
		// The body follows at once, as from a client that does not
		// wait (curl waits a second): net/http's server in front reads
		// and drops what the app did not ask for before it answers.
		fmt.Fprintf(c, "POST /refuse HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello", host)
		if resp, body := fronttest.ReadResp(t, br, "POST"); resp.StatusCode != http.StatusExpectationFailed || body != "not that body" {
			t.Fatalf("got %d %q, want 417 %q", resp.StatusCode, body, "not that body")
		}
		resp, body := fronttest.Do(t, fronttest.Client, "POST", pub+"/echo", strings.NewReader("next"))
		if resp.StatusCode != 200 || string(body) != `got "next"` {
			t.Fatalf("next request: %d %q", resp.StatusCode, body)
		}
		if n := conns.Load() - before; n > 1 {
			t.Errorf("%d new app connections, want at most 1 (the declined one is not reused)", n)
		}
	})
}

// TestEarlyAnswer: an app that answers an upload before reading it has
// its answer passed on at once, while the body is still on its way.
func TestEarlyAnswer(t *testing.T) {
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		io.WriteString(w, "too large")
	}))
	_, pub := routeTo(t, addr)
	// A body that never ends: only an early answer can end the request.
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go func() {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	req, _ := http.NewRequest("POST", pub+"/upload", pr)
	req.Host = host
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := fronttest.Client.Do(req)
		if err != nil {
			t.Errorf("upload: %v", err)
			return
		}
		defer resp.Body.Close()
		if b, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusRequestEntityTooLarge || string(b) != "too large" {
			t.Errorf("got %d %q, want 413 %q", resp.StatusCode, b, "too large")
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("no answer while the body was still coming")
	}
}

// TestClientGoneEndsUpload: a client that hangs up while the app works on
// its upload ends the app's request, as for a request without a body.
func TestClientGoneEndsUpload(t *testing.T) {
	canceled := make(chan struct{})
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-time.After(10 * time.Second):
		}
	}))
	r, pub := routeTo(t, addr)
	c, _ := fronttest.RawConn(t, pub)
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\n\r\nhello", host)
	fronttest.WaitFor(t, "the request in flight", func() bool { return r.InFlight(apiV1) == 1 })
	c.Close()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the app's request was not ended after the client left")
	}
	waitIdle(t, r, apiV1)
}

// BenchmarkUpload: a POST with a 1 KiB body over a kept-alive HTTP/1.1
// connection, through net/http's server, httputil.ReverseProxy and its
// transport, to an app that reads it and answers.
func BenchmarkUpload(b *testing.B) {
	addr := fronttest.StartHandler(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n)
	}))
	_, pub := routeTo(b, addr)
	body := bytes.Repeat([]byte("u"), 1<<10)
	c := &http.Client{Timeout: 10 * time.Second}
	b.Cleanup(c.CloseIdleConnections)
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequest("POST", pub+"/upload", bytes.NewReader(body))
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != "1024" {
			b.Fatalf("got %d %q", resp.StatusCode, got)
		}
	}
}
