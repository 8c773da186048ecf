package front

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// This file is the router's fast path: a purpose-built HTTP/1.1 forwarder
// for requests without a body (nearly all of them: GET, HEAD, DELETE, …).
//
// Why not httputil.ReverseProxy for everything: with http.Transport each
// request crosses three goroutines (the handler, the connection's write
// loop and its read loop) and several channels; on two cores shared with
// the load generator and the backend that costs more than half of the
// router's throughput (0.26× of direct against nginx's 0.55×). Here the
// handler goroutine itself writes the request to a pooled connection and
// reads the answer: no goroutine hand-off per request.
//
// Requests with a body, protocol upgrades (websockets) and Expect still go
// through httputil.ReverseProxy (upstream.proxy), which handles 1xx, 101
// Switching Protocols and the copy of the response; they are rare. Its
// transport is this package's (roundtrip.go), on the same pool: the body
// is streamed by a goroutine while the response is read, and a pooled
// connection is checked for stray bytes right before a request is written
// on it, as for the forwarder's own requests.

const (
	// maxIdlePerUpstream bounds the idle connections kept per backend
	// address, like http.Transport's MaxIdleConnsPerHost (Go's default of
	// 2 makes a busy proxy dial for most requests, caddy issue #2805).
	maxIdlePerUpstream = 256
	// idleTimeout closes pooled connections unused for this long, like
	// http.Transport's IdleConnTimeout.
	idleTimeout = 90 * time.Second
	// copyBufferSize is the size of the pooled response copy buffers, the
	// size ReverseProxy allocates per copy when it has no pool.
	copyBufferSize = 32 * 1024
)

var dialer = &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}

// retryRefused is how long after a backend's address was set (it was
// registered, woken or restarted on a new port) a connection it refuses
// is tried again rather than answered 502. Many apps say they are ready
// (READY=1) as they start their server in the background, a moment before
// their port accepts; nothing was sent to a port that refused, so trying
// again is always safe. A backend that refuses later than this is down,
// and is not waited for.
var retryRefused = 2 * time.Second

// Tries of a refused connection start this far apart and double up to
// retryRefusedMax: an app that listens a moment late is reached within a
// few milliseconds of it, without a busy loop.
const (
	retryRefusedFirst = 2 * time.Millisecond
	retryRefusedMax   = 25 * time.Millisecond
)

// upstream is one address of a backend: its pool of idle keep-alive
// connections and the standard-library proxy for the requests the
// forwarder leaves to it. AddBackend with a new address makes a new one.
type upstream struct {
	addr  string
	b     *Backend
	proxy *httputil.ReverseProxy

	mu      sync.Mutex
	idle    []*pconn // most recently used last
	retired bool     // replaced or removed: connections are closed on return

	// retryUntil (UnixNano) ends the moment after the address was set in
	// which refused connections are tried again (retryRefused).
	retryUntil int64
}

// pconn is one persistent connection to a backend.
type pconn struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	// pending is what an event loop had read from the connection
	// before it handed it over (loopBackend.giveBack), read through br
	// first; nil for a connection dialed here.
	pending *bytes.Reader
	up      *upstream
	idleAt  time.Time // when it was last returned to the pool
}

// buffered reports whether bytes the app sent were read from the socket
// and not consumed: after the end of a response, they are bytes it wrote
// after it, and the connection must not carry another request.
func (pc *pconn) buffered() bool {
	return pc.br.Buffered() > 0 || pc.pending != nil && pc.pending.Len() > 0
}

// forwardable reports whether the fast path handles req: no request body,
// no upgrade, no 100-continue, no CONNECT.
func forwardable(req *http.Request) bool {
	return noBody(req) &&
		len(req.Header["Upgrade"]) == 0 && len(req.Header["Expect"]) == 0 &&
		req.Method != http.MethodConnect
}

// noBody reports whether req has no body to send. net/http gives an
// HTTP/2 request a Body even when its stream ended with its headers; its
// ContentLength is then 0 (-1 while a body may follow), as it is when the
// client declared an empty one.
func noBody(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.ProtoMajor == 2 && req.ContentLength == 0
}

// errRetry marks a failure on a reused connection after which the request
// may be sent again on another one: the backend closed an idle connection.
type errRetry struct{ err error }

func (e errRetry) Error() string { return e.err.Error() }
func (e errRetry) Unwrap() error { return e.err }

