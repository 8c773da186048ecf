package front_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
)

func TestRequestBodies(t *testing.T) {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%s %d %x te=%v", r.Method, n, h.Sum(nil), r.TransferEncoding)
	})
	addr, _ := fronttest.CountingBackend(t, echo, nil)
	_, pub := routeTo(t, addr)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB

	tests := []struct {
		name    string
		method  string
		body    func() io.Reader // nil: no body
		chunked bool
		want    []byte
	}{
		{"GET without body", "GET", nil, false, nil},
		{"POST without body", "POST", nil, false, nil},
		{"DELETE without body", "DELETE", nil, false, nil},
		{"POST small", "POST", func() io.Reader { return strings.NewReader("hello") }, false, []byte("hello")},
		{"PUT large", "PUT", func() io.Reader { return bytes.NewReader(big) }, false, big},
		{"POST chunked", "POST", func() io.Reader { return io.MultiReader(strings.NewReader("hel"), strings.NewReader("lo")) }, true, []byte("hello")},
		{"POST large chunked", "POST", func() io.Reader { return io.MultiReader(bytes.NewReader(big[:1<<20]), bytes.NewReader(big[1<<20:])) }, true, big},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != nil {
				body = tt.body()
			}
			req, _ := http.NewRequest(tt.method, pub+"/", body)
			req.Host = host
			if tt.chunked {
				req.ContentLength = -1 // a plain io.Reader: sent chunked
			}
			resp, err := fronttest.Client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			sum := sha256.Sum256(tt.want)
			want := fmt.Sprintf("%s %d %x", tt.method, len(tt.want), sum)
			if resp.StatusCode != 200 || !strings.HasPrefix(string(got), want) {
				t.Errorf("got %d %q, want 200 %q…", resp.StatusCode, got, want)
			}
		})
	}
}

func TestResponseBodies(t *testing.T) {
	big := bytes.Repeat([]byte("abcdefghijklmnop"), 1<<19) // 8 MiB
	addr, conns := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			w.Write(big)
		case "/big-chunked":
			w.Write(big[:1<<20])
			w.(http.Flusher).Flush()
			w.Write(big[1<<20:])
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.Header().Set("ETag", `"x"`)
			w.WriteHeader(http.StatusNotModified)
		case "/head":
			w.Header().Set("Content-Length", "1234")
			w.Header().Set("X-Head", "yes")
		case "/trailer":
			w.Header().Set("Trailer", "X-Checksum")
			io.WriteString(w, "body")
			w.Header().Set("X-Checksum", "abc")
		default:
			io.WriteString(w, "hello")
		}
	}), nil)
	_, pub := routeTo(t, addr)
	// One client connection, so that a response that leaves bytes
	// behind or hangs breaks the next test case.
	c := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}, Timeout: 10 * time.Second}
	t.Cleanup(c.CloseIdleConnections)

	tests := []struct {
		name, method, path string
		wantStatus         int
		wantBody           []byte
		check              func(t *testing.T, resp *http.Response)
	}{
		{"large", "GET", "/big", 200, big, func(t *testing.T, resp *http.Response) {
			if resp.ContentLength != int64(len(big)) {
				t.Errorf("Content-Length = %d, want %d", resp.ContentLength, len(big))
			}
		}},
		{"large chunked", "GET", "/big-chunked", 200, big, nil},
		{"204", "GET", "/204", 204, nil, nil},
		{"304", "GET", "/304", 304, nil, func(t *testing.T, resp *http.Response) {
			if got := resp.Header.Get("ETag"); got != `"x"` {
				t.Errorf("ETag = %q", got)
			}
		}},
		{"HEAD", "HEAD", "/head", 200, nil, func(t *testing.T, resp *http.Response) {
			if resp.ContentLength != 1234 || resp.Header.Get("X-Head") != "yes" {
				t.Errorf("HEAD: Content-Length %d, X-Head %q; want 1234, yes", resp.ContentLength, resp.Header.Get("X-Head"))
			}
		}},
		{"trailer", "GET", "/trailer", 200, []byte("body"), func(t *testing.T, resp *http.Response) {
			if got := resp.Trailer.Get("X-Checksum"); got != "abc" {
				t.Errorf("trailer X-Checksum = %q, want abc", got)
			}
		}},
		{"after all that", "GET", "/", 200, []byte("hello"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := fronttest.Do(t, c, tt.method, pub+tt.path, nil)
			if resp.StatusCode != tt.wantStatus || !bytes.Equal(body, tt.wantBody) {
				t.Errorf("got %d and %d bytes, want %d and %d bytes", resp.StatusCode, len(body), tt.wantStatus, len(tt.wantBody))
			}
			if tt.check != nil {
				tt.check(t, resp)
			}
		})
	}
	// Every response above was read to its end: the router kept using
	// one backend connection.
	if n := conns.Load(); n != 1 {
		t.Errorf("backend connections = %d, want 1 (keep-alive)", n)
	}
}

