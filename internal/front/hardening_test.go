package front_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
	"hostel/internal/router"
	"hostel/internal/spec"
)

// The tests of issue 11: a public front end at least as strict as nginx.
// Each sends raw bytes over real sockets to a front end (event loops or
// goroutines, as -front-loops says) in front of a scripted raw TCP app.

// rawApp is an app that reads HTTP/1.1 requests and answers each with the
// bytes its script writes; it records the request lines it saw.
type rawApp struct {
	addr string
	mu   sync.Mutex
	seen []string // request lines, in order
	// release lets a script's late write go (poisoningApp); lateDone
	// receives a value when one is out.
	release  chan struct{}
	lateDone chan struct{}
	stop     chan struct{} // closed at the end of the test
}

func startRawApp(t testing.TB, script func(app *rawApp, req *http.Request, c net.Conn) (keep bool)) *rawApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &rawApp{addr: ln.Addr().String(), release: make(chan struct{}, 64), lateDone: make(chan struct{}, 64), stop: make(chan struct{})}
	var wg sync.WaitGroup
	t.Cleanup(func() { close(app.stop); ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					app.mu.Lock()
					app.seen = append(app.seen, req.Method+" "+req.RequestURI)
					app.mu.Unlock()
					if !script(app, req, c) {
						return
					}
				}
			})
		}
	})
	return app
}

func (app *rawApp) requests() []string {
	app.mu.Lock()
	defer app.mu.Unlock()
	return append([]string(nil), app.seen...)
}