// forward proxies req, which must be forwardable, to u.
func (u *upstream) forward(w http.ResponseWriter, req *http.Request) {
	b := u.b
	ctx := req.Context()
	idempotent := isReplayable(req)
	var (
		pc   *pconn
		resp *http.Response
		stop func() bool
	)
	for {
		if b.aborted.Load() {
			u.fail(w, req, errAborted)
			return
		}
		var reused bool
		var err error
		pc, reused, err = u.get(ctx)
		if err != nil {
			u.fail(w, req, err)
			return
		}
		// A client that goes away ends the backend request too, as
		// http.Transport does on context cancellation: closing the
		// connection is what tells the backend, and it unblocks the
		// read below.
		c := pc.conn
		stop = context.AfterFunc(ctx, func() { c.Close() })
		resp, err = pc.roundTrip(req)
		if err == nil {
			break
		}
		stop()
		pc.close()
		var retry errRetry
		if reused && errors.As(err, &retry) && ctx.Err() == nil &&
			(idempotent || retry.err == errNothingWritten) {
			continue
		}
		u.fail(w, req, err)
		return
	}

	// 1xx informational responses (103 Early Hints) are passed on and
	// followed by the final response, as ReverseProxy does.
	for resp.StatusCode < 200 {
		if resp.StatusCode == http.StatusSwitchingProtocols {
			stop()
			pc.close()
			u.fail(w, req, errors.New("backend switched protocols without an upgrade request"))
			return
		}
		// Not to an HTTP/1.0 client, which does not expect them
		// (RFC 9110 §15.2).
		if req.ProtoAtLeast(1, 1) {
			h := w.Header()
			copyHeader(h, resp.Header)
			w.WriteHeader(resp.StatusCode)
			clear(h)
		}
		var err error
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			stop()
			pc.close()
			u.fail(w, req, err)
			return
		}
	}

	removeHopByHop(resp.Header)
	h := w.Header()
	copyHeader(h, resp.Header)
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)

	flush := resp.ContentLength == -1 || isEventStream(resp.Header)
	err := copyBody(w, resp.Body, flush)
	if !stop() {
		// The client went away and the connection is being closed.
		if err == nil {
			err = context.Canceled
		}
	}
	if err != nil {
		pc.close()
		// Headers are out: all that is left is to break the client's
		// response off, as ReverseProxy does (issue 23643).
		panic(http.ErrAbortHandler)
	}
	if resp.Close || b.aborted.Load() {
		pc.close()
	} else {
		u.put(pc)
	}

	if len(resp.Trailer) > 0 {
		// Force chunking so that net/http does not compute a
		// Content-Length for a short body and drop the trailers.
		http.NewResponseController(w).Flush()
		if len(resp.Trailer) == announced {
			copyHeader(h, resp.Trailer)
		} else {
			for k, vv := range resp.Trailer {
				k = http.TrailerPrefix + k
				for _, v := range vv {
					h.Add(k, v)
				}
			}
		}
	}
}

var errAborted = errors.New("aborted after the stop grace")

// fail answers a request that got no response from the backend.
func (u *upstream) fail(w http.ResponseWriter, req *http.Request, err error) {
	b := u.b
	code, msg := b.failure(req.Method, req.Host, req.URL.Path, b.aborted.Load(), req.Context().Err() != nil, err)
	http.Error(w, msg, code)
}

// failure logs why a request to b got no response and returns the status
// and message to answer it with, on every path: 504 if b was aborted (a
// draining version past its stop grace), else 502. quiet leaves a 502 of a
// client that went away unlogged.
func (b *Backend) failure(method, host, path string, aborted, quiet bool, err error) (code int, msg string) {
	if aborted {
		b.logf("router: %s %s%s via %s: ended with 504 after the stop grace", method, host, path, b.key)
		return http.StatusGatewayTimeout, "hostel: the service stopped before answering"
	}
	if !quiet {
		b.logf("router: %s %s%s via %s: %v", method, host, path, b.key, err)
	}
	// Public pages name no service or version (issue 11): the log does.
	return http.StatusBadGateway, "hostel: the service is unavailable"
}

var errNothingWritten = errors.New("connection closed before the request was sent")

// roundTrip writes req and reads the response's header. An error that
// proves the backend had closed the connection before reading the request
// is an errRetry.
func (pc *pconn) roundTrip(req *http.Request) (*http.Response, error) {
	if err := pc.writeRequest(req); err != nil {
		// A write to a connection the backend closed fails, at the
		// latest, on the next write; the request was not processed.
		return nil, errRetry{errNothingWritten}
	}
	// Peek first: an EOF (or reset) before the first byte of the response
	// is a closed idle connection, which ReadResponse would report as an
	// indistinct io.ErrUnexpectedEOF.
	if _, err := pc.br.Peek(1); err != nil {
		return nil, errRetry{fmt.Errorf("reading response: %w", err)}
	}
	resp, err := http.ReadResponse(pc.br, req)
	if err != nil {
		return nil, fmt.Errorf("reading response: %w", err)
	}
	return resp, nil
}

