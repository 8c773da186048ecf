package front

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file holds the front end's limits on what a client may send, and
// how they are enforced on the requests net/http serves: the connections
// handed over (front.go) are read through a headScanner, which reads every
// HTTP/1 request head itself before net/http sees it, and every request
// net/http serves passes the Front's guard before the handler chain.
//
// net/http alone is laxer than the public edge should be (issue 11): it
// reads heads up to 1 MiB, takes a request with both Content-Length and
// Transfer-Encoding (and folded or oddly cased ones) as chunked and keeps
// the connection, forwards header names with "_" and CONNECT and TRACE
// requests, and has no timeout between the bytes of a request body. A
// proxy in front of hostel that framed such a request differently would
// have its next request smuggled; nginx refuses all of these.

// Defaults of the front end's limits (Options), next to nginx's in
// docs/router.md.
const (
	// DefaultMaxHeaderBytes bounds a request head: request line and
	// fields (nginx: 4 buffers of 8 KiB).
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxRequestLine bounds a request line (nginx: 8 KiB).
	DefaultMaxRequestLine = 8 << 10
	// DefaultBodyTimeout bounds the wait for a request body's first byte
	// and between its reads (nginx's client_body_timeout: 60 s).
	DefaultBodyTimeout = 60 * time.Second
	// DefaultWriteTimeout bounds a write to a client that does not read
	// (nginx's send_timeout: 60 s).
	DefaultWriteTimeout = 60 * time.Second
)

// limits are a Front's bounds, defaults applied.
type limits struct {
	maxHead, maxLine int
	body, write      time.Duration
}

func newLimits(o Options) limits {
	l := limits{maxHead: o.MaxHeaderBytes, maxLine: o.MaxRequestLine, body: o.BodyTimeout, write: o.WriteTimeout}
	if l.maxHead <= 0 {
		l.maxHead = DefaultMaxHeaderBytes
	}
	if l.maxLine <= 0 {
		l.maxLine = DefaultMaxRequestLine
	}
	l.maxLine = min(l.maxLine, l.maxHead)
	if l.body <= 0 {
		l.body = DefaultBodyTimeout
	}
	if l.write <= 0 {
		l.write = DefaultWriteTimeout
	}
	return l
}

// A head the scanner refuses reaches net/http as a request with one of
// these methods, which the guard answers with the status and a closed
// connection: the answer then comes in its turn after the responses to
// the requests before it. A client that sends one itself gets the same
// refusal.
var refusals = map[string]int{
	"HOSTEL-REFUSE-400": http.StatusBadRequest,
	"HOSTEL-REFUSE-405": http.StatusMethodNotAllowed,
	"HOSTEL-REFUSE-414": http.StatusRequestURITooLong,
	"HOSTEL-REFUSE-431": http.StatusRequestHeaderFieldsTooLarge,
}

// The states of a headScanner: what the next bytes of the stream are.
const (
	scanHead      = iota // a request head
	scanBody             // n bytes of a body with a Content-Length
	scanChunkSize        // a chunk-size line
	scanChunkData        // n bytes of chunk data
	scanChunkEnd         // the line end after chunk data
	scanTrailer          // trailer fields, up to an empty line
	scanOpaque           // an upgraded connection, or one net/http refuses: not scanned
	scanEnd              // a refusal or broken framing was passed on: EOF
)

// headScanner is the reader of a handed-over HTTP/1 connection: it passes
// bodies through as framed by their head and checks every head (checkRequestHead)
// before net/http reads it. Errors of the connection are passed on and
// not kept, so net/http's aborted background reads can be retried.
type headScanner struct {
	br    *bufio.Reader
	lim   *limits
	state int
	n     int64  // bytes left in scanBody and scanChunkData
	head  []byte // the head or line read so far
	out   []byte // checked bytes net/http has yet to read
	full  []byte // out's head, whole, until out is read
}

func newHeadScanner(r io.Reader, lim *limits) *headScanner {
	return &headScanner{br: bufio.NewReaderSize(r, 4096), lim: lim}
}

// untaken returns the bytes of a next request the scanner read, if
// net/http took none of them (ok): with them in front, the connection can
// be read by another.
func (s *headScanner) untaken() (rest []byte, ok bool) {
	buffered, _ := s.br.Peek(s.br.Buffered())
	switch {
	case s.state == scanHead && len(s.out) == 0:
		rest = s.head // a part of a head, or none
	case s.full != nil && len(s.out) > 0:
		rest = s.full // a whole head, and what follows it
	default:
		return nil, false
	}
	return append(append([]byte(nil), rest...), buffered...), true
}