// answer is the app's normal response to a request for path.
func answer(path string) string {
	body := "for " + path
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

const poison = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED"

// poisoningApp answers /resp/shortchunk chunked and, once the test lets
// it (poison), writes a whole response more on the connection,
// /resp/late likewise after a response with a Content-Length;
// /resp/largeglued with a body of 10,000 bytes and a response more in the
// same write; everything else normally.
func poisoningApp(t testing.TB) *rawApp {
	return startRawApp(t, func(app *rawApp, req *http.Request, c net.Conn) bool {
		switch req.URL.Path {
		case "/resp/largeglued":
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n%s%s", strings.Repeat("l", 10000), poison)
			return true
		case "/resp/shortchunk":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
		case "/resp/late":
			io.WriteString(c, answer(req.URL.Path))
		default:
			io.WriteString(c, answer(req.URL.Path))
			return true
		}
		select {
		case <-app.release:
		case <-app.stop:
			return false
		}
		io.WriteString(c, poison)
		waitDelivered(t, c)
		app.lateDone <- struct{}{}
		return true
	})
}

// poison has the app write its late bytes after the response the client
// just read — on the connection the front end took back into its pool —
// and returns once they are in the front end's socket: the next request
// comes after them, always.
func (app *rawApp) poison(t testing.TB) {
	t.Helper()
	app.release <- struct{}{}
	select {
	case <-app.lateDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the app's late write is not out after 10 s")
	}
}

// exchange sends one raw request on a new connection and returns the
// response (nil if none came) and its body.
func exchange(t testing.TB, pub, raw string) (*http.Response, string) {
	t.Helper()
	c, br := fronttest.RawConn(t, "http://"+pub)
	defer c.Close()
	go io.WriteString(c, raw) // the front end may answer before it has read everything
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, ""
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// closedAfter reports whether the front end closed c after its answer.
func closedAfter(c net.Conn, br *bufio.Reader) bool {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := br.ReadByte()
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestPoisonedAppConnection is finding 1: an app that writes after the
// end of a response must not have those bytes, nor any response after
// them, delivered to another client, on any path.
func TestPoisonedAppConnection(t *testing.T) {
	big := "X-Big: " + strings.Repeat("b", 5000) + "\r\n" // a head over 4 KiB: net/http's
	for _, tc := range []struct {
		name, poisoner string
		clients        []string // request formats, %s the path
	}{
		// An event loop reads a response of more than 8 KiB up to its
		// end exactly: what follows stays in the socket, past the edge
		// epoll reported, so the loop never sees it while the
		// connection is idle.
		{"large glued then HTTP/1.1", "/resp/largeglued", []string{"GET %s HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n"}},
		{"chunked then HTTP/1.0", "/resp/shortchunk", []string{"GET %s HTTP/1.0\r\nHost: " + host + "\r\n\r\n"}},
		{"chunked then large heads", "/resp/shortchunk", []string{"GET %s HTTP/1.1\r\nHost: " + host + "\r\n" + big + "Connection: close\r\n\r\n"}},
		{"chunked then HTTP/1.1", "/resp/shortchunk", []string{"GET %s HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n"}},
		{"late then HTTP/1.1", "/resp/late", []string{"GET %s HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n"}},
		{"late then HTTP/1.0", "/resp/late", []string{"GET %s HTTP/1.0\r\nHost: " + host + "\r\n\r\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := poisoningApp(t)
			r, _, pub := frontTo(t, app.addr, front.Options{})
			resp, _ := exchange(t, pub, "GET "+tc.poisoner+" HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
			if resp == nil || resp.StatusCode != 200 {
				t.Fatalf("poisoning request: %v", resp)
			}
			if tc.poisoner != "/resp/largeglued" {
				app.poison(t)
			}
			for _, format := range tc.clients {
				for _, path := range []string{"/alice/private", "/bob", "/carol"} {
					resp, body := exchange(t, pub, fmt.Sprintf(format, path))
					if resp == nil || resp.StatusCode != 200 || body != "for "+path {
						t.Fatalf("GET %s: got %v %q, want 200 %q", path, resp, body, "for "+path)
					}
				}
			}
			fronttest.WaitFor(t, "nothing in flight", func() bool { return r.InFlight(apiV1) == 0 })
		})
	}
}

// TestPoisonedAppConnectionWithBody is finding 1 on the path of requests
// with a body (httputil.ReverseProxy), over HTTP/2 as a browser on HTTPS
// sends them and over HTTP/1.1: the connection the app wrote to after its
// response is not used again, and the request, whose connection failed its
// check before anything of it was written, is sent on another and gets
// its own answer — never another's, nor a 502. (http.Transport failed
// this: its reader goroutine had read the stray bytes into its buffer,
// where no check before reuse sees them, and took them as the answer of a
// request that came before it dropped the connection.)
func TestPoisonedAppConnectionWithBody(t *testing.T) {
	for _, proto := range []string{"HTTP/2", "HTTP/1.1"} {
		t.Run(proto, func(t *testing.T) {
			app := poisoningApp(t)
			var do func(method, path, body string) (int, string)
			if proto == "HTTP/2" {
				do = h2Client(t, app.addr)
			} else {
				do = h1Client(t, app.addr)
			}
			for round := range 10 {
				if code, _ := do("POST", "/resp/shortchunk", "hello"); code != 200 {
					t.Fatalf("round %d: poisoning request: %d", round, code)
				}
				app.poison(t)
				for _, path := range []string{"/alice/private", "/bob"} {
					if code, body := do("POST", path, "hello"); code != 200 || body != "for "+path {
						t.Fatalf("round %d: POST %s: got %d %q, want 200 %q", round, path, code, body, "for "+path)
					}
				}
			}
		})
	}
}

// h1Client is h2Client over HTTP/1.1 without TLS, each request on a new
// connection, so that the front end hands it to net/http.
func h1Client(t *testing.T, addr string) func(method, path, body string) (int, string) {
	t.Helper()
	_, _, pub := frontTo(t, addr, front.Options{})
	return func(method, path, body string) (int, string) {
		t.Helper()
		resp, got := exchange(t, pub, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", method, path, host, len(body), body))
		if resp == nil {
			t.Fatalf("%s %s: no response", method, path)
		}
		return resp.StatusCode, got
	}
}

// h2Client serves a front end over TLS with HTTP/2 in front of the app at
// addr and returns a function that sends one request through it over
// HTTP/2 (one client connection for all) and returns status and body.
func h2Client(t *testing.T, addr string) func(method, path, body string) (int, string) {
	t.Helper()
	_, pub, pool := tlsFrontTo(t, addr, front.Options{})
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}, Timeout: 10 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return func(method, path, body string) (int, string) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, "https://"+pub+path, rd)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("%s %s: served over %s, want HTTP/2", method, path, resp.Proto)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

// TestLargeHeads is finding 2: heads past the limits are answered 431 or
// 414 and the connection closed, and the app never sees them; on a new
// connection and on one net/http serves already.
func TestLargeHeads(t *testing.T) {
	app := startRawApp(t, func(_ *rawApp, req *http.Request, c net.Conn) bool {
		io.WriteString(c, answer(req.URL.Path))
		return true
	})
	_, _, pub := frontTo(t, app.addr, front.Options{})
	var many strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&many, "X-H%d: v\r\n", i)
	}
	tests := []struct {
		name, raw string
		want      int
	}{
		{"1 MB header", "GET /a HTTP/1.1\r\nHost: " + host + "\r\nX-Big: " + strings.Repeat("a", 1<<20) + "\r\n\r\n", 431},
		{"10000 headers", "GET /a HTTP/1.1\r\nHost: " + host + "\r\n" + many.String() + "\r\n", 431},
		{"100 KiB request line", "GET /" + strings.Repeat("a", 100<<10) + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 414},
		{"9 KiB request line", "GET /" + strings.Repeat("a", 9<<10) + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 414},
		{"unfinished 1 MB head", "GET /a HTTP/1.1\r\nHost: " + host + "\r\nX-Big: " + strings.Repeat("a", 1<<20), 431},
		{"20 KiB head is served", "GET /ok HTTP/1.1\r\nHost: " + host + "\r\nX-Big: " + strings.Repeat("a", 20<<10) + "\r\nConnection: close\r\n\r\n", 200},
	}
	for _, tc := range tests {
		for _, after := range []string{"", "POST /first HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 2\r\n\r\nhi"} {
			name := tc.name
			if after != "" {
				name += " after an upload"
			}
			t.Run(name, func(t *testing.T) {
				before := len(app.requests())
				c, br := fronttest.RawConn(t, "http://"+pub)
				go io.WriteString(c, after+tc.raw)
				if after != "" {
					if resp, body := fronttest.ReadResp(t, br, "POST"); resp.StatusCode != 200 || body != "for /first" {
						t.Fatalf("upload: %d %q", resp.StatusCode, body)
					}
				}
				resp, _ := fronttest.ReadResp(t, br, "GET")
				if resp.StatusCode != tc.want {
					t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
				}
				seen := app.requests()[before:]
				if tc.want != 200 {
					if !closedAfter(c, br) {
						t.Errorf("connection left open after %d", tc.want)
					}
					if after != "" && len(seen) != 1 || after == "" && len(seen) != 0 {
						t.Errorf("app saw %d requests, want only the upload", len(seen))
					}
				}
			})
		}
	}
}

// TestStalledBody is finding 3: a body that does not start is answered
// 408 without an app connection; one that stalls midway is answered 408
// and the connection closed.
func TestStalledBody(t *testing.T) {
	app := startRawApp(t, func(_ *rawApp, req *http.Request, c net.Conn) bool {
		io.WriteString(c, answer(req.URL.Path))
		return true
	})
	var conns atomic.Int64
	counted := countConns(t, app.addr, &conns)
	r, _, pub := frontTo(t, counted, front.Options{BodyTimeout: 300 * time.Millisecond})
	tests := []struct{ name, raw string }{
		{"no body", "POST /upload HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 1000\r\n\r\n"},
		{"no chunk", "POST /upload HTTP/1.1\r\nHost: " + host + "\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"HTTP/1.0", "POST /upload HTTP/1.0\r\nHost: " + host + "\r\nContent-Length: 1000\r\n\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, br := fronttest.RawConn(t, "http://"+pub)
			io.WriteString(c, tc.raw)
			resp, _ := fronttest.ReadResp(t, br, "POST")
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("status %d, want 408", resp.StatusCode)
			}
			if !closedAfter(c, br) {
				t.Error("connection left open")
			}
			if n := conns.Load(); n != 0 {
				t.Errorf("app got %d connections, want 0", n)
			}
		})
	}
	t.Run("stalls midway", func(t *testing.T) {
		c, br := fronttest.RawConn(t, "http://"+pub)
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 1000\r\n\r\n"+strings.Repeat("x", 500))
		resp, _ := fronttest.ReadResp(t, br, "POST")
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("status %d, want 408", resp.StatusCode)
		}
		if !closedAfter(c, br) {
			t.Error("connection left open")
		}
		fronttest.WaitFor(t, "nothing in flight", func() bool { return r.InFlight(apiV1) == 0 })
	})
	t.Run("slow body is served", func(t *testing.T) {
		c, br := fronttest.RawConn(t, "http://"+pub)
		io.WriteString(c, "POST /slow HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 4\r\n\r\n")
		for _, b := range "abcd" {
			time.Sleep(100 * time.Millisecond) // under the timeout between reads
			io.WriteString(c, string(b))
		}
		if resp, body := fronttest.ReadResp(t, br, "POST"); resp.StatusCode != 200 || body != "for /slow" {
			t.Fatalf("got %d %q, want 200", resp.StatusCode, body)
		}
	})
}