// writeRequest writes req's request line and header, as ReverseProxy with
// Rewrite, SetXForwarded and the incoming Host would send them: hop-by-hop
// headers removed (RFC 9110 §7.6.1), X-Forwarded-For/Host/Proto set from
// this hop only, no User-Agent added.
func (pc *pconn) writeRequest(req *http.Request) error {
	bw := pc.bw
	host := req.Host
	if host == "" {
		host = pc.up.addr
	}
	writeRequestLine(bw, req.Method, requestURI(req), host)
	conn := req.Header["Connection"]
	trailers := false
	for k, vv := range req.Header {
		if k == "Te" {
			for _, v := range vv {
				trailers = trailers || containsToken(v, "trailers")
			}
			continue
		}
		if skipRequestField(k) || len(conn) > 0 && listedIn(conn, k) {
			continue
		}
		writeValues(bw, k, vv)
	}
	return writeRequestEnd(bw, req.Method, req.Host, req.RemoteAddr, req.TLS != nil, trailers, len(req.Header["Content-Length"]) > 0)
}

// writeRequestLine starts a request head: the request line and Host.
func writeRequestLine(bw *bufio.Writer, method, target, host string) {
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(target)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	writeValue(bw, host)
	bw.WriteString("\r\n")
}

// writeRequestEnd ends a request head after the fields passed on and
// flushes it: "Te: trailers" if the client's Te named trailers (the only
// value that may pass), X-Forwarded-For/Host/Proto of this hop, and an
// explicit zero Content-Length for a client's own "0" and for the methods
// that normally carry a body, as http.Transport sends one.
func writeRequestEnd(bw *bufio.Writer, method, host, remoteAddr string, tls, trailers, zeroLength bool) error {
	if trailers {
		bw.WriteString("Te: trailers\r\n")
	}
	if ip, _, err := net.SplitHostPort(remoteAddr); err == nil {
		bw.WriteString("X-Forwarded-For: ")
		writeValue(bw, ip)
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Forwarded-Host: ")
	writeValue(bw, host)
	if tls {
		bw.WriteString("\r\nX-Forwarded-Proto: https\r\n")
	} else {
		bw.WriteString("\r\nX-Forwarded-Proto: http\r\n")
	}
	if zeroLength || method == "POST" || method == "PUT" || method == "PATCH" {
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

// hopByHop reports whether a field describes a connection rather than the
// message (RFC 9110 §7.6.1): a proxy does not pass it on.
func hopByHop(name string) bool {
	switch name {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// skipRequestField reports whether a request field is not passed on as
// received: the hop-by-hop ones, those the forwarders write themselves
// (Host, Content-Length, Te) and the client's forwarding fields, which
// this hop's replace.
func skipRequestField(name string) bool {
	switch name {
	case "Content-Length", "Host",
		"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		return true
	}
	return hopByHop(name)
}

// writeValues writes the lines of a field with values vv.
func writeValues(bw *bufio.Writer, name string, vv []string) {
	for _, v := range vv {
		bw.WriteString(name)
		bw.WriteString(": ")
		writeValue(bw, v)
		bw.WriteString("\r\n")
	}
}

var crlfToSpace = strings.NewReplacer("\r", " ", "\n", " ")

// writeValue writes a header value with CR and LF replaced by spaces, as
// http.Header.Write does; net/http's server already rejects them, this
// guards handlers that wrap the router.
func writeValue(bw *bufio.Writer, v string) {
	if strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 {
		bw.WriteString(v)
		return
	}
	bw.WriteString(crlfToSpace.Replace(v))
}

// requestURI is the outgoing request target: ReverseProxy's, with
// unparsable query parameters removed (cleanQueryParams, which guards
// against a backend reading a query differently from the proxy).
func requestURI(req *http.Request) string {
	u := req.URL
	if q := u.RawQuery; q != "" && !cleanQuery(q) {
		v, _ := url.ParseQuery(q)
		c := *u
		c.RawQuery = v.Encode()
		return c.RequestURI()
	}
	return u.RequestURI()
}

func cleanQuery(s string) bool {
	if strings.Count(s, "&") >= 10000 {
		return false
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return false
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 3
		default:
			i++
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// isReplayable reports whether a bodiless request may be sent again after
// its connection failed before any response byte: http.Transport's rule.
func isReplayable(req *http.Request) bool {
	switch req.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return len(req.Header["Idempotency-Key"]) > 0 || len(req.Header["X-Idempotency-Key"]) > 0
}

// listedIn reports whether the Connection header values conn name key.
func listedIn(conn []string, key string) bool {
	for _, v := range conn {
		if containsToken(v, key) {
			return true
		}
	}
	return false
}

// containsToken reports whether the comma-separated list v holds token,
// compared case-insensitively.
func containsToken(v, token string) bool {
	for tok := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(textproto.TrimString(tok), token) {
			return true
		}
	}
	return false
}

// removeHopByHop removes the response headers that describe the backend
// connection rather than the response, and those its Connection names, as
// ReverseProxy does.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = textproto.TrimString(tok); tok != "" {
				h.Del(tok)
			}
		}
	}
	for k := range h {
		if hopByHop(k) {
			delete(h, k)
		}
	}
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		if old, ok := dst[k]; ok {
			dst[k] = append(old, vv...)
		} else {
			dst[k] = vv
		}
	}
}

// isEventStream reports whether the response is server-sent events, which
// are flushed to the client as they arrive.
func isEventStream(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	v := strings.TrimLeft(ct[0], " \t")
	const es = "text/event-stream"
	if len(v) < len(es) || !strings.EqualFold(v[:len(es)], es) {
		return false
	}
	rest := v[len(es):]
	return rest == "" || rest[0] == ';' || rest[0] == ' ' || rest[0] == '\t'
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// copyBody copies the response body to the client, flushing after every
// read when flush is set (streams, bodies of unknown length). It returns
// nil only when the body was read to its end.
func copyBody(w http.ResponseWriter, body io.Reader, flush bool) error {
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	buf := *bufp
	var rc *http.ResponseController
	if flush {
		rc = http.NewResponseController(w)
	}
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if flush {
				if err := rc.Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// get returns an idle connection (reused) or dials a new one. A pooled
// connection is checked first (pconn.alive), and the caller writes its
// request right after, on the same goroutine: bytes an app wrote after
// its last response would be read as this request's answer, and the
// answer to this one as the next client's (issue 11); a connection the
// app closed would fail a request that cannot be sent again.
func (u *upstream) get(ctx context.Context) (pc *pconn, reused bool, err error) {
	now := time.Now()
	for pc = u.popIdle(now); pc != nil; pc = u.popIdle(now) {
		if !pc.alive() {
			pc.close()
			continue
		}
		return pc, true, nil
	}
	conn, err := u.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	pc = &pconn{conn: conn, br: bufio.NewReaderSize(conn, 4096), bw: bufio.NewWriterSize(conn, 4096), up: u}
	if !u.b.track(pc) {
		conn.Close()
		return nil, false, errAborted
	}
	return pc, false, nil
}

// dial connects to the backend. A connection refused while the address
// is new (retryRefused) is tried again, with a growing pause, until the
// app accepts or that moment ends.
func (u *upstream) dial(ctx context.Context) (net.Conn, error) {
	pause := retryRefusedFirst
	for {
		conn, err := dialer.DialContext(ctx, "tcp", u.addr)
		if err == nil || !u.retryRefused(err, time.Now().Add(pause)) {
			return conn, err
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
		pause = min(2*pause, retryRefusedMax)
	}
}

// retryRefused reports whether a dial that failed with err may be tried
// again at the time then: the app refused the connection and its address
// is new enough.
func (u *upstream) retryRefused(err error, then time.Time) bool {
	return errors.Is(err, syscall.ECONNREFUSED) && then.UnixNano() < u.retryUntil && !u.b.aborted.Load()
}

// popIdle takes the most recently used idle connection, or nil if there
// is none; connections idle past idleTimeout are closed on the way.
func (u *upstream) popIdle(now time.Time) *pconn {
	for {
		u.mu.Lock()
		n := len(u.idle)
		if n == 0 {
			u.mu.Unlock()
			return nil
		}
		pc := u.idle[n-1]
		if now.Sub(pc.idleAt) <= idleTimeout {
			u.idle[n-1] = nil
			u.idle = u.idle[:n-1]
			u.mu.Unlock()
			return pc
		}
		// It and every connection below, older still, are stale.
		stale := append([]*pconn(nil), u.idle...)
		clear(u.idle)
		u.idle = u.idle[:0]
		u.mu.Unlock()
		for _, o := range stale {
			o.close()
		}
	}
}

// put returns a connection whose response was read completely.
func (u *upstream) put(pc *pconn) {
	pc.idleAt = time.Now()
	u.mu.Lock()
	if u.retired || len(u.idle) >= maxIdlePerUpstream || pc.buffered() {
		u.mu.Unlock()
		pc.close()
		return
	}
	u.idle = append(u.idle, pc)
	u.mu.Unlock()
}

// closeIdle closes the idle connections; with retire, the ones in use are
// closed when they come back.
func (u *upstream) closeIdle(retire bool) {
	u.mu.Lock()
	idle := u.idle
	u.idle = nil
	if retire {
		u.retired = true
	}
	u.mu.Unlock()
	for _, pc := range idle {
		pc.close()
	}
}

func (pc *pconn) close() {
	pc.conn.Close()
	pc.up.b.untrack(pc)
}
