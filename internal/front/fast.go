package front

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// This file forwards the requests the front end (front.go) parsed itself:
// the request goes to a pooled backend connection (forward.go) and the
// response is written straight to the client connection's buffer, with
// none of net/http's server machinery in between.

// hangup ends a backend request when its client goes away: the front end's
// watcher calls gone, which closes the backend connection in use.
type hangup struct {
	mu      sync.Mutex
	hungUp  bool
	backend net.Conn
}

func (h *hangup) gone() {
	h.mu.Lock()
	h.hungUp = true
	c := h.backend
	h.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// use records the backend connection a request is on (nil: none); false
// means the client is gone.
func (h *hangup) use(c net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.backend = c
	return !h.hungUp
}

func (h *hangup) isGone() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hungUp
}

func (h *hangup) reset() {
	h.mu.Lock()
	h.hungUp, h.backend = false, nil
	h.mu.Unlock()
}

// serveFast forwards req to b and writes the response to w. It returns
// whether the client connection can carry another request; false means it
// must be closed (after flushing w), as when a response broke off. held
// says that the caller's acquire already found the gate closed.
func (b *Backend) serveFast(req *Request, w *bufio.Writer, h *hangup, held bool) bool {
	// The gate was open when the request was routed (fastBackend); one
	// that closed since holds the request here, its body left unread.
	var s slot
	var err error
	// The fast path keeps no client address: a held request by an
	// immutable name is not routed again (an internal client's, which
	// gets 503 and tries again).
	ok := false
	if !held {
		s, ok = b.acquire()
	}
	req.startOutcome(!ok)
	if !ok {
		start := time.Now()
		if s, err = b.waitAcquire(context.Background(), req.Host, ""); err != nil {
			b.logf("router: %s: held request: %v", b.key, err)
			keep := failHeldFast(w, req)
			b.acct.Refused(time.Since(start), &req.out)
			return keep
		}
	}
	defer s.release()
	s.out = &req.out
	return s.b.up.Load().forwardFast(req, w, h)
}

// Shared read-only requests for http.ReadResponse, which only looks at the
// method.
var (
	getRequest  = &http.Request{Method: "GET"}
	headRequest = &http.Request{Method: "HEAD"}
)

func methodRequest(method string) *http.Request {
	switch method {
	case "GET":
		return getRequest
	case "HEAD":
		return headRequest
	}
	return &http.Request{Method: method}
}

func (u *upstream) forwardFast(req *Request, w *bufio.Writer, h *hangup) bool {
	b := u.b
	idempotent := replayable(req.Method, req.Header)
	var pc *pconn
	for {
		if b.aborted.Load() {
			return u.failFast(w, req, errAborted)
		}
		var reused bool
		var err error
		pc, reused, err = u.get(context.Background())
		if err != nil {
			return u.failFast(w, req, err)
		}
		if !h.use(pc.conn) {
			pc.close()
			return false
		}
		err = pc.roundTripFast(req)
		if err == nil {
			break
		}
		gone := !h.use(nil)
		pc.close()
		if gone {
			return false
		}
		var retry errRetry
		if reused && errors.As(err, &retry) && (idempotent || retry.err == errNothingWritten) {
			continue
		}
		return u.failFast(w, req, err)
	}
	return u.respondTo(pc, req, w, h)
}

// respondTo reads the response to req from pc, which carried it, and
// writes it to w; it then pools or closes pc. It returns forwardFast's
// result.
func (u *upstream) respondTo(pc *pconn, req *Request, w *bufio.Writer, h *hangup) bool {
	b := u.b
	var keep, reuse bool
	if qh, ok := peekHead(pc.br, req.Method); ok {
		keep, reuse = u.respondQuick(pc, qh, req, w, h)
	} else if resp, err := http.ReadResponse(pc.br, methodRequest(req.Method)); err != nil {
		gone := !h.use(nil)
		pc.close()
		if gone {
			return false
		}
		return u.failFast(w, req, fmt.Errorf("reading response: %w", err))
	} else {
		keep, reuse = u.respondFast(pc, resp, req, w, h)
	}
	if gone := !h.use(nil); !reuse || gone {
		pc.close()
		return keep && !gone
	}
	if b.aborted.Load() {
		pc.close()
	} else {
		u.put(pc)
	}
	return keep
}