// countConns puts a counting TCP relay in front of addr.
func countConns(t testing.TB, addr string, n *atomic.Int64) string {
	t.Helper()
	return rawBackend(t, func(c net.Conn) {
		n.Add(1)
		up, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		defer up.Close()
		go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
		io.Copy(c, up)
	})
}

// TestClientNeverReads is finding 4: a client that stops reading is let
// go of after the write timeout, which frees the app.
func TestClientNeverReads(t *testing.T) {
	var mu sync.Mutex
	done := map[string]chan error{"/HTTP/1.1": make(chan error, 1), "/HTTP/1.0": make(chan error, 1)}
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := bytes.Repeat([]byte("z"), 1<<20)
		w.Header().Set("Content-Length", fmt.Sprint(64<<20))
		var err error
		for range 64 {
			if _, err = w.Write(buf); err != nil {
				break
			}
		}
		mu.Lock()
		done[r.URL.Path] <- err
		mu.Unlock()
	}))
	r, _, pub := frontTo(t, addr, front.Options{WriteTimeout: 300 * time.Millisecond})
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run(proto, func(t *testing.T) {
			c, _ := fronttest.RawConn(t, "http://"+pub)
			c.(*net.TCPConn).SetReadBuffer(4096)
			fmt.Fprintf(c, "GET /%s %s\r\nHost: %s\r\n\r\n", proto, proto, host)
			// Never read. The app must be freed: its write fails.
			select {
			case err := <-done["/"+proto]:
				if err == nil {
					t.Fatal("the app wrote 64 MiB to a client that reads nothing")
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the app is still blocked after 30 s")
			}
			fronttest.WaitFor(t, "nothing in flight", func() bool { return r.InFlight(apiV1) == 0 })
		})
	}
}