func TestHeaders(t *testing.T) {
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Resp", "kept")
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded",
			"User-Agent", "X-Hop", "Keep-Alive", "Proxy-Authorization", "Te", "X-App"} {
			fmt.Fprintf(w, "%s=%q\n", k, r.Header.Values(k))
		}
		fmt.Fprintf(w, "Host=%q\nURI=%q\n", r.Host, r.RequestURI)
	}), nil)
	_, pub := routeTo(t, addr)

	c, br := fronttest.RawConn(t, pub)
	fmt.Fprint(c, "GET /a%2Fb/c?x=1&y=%20 HTTP/1.1\r\nHost: API.example.org:8080\r\n"+
		"Connection: keep-alive, X-Hop\r\nX-Hop: gone\r\nKeep-Alive: timeout=1\r\n"+
		"Proxy-Authorization: Basic eA==\r\nTE: trailers, deflate\r\n"+
		"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n"+
		"X-App: a\r\nX-App: b\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`X-Forwarded-For=["127.0.0.1"]`,
		`X-Forwarded-Host=["API.example.org:8080"]`,
		`X-Forwarded-Proto=["http"]`,
		`Forwarded=[]`,
		`User-Agent=[]`,
		`X-Hop=[]`,
		`Keep-Alive=[]`,
		`Proxy-Authorization=[]`,
		`Te=["trailers"]`,
		`X-App=["a" "b"]`,
		`Host="API.example.org:8080"`,
		`URI="/a%2Fb/c?x=1&y=%20"`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("backend saw:\n%s\nwant a line %s", body, want)
		}
	}
	for _, k := range []string{"X-Resp-Hop", "Keep-Alive"} {
		if v := resp.Header.Values(k); len(v) > 0 {
			t.Errorf("client got hop-by-hop response header %s: %q", k, v)
		}
	}
	if got := resp.Header.Get("X-Resp"); got != "kept" {
		t.Errorf("X-Resp = %q, want kept (response header %v)", got, resp.Header)
	}
}

// TestPeerFieldsStripped: the fields one node of a cluster sends another
// with a request (which instance, which client) are never passed on from
// a client, on the fast path or the ReverseProxy path: a client cannot
// name an instance, nor tell an app it is another client.
func TestPeerFieldsStripped(t *testing.T) {
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		for _, k := range []string{front.PeerInstanceField, front.PeerClientField, front.PeerProtoField, "X-App"} {
			fmt.Fprintf(w, "%s=%q\n", k, r.Header.Values(k))
		}
	}), nil)
	_, pub := routeTo(t, addr)
	for _, tc := range []struct{ name, head string }{
		{"fast path", "GET / HTTP/1.1\r\n"},
		{"ReverseProxy path", "POST / HTTP/1.1\r\nContent-Length: 1\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := fronttest.RawConn(t, pub)
			fmt.Fprint(c, tc.head+"Host: "+host+"\r\nHostel-Peer-Instance: web-aaaaaaaaaaaa\r\n"+
				"HOSTEL-PEER-CLIENT: 6.6.6.6:1\r\nhostel-peer-proto: https\r\nX-App: a\r\n\r\nx")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := "Hostel-Peer-Instance=[]\nHostel-Peer-Client=[]\nHostel-Peer-Proto=[]\nX-App=[\"a\"]\n"
			if string(body) != want {
				t.Errorf("backend saw:\n%s\nwant\n%s", body, want)
			}
		})
	}
}