func (s *headScanner) Read(p []byte) (int, error) {
	for len(s.out) == 0 {
		switch s.state {
		case scanOpaque:
			return s.br.Read(p)
		case scanEnd:
			return 0, io.EOF
		case scanBody, scanChunkData:
			if len(p) == 0 {
				return 0, nil
			}
			n, err := s.br.Read(p[:min(int64(len(p)), s.n)])
			if s.n -= int64(n); s.n == 0 {
				if s.state == scanChunkData {
					s.state = scanChunkEnd
				} else {
					s.state = scanHead
				}
			}
			return n, err
		}
		if err := s.step(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.out)
	if s.out = s.out[n:]; len(s.out) == 0 {
		// A head may be 64 KiB: not kept once passed on, while the
		// connection waits for its response or its next request.
		s.out, s.full = nil, nil
	}
	return n, nil
}

// step reads the next unit of the stream that is not passed through
// as-is: a head, a chunk-size line, the end of chunk data or the trailer.
// Partial lines stay in s.head across failed reads.
func (s *headScanner) step() error {
	switch s.state {
	case scanHead:
		for {
			limit := s.lim.maxHead
			if bytes.IndexByte(s.head, '\n') < 0 {
				limit = s.lim.maxLine + 2
			}
			frag, err := s.br.ReadSlice('\n')
			if len(s.head)+len(frag) > limit {
				if limit < s.lim.maxHead {
					return s.refuse(http.StatusRequestURITooLong)
				}
				return s.refuse(http.StatusRequestHeaderFieldsTooLarge)
			}
			s.head = appendHead(s.head, frag, s.lim.maxHead)
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				return err
			}
			if n := headerEnd(s.head); n >= 0 {
				break
			}
		}
		code, framing, n := checkRequestHead(s.head)
		if code != 0 {
			return s.refuse(code)
		}
		s.out, s.head = s.head, nil
		s.state, s.n, s.full = framing, n, s.out
		return nil
	case scanChunkSize, scanChunkEnd, scanTrailer:
		frag, err := s.br.ReadSlice('\n')
		s.head = append(s.head, frag...)
		if len(s.head) > s.lim.maxHead {
			return s.broken()
		}
		if err == bufio.ErrBufferFull {
			return nil
		}
		if err != nil {
			return err
		}
		line := s.head
		trimmed := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		switch s.state {
		case scanChunkSize:
			size, ok := chunkSize(trimmed)
			switch {
			case !ok:
				return s.broken()
			case size == 0:
				s.state = scanTrailer
			default:
				s.state, s.n = scanChunkData, size
			}
		case scanChunkEnd:
			if len(trimmed) != 0 {
				return s.broken()
			}
			s.state = scanChunkSize
		case scanTrailer:
			if len(trimmed) == 0 {
				s.state = scanHead
			}
		}
		s.out, s.head, s.full = line, nil, nil
		return nil
	}
	return nil
}

// appendHead appends frag to head, which grows to limit bytes at most:
// doubling, so that a large head leaves less garbage behind than its own
// size (append grows a large slice by a quarter at a time: a 64 KiB head
// would leave about four times that, for every connection that sends one).
func appendHead(head, frag []byte, limit int) []byte {
	if n := len(head) + len(frag); n > cap(head) {
		grown := make([]byte, len(head), max(n, min(2*cap(head), limit), 512))
		copy(grown, head)
		head = grown
	}
	return append(head, frag...)
}

// refuse replaces the head read so far by a request the guard answers with
// code, and ends the stream after it.
func (s *headScanner) refuse(code int) error {
	s.out = []byte("HOSTEL-REFUSE-" + strconv.Itoa(code) + " / HTTP/1.1\r\nHost: refused\r\n\r\n")
	s.head, s.state, s.full = nil, scanEnd, nil
	return nil
}

// broken passes the malformed chunk line on, for net/http to fail the body
// with (400), and ends the stream after it.
func (s *headScanner) broken() error {
	s.out, s.head, s.state, s.full = s.head, nil, scanEnd, nil
	return nil
}