// TestContentLengthWithTransferEncoding is finding 5: RFC 9112 §6.1 — such
// a request is answered 400 and the connection closed, never forwarded.
func TestContentLengthWithTransferEncoding(t *testing.T) {
	app := startRawApp(t, func(_ *rawApp, req *http.Request, c net.Conn) bool {
		io.WriteString(c, answer(req.URL.Path))
		return true
	})
	_, _, pub := frontTo(t, app.addr, front.Options{})
	const body = "5\r\nhello\r\n0\r\n\r\n"
	for _, te := range []string{
		"Transfer-Encoding: chunked", "Transfer-Encoding: CHUNKED", "Transfer-Encoding:\tchunked",
		"Transfer-Encoding:\r\n chunked", "transfer-encoding: chunked",
	} {
		for _, first := range []string{"", "GET /first HTTP/1.0\r\nHost: " + host + "\r\nConnection: keep-alive\r\n\r\n"} {
			name := fmt.Sprintf("%q", te)
			if first != "" {
				name += " after HTTP/1.0"
			}
			t.Run(name, func(t *testing.T) {
				before := len(app.requests())
				c, br := fronttest.RawConn(t, "http://"+pub)
				go io.WriteString(c, first+"POST /smuggle HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 20\r\n"+te+"\r\n\r\n"+body)
				if first != "" {
					if resp, _ := fronttest.ReadResp(t, br, "GET"); resp.StatusCode != 200 {
						t.Fatalf("first request: %d", resp.StatusCode)
					}
				}
				resp, _ := fronttest.ReadResp(t, br, "POST")
				if resp.StatusCode != http.StatusBadRequest {
					t.Fatalf("status %d, want 400", resp.StatusCode)
				}
				if !closedAfter(c, br) {
					t.Error("connection left open")
				}
				for _, s := range app.requests()[before:] {
					if strings.Contains(s, "smuggle") {
						t.Errorf("app saw %q", s)
					}
				}
			})
		}
	}
}

