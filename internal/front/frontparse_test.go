package front

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzParseRequest: whatever the fast parser accepts, net/http reads the
// same way — method, target, Host, every header field — and the target is
// the one ReverseProxy would send.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET /p/q?x=1&y=%20 HTTP/1.1\r\nHost: A.Example:8080\r\nAccept: */*\r\nconnection: keep-alive, close\r\n\r\n",
		"HEAD /%41b HTTP/1.1\nHost: [::1]:80\nx-a:  b \t\nX-A: c\n\n",
		"DELETE /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
		"GET /a;b?c;d HTTP/1.1\r\nHost: h\r\nTe: trailers\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
		"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := headerEnd([]byte(s))
		if n < 0 {
			return
		}
		var req Request
		if !parseRequest(s[:n], &req) {
			return
		}
		hr, err := http.ReadRequest(bufio.NewReader(strings.NewReader(s[:n])))
		if err != nil {
			t.Fatalf("fast path accepted %q, net/http: %v", s[:n], err)
		}
		if hr.Method != req.Method || hr.RequestURI != req.Target || hr.Host != req.Host || hr.ProtoMinor != 1 {
			t.Fatalf("%q: fast %q %q %q, net/http %q %q %q", s[:n], req.Method, req.Target, req.Host, hr.Method, hr.RequestURI, hr.Host)
		}
		if hr.ContentLength > 0 || len(hr.TransferEncoding) > 0 || hr.Body != http.NoBody && hr.ContentLength != 0 {
			t.Fatalf("%q: fast path accepted a request with a body", s[:n])
		}
		if got := requestURI(hr); got != req.Target {
			t.Fatalf("%q: ReverseProxy would send %q, fast path %q", s[:n], got, req.Target)
		}
		if hr.Close != req.Close {
			t.Fatalf("%q: Close fast %v, net/http %v", s[:n], req.Close, hr.Close)
		}
		fields := 0
		for _, fl := range req.Header {
			vv := hr.Header[fl.Name]
			if !contains(vv, fl.Value) {
				t.Fatalf("%q: field %s: %q not in net/http's %q", s[:n], fl.Name, fl.Value, vv)
			}
			fields++
		}
		total := 0
		for _, vv := range hr.Header {
			total += len(vv)
		}
		if total != fields {
			t.Fatalf("%q: %d fields, net/http %d (%v)", s[:n], fields, total, hr.Header)
		}
	})
}

func contains(vv []string, v string) bool {
	for _, x := range vv {
		if x == v {
			return true
		}
	}
	return false
}

// FuzzCheckHead: a response head the quick path takes is one net/http
// reads the same way — status, length, fields — and writeHead sends
// what the ReadResponse path would.
func FuzzCheckHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: x\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 404\nKeep-Alive: timeout=5\nContent-Length: 0\n\n",
		"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 1\r\n\r\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: X-Drop\r\nX-Drop: 1\r\nContent-Length: 2\r\n\r\n",
	} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, head bool) {
		n := headerEnd([]byte(s))
		if n < 0 {
			return
		}
		method := "GET"
		if head {
			method = "HEAD"
		}
		h, ok := checkHead([]byte(s[:n]), method)
		if !ok {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(s[:n])), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("quick path took %q, net/http: %v", s[:n], err)
		}
		noBody := head || h.code == 204 || h.code == 304
		if resp.StatusCode != h.code || !noBody && resp.ContentLength != h.length || resp.Close != h.close {
			t.Fatalf("%q: quick %d %d, net/http %d %d close=%v", s[:n], h.code, h.length, resp.StatusCode, resp.ContentLength, resp.Close)
		}
		var out strings.Builder
		w := bufio.NewWriter(&out)
		writeHead(w, []byte(s[:n]), h, noBody, false)
		w.Flush()
		got, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out.String())), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: written head %q: %v", s[:n], out.String(), err)
		}
		removeHopByHop(resp.Header)
		if !noBody {
			// respondFast writes the length it read.
			resp.Header["Content-Length"] = []string{fmt.Sprint(resp.ContentLength)}
		}
		delete(got.Header, "Date")
		delete(resp.Header, "Date")
		if fmt.Sprint(got.Header) != fmt.Sprint(resp.Header) {
			t.Fatalf("%q: wrote fields %v, ReadResponse path %v", s[:n], got.Header, resp.Header)
		}
	})
}