func TestBackendConnectionClose(t *testing.T) {
	addr, conns := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, "ok "+r.URL.Path)
	}), nil)
	_, pub := routeTo(t, addr)
	c, br := fronttest.RawConn(t, pub)
	for i, path := range []string{"/close", "/close", "/", "/", "/"} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok "+path {
			t.Fatalf("request %d: got %d %q", i, resp.StatusCode, b)
		}
		// The backend's Connection: close ends the backend connection
		// only, not the client's.
		if resp.Close {
			t.Fatalf("request %d: client connection closed by the router", i)
		}
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("backend connections = %d, want 3 (two closed by the backend, then one reused)", n)
	}
}

func TestBackendClosesIdle(t *testing.T) {
	addr, conns := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), func(s *http.Server) { s.IdleTimeout = 30 * time.Millisecond })
	_, pub := routeTo(t, addr)
	for _, method := range []string{"GET", "POST", "GET", "PATCH", "DELETE"} {
		t.Run(method, func(t *testing.T) {
			time.Sleep(100 * time.Millisecond) // the backend closes the pooled connection
			resp, body := fronttest.Do(t, fronttest.Client, method, pub+"/", nil)
			if resp.StatusCode != 200 || string(body) != "ok" {
				t.Errorf("after the backend closed the idle connection: got %d %q", resp.StatusCode, body)
			}
		})
	}
	if n := conns.Load(); n != 5 {
		t.Errorf("backend connections = %d, want 5", n)
	}
}

// TestStaleConnectionRetry: a backend that closes a reused connection after
// reading a request, without answering: the router sends a replayable
// request again on a new connection, and answers 502 for the others.
func TestStaleConnectionRetry(t *testing.T) {
	var dials atomic.Int64
	addr := rawBackend(t, func(c net.Conn) {
		dials.Add(1)
		br := bufio.NewReader(c)
		for n := 0; ; n++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if n > 0 {
				return // the second request on a connection: close unanswered
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Method: %s\r\nContent-Length: 0\r\n\r\n", req.Method)
		}
	})
	_, pub := routeTo(t, addr)

	tests := []struct {
		method     string
		wantStatus int
	}{
		{"GET", 200},
		{"GET", 200},  // retried on a new connection
		{"HEAD", 200}, // likewise
		{"POST", 502}, // not replayable: not sent twice
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", i, tt.method), func(t *testing.T) {
			resp, _ := fronttest.Do(t, fronttest.Client, tt.method, pub+"/", nil)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("got %d, want %d", resp.StatusCode, tt.wantStatus)
			}
		})
	}
}

func TestWebSocketUpgrade(t *testing.T) {
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("echo " + line)
			brw.Flush()
		}
	}), nil)
	r, pub := routeTo(t, addr)
	c, br := fronttest.RawConn(t, pub)
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", host)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("got %s, want 101", resp.Status)
	}
	for _, msg := range []string{"one", "two"} {
		fmt.Fprintf(c, "%s\n", msg)
		line, err := br.ReadString('\n')
		if err != nil || line != "echo "+msg+"\n" {
			t.Fatalf("got %q, %v; want echo %s", line, err, msg)
		}
	}
	if n := r.InFlight(apiV1); n != 1 {
		t.Errorf("InFlight during the websocket = %d, want 1", n)
	}
	c.Close()
	waitIdle(t, r, apiV1)
}