// chunkSize parses a chunk-size line without its end: hex digits, then
// optional extensions.
func chunkSize(line []byte) (int64, bool) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | int64(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | int64(c-'a'+10)
		case 'A' <= c && c <= 'F':
			n = n<<4 | int64(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// checkRequestHead checks a complete HTTP/1 request head as nginx would and
// returns the status to refuse it with (0: none) and the framing of what
// follows it. Heads that net/http refuses itself are passed on with the
// stream left unscanned (net/http closes the connection after them).
func checkRequestHead(head []byte) (code, framing int, n int64) {
	line, rest := cutLine(head)
	method, _, _ := bytes.Cut(line, []byte(" "))
	// The guard's own methods (refusals) hold digits: a client that
	// sends one is refused here.
	if code := methodRefusal(string(method)); code != 0 {
		return code, 0, 0
	}
	var te, cl, chunked, upgrade, odd bool
	for {
		if len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
			return http.StatusBadRequest, 0, 0 // obsolete line folding
		}
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			odd = true
			continue
		}
		value = trimOWS(value)
		switch {
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			te = true
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Content-Length")):
			v, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || v < 0 || cl && v != n {
				odd = true
			}
			cl, n = true, v
		case bytes.EqualFold(name, []byte("Upgrade")):
			upgrade = true
		}
	}
	switch {
	case te && cl:
		// RFC 9112 §6.1: answer and close; a proxy before hostel may
		// have framed the message by its Content-Length.
		return http.StatusBadRequest, 0, 0
	case odd || upgrade || te && !chunked:
		return 0, scanOpaque, 0
	case chunked:
		return 0, scanChunkSize, 0
	case n > 0:
		return 0, scanBody, n
	}
	return 0, scanHead, 0
}

// methodRefusal is the status a request with method is refused with, 0
// if it is not, on every path (parseRequest, checkRequestHead, guard). As
// nginx: a method of anything but upper-case letters, "_" and "-" is 400
// (methods are case-sensitive, but an app that upper-cases them would
// answer "trace" as TRACE), and TRACE and CONNECT, which the front end
// never forwards, 405.
func methodRefusal(method string) int {
	if method == "" {
		return http.StatusBadRequest
	}
	for i := 0; i < len(method); i++ {
		if c := method[i]; (c < 'A' || c > 'Z') && c != '_' && c != '-' {
			return http.StatusBadRequest
		}
	}
	if method == http.MethodTrace || method == http.MethodConnect {
		return http.StatusMethodNotAllowed
	}
	return 0
}

// guard is the first handler of every request net/http serves for the
// front end: it answers the scanner's refusals, refuses the methods
// methodRefusal names and overlong targets (HTTP/2), drops fields whose name holds "_" (which
// some apps read as "-": a spoofed X_Forwarded_For), and times a request
// body between its reads, waiting for its first byte before the request
// goes on to take an app connection.
func (f *Front) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, refused := refusals[r.Method]
		switch {
		case refused:
		case methodRefusal(r.Method) != 0:
			code = methodRefusal(r.Method)
		case len(r.RequestURI) > f.lim.maxLine:
			code = http.StatusRequestURITooLong
		}
		if code != 0 {
			refuse(w, code)
			return
		}
		for k := range r.Header {
			if strings.IndexByte(k, '_') >= 0 {
				delete(r.Header, k)
			}
		}
		if r.ProtoMajor == 1 && len(r.Header["Upgrade"]) > 0 {
			// The scanner stops at an upgrade request: if the app
			// declines it, the connection ends with the answer.
			w = closeUnlessSwitched{w}
		}
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			b := &clientBody{rc: http.NewResponseController(w), src: r.Body, timeout: f.lim.body}
			// With Expect: 100-continue the client sends the body once
			// the app asks for it: the app is waiting for it, not we.
			if len(r.Header["Expect"]) == 0 {
				b.start()
				if code := b.failed(); code != 0 {
					refuse(w, code)
					return
				}
			}
			// Backend.ServeHTTP hands it to the proxy's error
			// handler: no copy of the request here.
			r.Body = b
			// The proxy's transport may read the body after the
			// handler returned: no deadline is set after that.
			defer b.finish()
		}
		h.ServeHTTP(w, r)
	})
}

// refuse answers a request the front end does not forward, closing the
// connection.
func refuse(w http.ResponseWriter, code int) {
	w.Header().Set("Connection", "close")
	http.Error(w, http.StatusText(code), code)
}