// TestInternalZone is finding 6: immutable names answer loopback clients
// only (Options.Internal decides), and public error pages name no service
// or version.
func TestInternalZone(t *testing.T) {
	vhost := spec.VersionHost("api", "111111111111", zone)
	for _, tc := range []struct {
		name     string
		internal func(netip.Addr) bool
		want     int
	}{
		{"loopback client", nil, 200},
		{"public client", func(netip.Addr) bool { return false }, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := router.New(router.Options{Zone: zone, Logf: t.Logf, Internal: tc.internal})
			t.Cleanup(func() { r.Close() })
			r.AddBackend(apiV1, fronttest.StartBackend(t, "v1"))
			_, pub := fronttest.Serve(t, r, front.Options{})
			for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
				resp, body := exchange(t, pub, "GET / "+proto+"\r\nHost: "+vhost+"\r\nConnection: close\r\n\r\n")
				if resp == nil || resp.StatusCode != tc.want {
					t.Fatalf("%s: %v %q, want %d", proto, resp, body, tc.want)
				}
			}
		})
	}
	t.Run("a real non-loopback address", func(t *testing.T) {
		local := nonLoopbackAddr(t)
		r := router.New(router.Options{Zone: zone, Logf: t.Logf})
		t.Cleanup(func() { r.Close() })
		r.AddBackend(apiV1, fronttest.StartBackend(t, "v1"))
		ln, err := net.Listen("tcp", net.JoinHostPort(local.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		f := front.New(r, front.Options{Loops: *fronttest.Loops})
		go f.Serve(ln)
		t.Cleanup(func() { f.Close() })
		resp, _ := exchange(t, ln.Addr().String(), "GET / HTTP/1.1\r\nHost: "+vhost+"\r\nConnection: close\r\n\r\n")
		if resp == nil || resp.StatusCode != 404 {
			t.Fatalf("got %v, want 404", resp)
		}
	})
	t.Run("error pages", func(t *testing.T) {
		r, pub := startRouter(t, router.Options{})
		r.AddBackend(apiV1, "127.0.0.1:1") // refuses
		mustSwap(t, r, router.Table{Domains: map[string]spec.VersionKey{host: apiV1}})
		for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
			resp, body := exchange(t, strings.TrimPrefix(pub, "http://"), "GET / "+proto+"\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
			if resp == nil || resp.StatusCode != 502 {
				t.Fatalf("%s: got %v, want 502", proto, resp)
			}
			if strings.Contains(body, "api") || strings.Contains(body, "111111111111") {
				t.Errorf("%s: error page %q names the service or version", proto, body)
			}
		}
	})
}

// nonLoopbackAddr returns an address of this machine that is not
// loopback, or skips the test.
func nonLoopbackAddr(t *testing.T) netip.Addr {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			return p.Addr()
		}
	}
	t.Skip("no non-loopback IPv4 address on this machine")
	return netip.Addr{}
}