func TestQuickPathAllocs(t *testing.T) {
	head := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Sat, 21 Nov 2026 21:00:00 GMT\r\nContent-Length: 13\r\n\r\n")
	w := bufio.NewWriter(io.Discard)
	allocs := testing.AllocsPerRun(100, func() {
		h, ok := checkHead(head, "GET")
		if !ok {
			t.Fatal("not taken")
		}
		writeHead(w, head, h, false, false)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per response head, want 0", allocs)
	}
}

// FuzzHeadScanner: whatever a client sends on a handed-over connection,
// the scanner passes the bytes on unchanged up to the point where it
// refuses a head (and replaces it with the guard's refusal request) or
// stops at broken framing; it never alters what it passes.
func FuzzHeadScanner(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.0\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
		"TRACE / HTTP/1.1\r\n\r\n",
		"GET /" + strings.Repeat("a", 200) + " HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nUpgrade: x\r\n\r\nanything at all",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		lim := newLimits(Options{MaxHeaderBytes: 256, MaxRequestLine: 64})
		s := newHeadScanner(strings.NewReader(in), &lim)
		out, err := io.ReadAll(s)
		if err != nil {
			t.Fatalf("ReadAll: %v", err)
		}
		o := string(out)
		if o == in {
			return
		}
		if i := strings.Index(o, "HOSTEL-REFUSE-"); i >= 0 {
			if o[:i] != in[:min(i, len(in))] {
				t.Fatalf("bytes before the refusal altered:\n in: %q\nout: %q", in, o)
			}
			if _, ok := refusals[strings.Fields(o[i:])[0]]; !ok || !strings.HasSuffix(o, "\r\n\r\n") {
				t.Fatalf("refusal %q is not one the guard answers", o[i:])
			}
			return
		}
		if !strings.HasPrefix(in, o) {
			t.Fatalf("output is not a prefix of the input:\n in: %q\nout: %q", in, o)
		}
	})
}

// TestHandedOverKeepsNoHead: once a handed-over connection's head was
// passed on to net/http, neither the scanner nor the bytes read ahead of
// the hand-over keep it: a connection whose request waits (held, or with
// a slow app) or that idles between requests holds no 64 KiB for it.
func TestHandedOverKeepsNoHead(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 60<<10) + "\r\n\r\n"
	pr, pw := io.Pipe()
	defer pw.Close()
	go io.WriteString(pw, head[4096:]) // and then nothing: the next request is not here yet
	lim := newLimits(Options{})
	// Read ahead as a loop hands over: a copy, with room to spare.
	src := &handoffSource{pending: append(make([]byte, 0, 8192), head[:4096]...), r: &connReader{c: pipeConn{pr}}}
	s := newHeadScanner(src, &lim)
	got := make([]byte, len(head))
	if _, err := io.ReadFull(s, got); err != nil || string(got) != head {
		t.Fatalf("read %v: the head was not passed on as it came", err)
	}
	if cap(s.out) != 0 || cap(s.head) != 0 {
		t.Errorf("the scanner keeps %d bytes for a head it passed on", max(cap(s.out), cap(s.head)))
	}
	if cap(src.pending) != 0 {
		t.Errorf("the connection keeps the %d bytes read ahead of its hand-over", cap(src.pending))
	}
}

// pipeConn is a net.Conn that reads from a pipe.
type pipeConn struct{ *io.PipeReader }

func (pipeConn) Write(p []byte) (int, error)      { return len(p), nil }
func (pipeConn) LocalAddr() net.Addr              { return nil }
func (pipeConn) RemoteAddr() net.Addr             { return nil }
func (pipeConn) SetDeadline(time.Time) error      { return nil }
func (pipeConn) SetReadDeadline(time.Time) error  { return nil }
func (pipeConn) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkHeadScannerLargeHead: what reading a head just under the limit
// costs a handed-over connection (B/op: the garbage a connection sending
// one leaves behind).
func BenchmarkHeadScannerLargeHead(b *testing.B) {
	head := "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 63<<10) + "\r\n\r\n"
	lim := newLimits(Options{})
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		s := newHeadScanner(strings.NewReader(head), &lim)
		for {
			if _, err := s.Read(buf); err != nil {
				break
			}
		}
	}
}