// respondFast writes resp to w: the status line with net/http's reason
// phrase, the header without hop-by-hop fields, and the body framed for
// the client (Content-Length when known, else chunked). keep reports
// whether the client connection can carry another request, reuse whether
// pc can.
func (u *upstream) respondFast(pc *pconn, resp *http.Response, req *Request, w *bufio.Writer, h *hangup) (keep, reuse bool) {
	for resp.StatusCode < 200 {
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return u.failFast(w, req, errors.New("backend switched protocols without an upgrade request")), false
		}
		writeStatus(w, resp.StatusCode)
		writeFields(w, resp.Header)
		w.WriteString("\r\n")
		if w.Flush() != nil {
			return false, false
		}
		var err error
		if resp, err = http.ReadResponse(pc.br, &http.Request{Method: req.Method}); err != nil {
			if h.isGone() {
				return false, false
			}
			// The interim response is out: a final one may follow.
			return u.failFast(w, req, err), false
		}
	}
	if len(resp.Header["Connection"]) > 0 {
		removeHopByHop(resp.Header) // and the fields it names
	}
	noBody := req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	chunked := !noBody && (resp.ContentLength < 0 || len(resp.Trailer) > 0)
	req.closing()
	req.out.Status = resp.StatusCode
	writeStatus(w, resp.StatusCode)
	writeResponseFields(w, resp.Header, !noBody)
	if _, ok := resp.Header["Date"]; !ok {
		w.WriteString("Date: ")
		w.Write(httpDate())
		w.WriteString("\r\n")
	}
	if len(resp.Trailer) > 0 {
		keys := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		w.WriteString("Trailer: ")
		w.WriteString(strings.Join(keys, ", "))
		w.WriteString("\r\n")
	}
	switch {
	case chunked:
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case !noBody:
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), resp.ContentLength, 10))
		w.WriteString("\r\n")
	}
	if req.Close {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	if noBody {
		return !req.Close, !resp.Close
	}
	flush := chunked || isEventStream(resp.Header)
	if flush && w.Flush() != nil {
		return false, false
	}
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	buf := *bufp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if chunked {
				w.Write(strconv.AppendUint(w.AvailableBuffer(), uint64(n), 16))
				w.WriteString("\r\n")
			}
			w.Write(buf[:n])
			req.out.Bytes += int64(n)
			if chunked {
				w.WriteString("\r\n")
			}
			if flush && w.Flush() != nil {
				return false, false
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The backend broke the body off (or was aborted, or the
			// client left): the client's response is broken off too.
			if !h.isGone() && !u.b.aborted.Load() {
				u.b.logf("router: %s %s%s via %s: reading response body: %v", req.Method, req.Host, req.Target, u.b.key, rerr)
			}
			return false, false
		}
	}
	if chunked {
		w.WriteString("0\r\n")
		writeFields(w, resp.Trailer)
		w.WriteString("\r\n")
	}
	return !req.Close, !resp.Close
}

// failFast answers a request that got no response from the backend, as
// upstream.fail does for net/http's requests.
func (u *upstream) failFast(w *bufio.Writer, req *Request, err error) bool {
	code, msg := u.b.failure(req.Method, req.Host, req.Target, u.b.aborted.Load(), false, err)
	msg += "\n" // as http.Error
	req.closing()
	req.out.Status = code
	writeStatus(w, code)
	w.WriteString("Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nDate: ")
	w.Write(httpDate())
	w.WriteString("\r\nContent-Length: ")
	w.WriteString(strconv.Itoa(len(msg)))
	if req.Close {
		w.WriteString("\r\nConnection: close")
	}
	w.WriteString("\r\n\r\n")
	if req.Method != http.MethodHead {
		w.WriteString(msg)
		req.out.Bytes = int64(len(msg))
	}
	return !req.Close
}