// TestSmallerFindings is finding 7: header names with "_" are dropped,
// CONNECT and TRACE never reach the app, and a broken chunked body is the
// client's fault (400).
func TestSmallerFindings(t *testing.T) {
	app := startRawApp(t, func(_ *rawApp, req *http.Request, c net.Conn) bool {
		var b strings.Builder
		req.Header.Write(&b)
		body := b.String()
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return true
	})
	_, _, pub := frontTo(t, app.addr, front.Options{})
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run("underscore "+proto, func(t *testing.T) {
			resp, body := exchange(t, pub, "GET / "+proto+"\r\nHost: "+host+"\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_Ip: 6.6.6.6\r\nConnection: close\r\n\r\n")
			if resp == nil || resp.StatusCode != 200 {
				t.Fatalf("got %v", resp)
			}
			if strings.Contains(body, "6.6.6.6") {
				t.Errorf("the app got the client's underscore fields:\n%s", body)
			}
		})
	}
	tests := []struct {
		name, raw string
		want      int
	}{
		{"CONNECT", "CONNECT " + host + ":443 HTTP/1.1\r\nHost: " + host + ":443\r\n\r\n", 405},
		{"CONNECT origin-form", "CONNECT / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 405},
		{"TRACE", "TRACE / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 405},
		{"TRACE HTTP/1.0", "TRACE / HTTP/1.0\r\nHost: " + host + "\r\n\r\n", 405},
		// Methods are case-sensitive (RFC 9110 §9.1), but an app that
		// upper-cases them would answer these as TRACE: refused as
		// nginx refuses any method that is not upper-case.
		{"trace", "trace / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 400},
		{"TrAcE", "TrAcE / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 400},
		{"trace HTTP/1.0", "trace / HTTP/1.0\r\nHost: " + host + "\r\n\r\n", 400},
		{"connect", "connect / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 400},
		{"get", "get / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 400},
		{"method with a digit", "G3T / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 400},
		{"lower-case after a request", "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\ntrace / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 0},
		{"broken chunked body", "POST / HTTP/1.1\r\nHost: " + host + "\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400},
		{"obsolete line folding", "GET / HTTP/1.1\r\nHost: " + host + "\r\nX-A: a\r\n b\r\n\r\n", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(app.requests())
			if tc.want == 0 {
				// A GET answered, then the refusal, on one connection.
				c, br := fronttest.RawConn(t, "http://"+pub)
				io.WriteString(c, tc.raw)
				if resp, _ := fronttest.ReadResp(t, br, "GET"); resp.StatusCode != 200 {
					t.Fatalf("first request: %d", resp.StatusCode)
				}
				if resp, _ := fronttest.ReadResp(t, br, "GET"); resp.StatusCode != 400 {
					t.Fatalf("second request: %d, want 400", resp.StatusCode)
				}
				if seen := app.requests()[before:]; len(seen) != 1 {
					t.Errorf("app saw %q, want only the GET", seen)
				}
				return
			}
			resp, _ := exchange(t, pub, tc.raw)
			if resp == nil || resp.StatusCode != tc.want {
				t.Fatalf("got %v, want %d", resp, tc.want)
			}
			if tc.name != "broken chunked body" {
				if seen := app.requests()[before:]; len(seen) != 0 {
					t.Errorf("app saw %q", seen)
				}
			}
		})
	}
}

// TestPoolNeverCrossesResponses is the property of issue 11's finding 1:
// whatever an app does — bytes after a response, short bodies, a close
// mid-response, 1xx, an unasked 101 — interleaved with clients of every
// kind, on every forwarding path, a client never receives bytes the app
// wrote for another request.
func TestPoolNeverCrossesResponses(t *testing.T) {
	behaviours := []string{"ok", "chunked", "late", "latechunk", "glued", "short", "closehead", "early", "switch", "close"}
	app := startRawApp(t, func(app *rawApp, req *http.Request, c net.Conn) bool {
		kind, id, _ := strings.Cut(strings.TrimPrefix(req.URL.Path, "/"), "/")
		body := "id=" + id
		ok := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		evil := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nPOISON-%s", 7+len(id), id)
		switch kind {
		case "ok":
			io.WriteString(c, ok)
		case "chunked":
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(body), body)
		case "late", "latechunk":
			if kind == "late" {
				io.WriteString(c, ok)
			} else {
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(body), body)
			}
			time.Sleep(10 * time.Millisecond)
			io.WriteString(c, evil)
			waitDelivered(t, c)
			app.lateDone <- struct{}{}
		case "glued":
			io.WriteString(c, ok+evil)
		case "short":
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n%s", body)
			return false
		case "closehead":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Len")
			return false
		case "early":
			io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+ok)
		case "switch":
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\n\r\n"+evil)
		case "close":
			io.WriteString(c, strings.Replace(ok, "\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1))
			return false
		}
		return true
	})
	r, _, pub := frontTo(t, app.addr, front.Options{})
	big := "X-Big: " + strings.Repeat("b", 5000) + "\r\n"
	formats := []string{
		"GET %s HTTP/1.1\r\nHost: " + host + "\r\n\r\n",
		"GET %s HTTP/1.0\r\nHost: " + host + "\r\nConnection: keep-alive\r\n\r\n",
		"GET %s HTTP/1.1\r\nHost: " + host + "\r\n" + big + "\r\n",
		// A body: httputil.ReverseProxy's path, on the same pool.
		"POST %s HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 5\r\n\r\nhello",
	}
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 11))
			// A few client connections kept across requests.
			type client struct {
				c  net.Conn
				br *bufio.Reader
			}
			clients := make([]*client, 4)
			for i := range 120 {
				k := rnd.IntN(len(clients))
				if clients[k] == nil {
					c, br := fronttest.RawConn(t, "http://"+pub)
					clients[k] = &client{c, br}
				}
				cl := clients[k]
				kind := behaviours[rnd.IntN(len(behaviours))]
				id := fmt.Sprintf("%d-%d", seed, i)
				fmt.Fprintf(cl.c, formats[rnd.IntN(len(formats))], "/"+kind+"/"+id)
				resp, err := http.ReadResponse(cl.br, nil)
				for err == nil && resp.StatusCode < 200 {
					resp, err = http.ReadResponse(cl.br, nil) // 103 passed on
				}
				var got []byte
				if err == nil {
					got, err = io.ReadAll(resp.Body)
				}
				if bytes.Contains(got, []byte("POISON")) || bytes.Contains(got, []byte("id=")) && !bytes.Equal(got, []byte("id="+id)) {
					t.Fatalf("request %s/%s got %q: another request's bytes", kind, id, got)
				}
				switch kind {
				case "ok", "chunked", "late", "latechunk", "glued", "early", "close":
					if err != nil || resp.StatusCode != 200 || string(got) != "id="+id {
						t.Fatalf("request %s/%s: %v %q (%v), want 200 id=%s", kind, id, resp, got, err, id)
					}
				}
				if kind == "late" || kind == "latechunk" {
					<-app.lateDone // as in the issue: the next client comes after the late bytes
				}
				if err != nil || resp.Close {
					cl.c.Close()
					clients[k] = nil
				}
			}
			for _, cl := range clients {
				if cl != nil {
					cl.c.Close()
				}
			}
			fronttest.WaitFor(t, "nothing in flight", func() bool { return r.InFlight(apiV1) == 0 })
		})
	}
}

// TestHTTP2Hardening: HTTP/2 connections (every browser on HTTPS) are
// net/http's, behind the same guard: CONNECT and TRACE are refused,
// fields with "_" dropped, a stalled body answered 408 without the app.
func TestHTTP2Hardening(t *testing.T) {
	var requests atomic.Int64
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		r.Header.Write(w)
	}))
	_, pub, pool := tlsFrontTo(t, addr, front.Options{BodyTimeout: 300 * time.Millisecond})
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}, Timeout: 10 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	url := "https://" + pub + "/"
	do := func(method string, body io.Reader, header map[string]string) (*http.Response, string) {
		req, _ := http.NewRequest(method, url, body)
		req.Host = host
		for k, v := range header {
			req.Header[k] = []string{v}
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.ProtoMajor != 2 {
			t.Fatalf("%s: served over %s, want HTTP/2", method, resp.Proto)
		}
		return resp, string(b)
	}
	if resp, body := do("GET", nil, map[string]string{"X_forwarded_for": "6.6.6.6"}); resp.StatusCode != 200 || strings.Contains(body, "6.6.6.6") {
		t.Errorf("GET with X_forwarded_for: %d, the app got:\n%s", resp.StatusCode, body)
	}
	before := requests.Load()
	if resp, _ := do("TRACE", nil, nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("TRACE: %d, want 405", resp.StatusCode)
	}
	for _, m := range []string{"trace", "TrAcE", "get"} {
		if resp, _ := do(m, nil, nil); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", m, resp.StatusCode)
		}
	}
	pr, pw := io.Pipe() // a body that never comes
	t.Cleanup(func() { pw.Close() })
	if resp, _ := do("POST", pr, nil); resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("stalled POST: %d, want 408", resp.StatusCode)
	}
	if n := requests.Load() - before; n != 0 {
		t.Errorf("the app got %d requests, want none", n)
	}
}

// TestPoisonedAppConnectionHTTP2: finding 1 over HTTP/2, which every
// request from a browser on HTTPS takes. (A bodiless HTTP/2 request goes
// to the forwarder, like one over HTTP/1.1; this keeps the property
// whichever path it takes.)
func TestPoisonedAppConnectionHTTP2(t *testing.T) {
	app := poisoningApp(t)
	do := h2Client(t, app.addr)
	get := func(path string) (int, string) { return do("GET", path, "") }
	if code, _ := get("/resp/shortchunk"); code != 200 {
		t.Fatalf("poisoning request: %d", code)
	}
	app.poison(t)
	for _, path := range []string{"/alice/private", "/bob", "/carol"} {
		if code, body := get(path); code != 200 || body != "for "+path {
			t.Fatalf("GET %s: got %d %q, want 200 %q", path, code, body, "for "+path)
		}
	}
}