// closeUnlessSwitched closes the connection after any final answer to an
// upgrade request but 101 Switching Protocols.
type closeUnlessSwitched struct{ http.ResponseWriter }

func (w closeUnlessSwitched) WriteHeader(code int) {
	if code >= 200 {
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w closeUnlessSwitched) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// clientBody is a request body read with a timeout between reads. A body
// that times out or breaks its framing is the client's fault: the proxy's
// error handler answers 408 or 400 for it (clientBodyStatus), not 502.
type clientBody struct {
	rc      *http.ResponseController
	src     io.ReadCloser
	timeout time.Duration
	first   []byte // read by start, not yet by the proxy
	done    bool

	// mu guards what follows: the proxy's transport may still read the
	// body while its error handler asks how it failed.
	mu      sync.Mutex
	over    bool      // the handler returned: rc is not to be used
	until   time.Time // set by cutOff: no read goes on past it
	err     error     // the first failure
	stallAt time.Time // the deadline of the read under way, if one is
}

func (b *clientBody) setErr(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.mu.Unlock()
}

func (b *clientBody) getErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// setDeadline sets the connection's read deadline while the handler runs.
func (b *clientBody) setDeadline(t time.Time) {
	b.mu.Lock()
	if !b.until.IsZero() && (t.IsZero() || t.After(b.until)) {
		t = b.until
	}
	if !b.over {
		b.rc.SetReadDeadline(t)
	}
	b.mu.Unlock()
}

// cutOff bounds the reads of the body, the one under way included, by
// until: the request was answered without it (a held request refused
// while its spool read the body).
func (b *clientBody) cutOff(until time.Time) {
	b.mu.Lock()
	b.until = until
	b.mu.Unlock()
	b.setDeadline(until)
}

func (b *clientBody) finish() {
	b.mu.Lock()
	b.over = true
	b.mu.Unlock()
}

// start waits for the body's first byte.
func (b *clientBody) start() {
	var p [1]byte
	n, err := b.read(p[:])
	b.first = append(b.first, p[:n]...)
	if err != nil && err != io.EOF {
		b.setErr(err)
	}
	b.done = err == io.EOF
}

func (b *clientBody) read(p []byte) (int, error) {
	deadline := time.Now().Add(b.timeout)
	b.setDeadline(deadline)
	b.mu.Lock()
	b.stallAt = deadline
	b.mu.Unlock()
	n, err := b.src.Read(p)
	b.mu.Lock()
	b.stallAt = time.Time{}
	b.mu.Unlock()
	switch {
	case err == io.EOF:
		// Unbounded again: net/http's read for the client's hang-up
		// after the body must not time out.
		b.setDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Stalled for good: net/http's discarding of the rest of the
		// body after the answer must not wait either.
		b.setDeadline(aLongTimeAgo)
	case err != nil:
		b.setDeadline(time.Time{})
	}
	return n, err
}

func (b *clientBody) Read(p []byte) (int, error) {
	if len(b.first) > 0 {
		n := copy(p, b.first)
		b.first = b.first[n:]
		return n, nil
	}
	if err := b.getErr(); err != nil {
		return 0, err
	}
	if b.done {
		return 0, io.EOF
	}
	n, err := b.read(p)
	if err != nil && err != io.EOF {
		b.setErr(err)
	}
	return n, err
}

func (b *clientBody) Close() error { return b.src.Close() }

// failed returns the status for a body the client failed to send: 408 if
// it stalled, 400 if its framing was broken; 0 if it did not fail.
func (b *clientBody) failed() int {
	b.mu.Lock()
	err, stallAt := b.err, b.stallAt
	b.mu.Unlock()
	switch {
	case err == nil && !stallAt.IsZero() && !time.Now().Before(stallAt):
		// The read under way timed out, and net/http, which cancels
		// the request on its connection's read error, ended the
		// proxy's round trip before the read returned here.
		return http.StatusRequestTimeout
	case err == nil:
		return 0
	case errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

// clientBodyStatus is the status for a proxied request whose body the
// client failed to send, 0 if it did not.
func clientBodyStatus(req *http.Request) int {
	if b, ok := req.Context().Value(clientBodyKey{}).(*clientBody); ok {
		return b.failed()
	}
	return 0
}

type clientBodyKey struct{}