// failHeldFast answers a held request 503 with Retry-After, as refuseHeld.
func failHeldFast(w *bufio.Writer, req *Request) bool {
	msg := heldMessage + "\n" // as http.Error
	req.closing()
	writeStatus(w, http.StatusServiceUnavailable)
	w.WriteString("Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nRetry-After: ")
	w.WriteString(strconv.Itoa(RetryAfter))
	w.WriteString("\r\nDate: ")
	w.Write(httpDate())
	w.WriteString("\r\nContent-Length: ")
	w.WriteString(strconv.Itoa(len(msg)))
	// The request's body, if any, was never read: the connection cannot
	// carry another request.
	w.WriteString("\r\nConnection: close\r\n\r\n")
	req.out.Status = http.StatusServiceUnavailable
	if req.Method != http.MethodHead {
		w.WriteString(msg)
		req.out.Bytes = int64(len(msg))
	}
	return false
}

// startOutcome begins req's Outcome, which the path that answers req
// fills in and its slot reports.
func (req *Request) startOutcome(held bool) {
	req.out = Outcome{Method: req.Method, Host: req.Host, Target: req.Target, Remote: req.RemoteAddr, Held: held}
}

// closing sets Close if the server began to shut down.
func (req *Request) closing() {
	if req.shutting != nil && req.shutting.Load() {
		req.Close = true
	}
}

func writeStatus(w *bufio.Writer, code int) {
	w.WriteString("HTTP/1.1 ")
	w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(code), 10))
	if text := http.StatusText(code); text != "" {
		w.WriteByte(' ')
		w.WriteString(text)
	} else {
		w.WriteString(" status code ")
		w.WriteString(strconv.Itoa(code))
	}
	w.WriteString("\r\n")
}

// writeResponseFields writes the fields of a response header but the
// hop-by-hop ones and, with skipLength, Content-Length.
func writeResponseFields(w *bufio.Writer, h http.Header, skipLength bool) {
	for k, vv := range h {
		if hopByHop(k) || skipLength && k == "Content-Length" {
			continue
		}
		writeValues(w, k, vv)
	}
}

func writeFields(w *bufio.Writer, h http.Header) {
	for k, vv := range h {
		writeValues(w, k, vv)
	}
}

// httpDate returns the current time in the Date header's format,
// formatted at most once a second.
func httpDate() []byte {
	now := time.Now()
	sec := now.Unix()
	if d := cachedDate.Load(); d != nil && d.sec == sec {
		return d.text
	}
	d := &dateText{sec: sec, text: now.UTC().AppendFormat(nil, http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	sec  int64
	text []byte
}

var cachedDate atomic.Pointer[dateText]

// roundTripFast writes req and waits for the first byte of the response,
// as roundTrip does; the caller reads the response.
func (pc *pconn) roundTripFast(req *Request) error {
	if err := pc.writeRequestFast(req); err != nil {
		return errRetry{errNothingWritten}
	}
	if _, err := pc.br.Peek(1); err != nil {
		return errRetry{fmt.Errorf("reading response: %w", err)}
	}
	return nil
}

// writeRequestFast is writeRequest for a parsed request: the same header
// rules, the fields in the order they arrived. Their names and values were
// checked by parseRequest and are written as they are.
func (pc *pconn) writeRequestFast(req *Request) error {
	return writeRequestTo(pc.bw, req)
}

// writeRequestTo writes req's head to bw and flushes it.
func writeRequestTo(bw *bufio.Writer, req *Request) error {
	writeRequestLine(bw, req.Method, req.Target, req.Host)
	trailers := false
	for _, f := range req.Header {
		if f.Name == "Te" {
			trailers = trailers || containsToken(f.Value, "trailers")
			continue
		}
		if skipRequestField(f.Name) || len(req.connection) > 0 && listedIn(req.connection, f.Name) {
			continue
		}
		bw.WriteString(f.Name)
		bw.WriteString(": ")
		bw.WriteString(f.Value)
		bw.WriteString("\r\n")
	}
	return writeRequestEnd(bw, req.Method, req.Host, req.RemoteAddr, req.TLS, trailers, req.zeroLength)
}

// replayable is isReplayable for a parsed request.
func replayable(method string, fields []Field) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	for _, f := range fields {
		if f.Name == "Idempotency-Key" || f.Name == "X-Idempotency-Key" {
			return true
		}
	}
	return false
}