// TestClientGoneEndsBackendRequest: a client that hangs up while the
// backend works ends the backend's request, so that drains are not held
// by requests nobody waits for.
func TestClientGoneEndsBackendRequest(t *testing.T) {
	canceled := make(chan struct{})
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-time.After(10 * time.Second):
		}
	}), nil)
	r, pub := routeTo(t, addr)
	c, _ := fronttest.RawConn(t, pub)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	deadline := time.Now().Add(5 * time.Second)
	for r.InFlight(apiV1) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	c.Close()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend request was not ended after the client left")
	}
	waitIdle(t, r, apiV1)
}

// TestAbortMidBody: a response already streaming when the version is
// aborted is broken off, and nothing stays in flight.
func TestAbortMidBody(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), nil)
	r, pub := routeTo(t, addr)
	req, _ := http.NewRequest("GET", pub+"/", nil)
	req.Host = host
	resp, err := fronttest.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 7)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "partial" {
		t.Fatalf("first bytes = %q, %v", buf, err)
	}
	if n := r.Abort(apiV1); n != 1 {
		t.Errorf("Abort = %d, want 1", n)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the aborted response ended cleanly, want it broken off")
	}
	if n := r.InFlight(apiV1); n != 0 {
		t.Errorf("InFlight after abort = %d", n)
	}
	if status, _, _ := fronttest.Get(t, pub+"/", host); status != http.StatusGatewayTimeout {
		t.Errorf("request after abort: got %d, want 504", status)
	}
}

// TestConcurrentMixed runs many kinds of request at once (meant for -race).
func TestConcurrentMixed(t *testing.T) {
	addr, _ := fronttest.CountingBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			// Read all first: net/http's HTTP/1 server ends the request
			// body once the response has started.
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		case "/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 3 {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
			}
		default:
			io.WriteString(w, r.Method+" "+r.URL.RequestURI())
		}
	}), nil)
	r, pub := routeTo(t, addr)
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 10 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 40 {
				var resp *http.Response
				var body []byte
				var want string
				switch (g + i) % 4 {
				case 0:
					resp, body = fronttest.Do(t, c, "GET", fmt.Sprintf("%s/p?g=%d&i=%d", pub, g, i), nil)
					want = fmt.Sprintf("GET /p?g=%d&i=%d", g, i)
				case 1:
					want = strings.Repeat(fmt.Sprint(g, i), 1000)
					resp, body = fronttest.Do(t, c, "POST", pub+"/echo", strings.NewReader(want))
				case 2:
					resp, body = fronttest.Do(t, c, "GET", pub+"/stream", nil)
					want = "data: 0\n\ndata: 1\n\ndata: 2\n\n"
				case 3:
					resp, body = fronttest.Do(t, c, "HEAD", pub+"/", nil)
				}
				if resp.StatusCode != 200 || string(body) != want {
					t.Errorf("%s: got %d %d bytes %.40q, want 200 %d bytes %.40q", resp.Request.URL, resp.StatusCode, len(body), body, len(want), want)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := r.InFlight(apiV1); n != 0 {
		t.Errorf("InFlight after all = %d", n)
	}
}

// TestBodyAfterHeadResponse: a broken backend that answers HEAD with a
// body must not have that body read as the next request's response.
func TestBodyAfterHeadResponse(t *testing.T) {
	addr := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Method == "HEAD" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
				time.Sleep(10 * time.Millisecond)
				io.WriteString(c, "WRONG")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	_, pub := routeTo(t, addr)
	if resp, _ := fronttest.Do(t, fronttest.Client, "HEAD", pub+"/", nil); resp.StatusCode != 200 {
		t.Fatalf("HEAD: got %d", resp.StatusCode)
	}
	time.Sleep(50 * time.Millisecond)
	if resp, body := fronttest.Do(t, fronttest.Client, "GET", pub+"/", nil); resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("GET after HEAD: got %d %q, want 200 ok", resp.StatusCode, body)
	}
}
