package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// This file is the transport of the requests the forwarder (forward.go)
// leaves to httputil.ReverseProxy — those with a body, protocol upgrades,
// Expect: 100-continue — in place of http.Transport. It sends them on the
// forwarder's pooled app connections, for one property the standard
// transport cannot give: a request's answer is read only from bytes that
// reached the connection after the check made just before the request was
// written, so bytes an app wrote after an earlier response (a late write
// after a chunked body, a buggy or hostile app) are never another client's
// answer.
//
// http.Transport's reader goroutine reads an idle connection ahead into
// its own buffer. When it finds bytes there it drops the connection — if
// no request took the connection meanwhile; if one did, those bytes are
// that request's answer (its log line "Unsolicited response received on
// idle HTTP channel" is the race it won). No check before reuse sees
// bytes already in that buffer. Here nothing reads an idle connection:
// what an app writes to one stays in the socket, where pconn.alive sees it
// right before the request is written (upstream.get), and the response is
// read after that, on the request's own goroutine. Bytes that arrive
// between that check and the write — an app writing at the very moment the
// next request reaches it — are indistinguishable from its answer, for any
// HTTP/1.1 client.

// expectContinueTimeout is how long the body of a request with "Expect:
// 100-continue" waits for the app's 100 (or final answer) before it is
// sent anyway, as http.Transport's ExpectContinueTimeout.
const expectContinueTimeout = time.Second

// errBodyNotSent ends the body of a request with "Expect: 100-continue"
// that the app answered without asking for it: the connection is closed
// after the answer rather than sent the body.
var errBodyNotSent = errors.New("app answered without asking for the body")

// RoundTrip sends req, as u.proxy made it, to u's app on a pooled or new
// connection and returns the app's answer; it is u.proxy's transport. A
// request is sent again on another connection only when nothing of it
// was (the pooled connection failed its check or the write of its head),
// or when it has no body, may be replayed (isReplayable) and its pooled
// connection was closed by the app before any answer.
func (u *upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodConnect {
		// The guard answers CONNECT 405; nothing forwards a tunnel.
		return nil, errors.New("CONNECT is not forwarded")
	}
	if strings.ContainsFunc(req.URL.RequestURI(), func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return nil, errors.New("control character in the request target")
	}
	ctx := req.Context()
	for {
		if u.b.aborted.Load() {
			return nil, errAborted
		}
		// get checks a pooled connection (pconn.alive): the head is
		// written right after, on this goroutine.
		pc, reused, err := u.get(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := pc.exchange(req, reused)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		if _, retry := err.(errRetry); !retry {
			return nil, err
		}
	}
}

// exchange is one request on an app connection: the head written by the
// caller, the body (if any) by a goroutine of its own, the response read
// by the caller and its body by whoever reads resp.Body; the connection
// goes back to the pool once both directions ended whole.
type exchange struct {
	pc   *pconn
	stop func() bool // ends the watch of the request's context
	// wrote receives the body's outcome (nil: sent whole); it is
	// filled at once for a request without one.
	wrote chan error
	// cont tells the body of an Expect: 100-continue request whether
	// to go (the app's 100) or not (its final answer came first); nil
	// without Expect.
	cont     chan bool
	resp     *http.Response
	finished atomic.Bool
}

// exchange writes req's head on pc, which get just checked, starts its
// body, and reads the response's head. An errRetry means req may be sent
// on another connection; pc is closed on every error.
func (pc *pconn) exchange(req *http.Request, reused bool) (*http.Response, error) {
	// A client that goes away or an abort ends the app's request too:
	// closing the connection is what tells the app, and it unblocks the
	// reads and writes. (It is also what closes the connection of a 101
	// that ReverseProxy refused without closing its body.)
	ex := &exchange{pc: pc, stop: context.AfterFunc(req.Context(), pc.close), wrote: make(chan error, 1)}
	hasBody := req.Body != nil && req.Body != http.NoBody
	chunked := hasBody && req.ContentLength < 0
	if err := writeProxyHead(pc, req, hasBody, chunked); err != nil {
		ex.fail()
		if reused {
			// Nothing of the request was taken: the app had closed
			// the connection, or it failed its check.
			return nil, errRetry{errNothingWritten}
		}
		return nil, err
	}
	if hasBody {
		if containsToken(strings.Join(req.Header["Expect"], ","), "100-continue") {
			ex.cont = make(chan bool, 1)
		}
		go ex.writeBody(req, chunked)
	} else {
		ex.wrote <- nil
	}
	resp, err := ex.readResponse(req)
	if err != nil {
		ex.letBody(false)
		ex.fail()
		var retry errRetry
		if reused && !hasBody && isReplayable(req) && errors.As(err, &retry) {
			return nil, err
		}
		if errors.As(err, &retry) {
			err = retry.err
		}
		return nil, err
	}
	return resp, nil
}

// readResponse reads the app's answer to req: interim (1xx) responses are
// passed to the request's trace, as http.Transport does for
// ReverseProxy, and the final one returned with a body that gives the
// connection back at its end. An EOF before the first byte is an
// errRetry.
func (ex *exchange) readResponse(req *http.Request) (*http.Response, error) {
	pc := ex.pc
	if _, err := pc.br.Peek(1); err != nil {
		return nil, errRetry{fmt.Errorf("reading response: %w", err)}
	}
	trace := httptrace.ContextClientTrace(req.Context())
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, fmt.Errorf("reading response: %w", err)
		}
		code := resp.StatusCode
		if code == http.StatusSwitchingProtocols {
			ex.letBody(false)
			if len(req.Header["Upgrade"]) == 0 {
				return nil, errors.New("backend switched protocols without an upgrade request")
			}
			ex.resp = resp
			resp.Body = &upgradedBody{ex: ex}
			return resp, nil
		}
		if code < 200 {
			// ReverseProxy passes it on: a 100 reaches the client
			// before the body is asked of it, and net/http's server
			// does not send one of its own after it.
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
					return nil, err
				}
			}
			if code == http.StatusContinue {
				ex.letBody(true)
			}
			continue
		}
		ex.letBody(false) // a final answer without a 100: the body is not sent
		ex.resp = resp
		resp.Body = &appBody{ex: ex, body: resp.Body}
		return resp, nil
	}
}

// letBody tells a body waiting for the app's 100 whether to go; only the
// first word counts.
func (ex *exchange) letBody(send bool) {
	if ex.cont != nil {
		select {
		case ex.cont <- send:
		default:
		}
	}
}

// writeBody sends req's body and reports how it went on ex.wrote. A body
// that fails closes the connection: the app must not wait for the rest,
// and the reader of the response learns of it. One the app declined is
// not sent at all, and its answer is read whole before the connection
// is closed (finish).
func (ex *exchange) writeBody(req *http.Request, chunked bool) {
	err := ex.sendBody(req, chunked)
	if err != nil && err != errBodyNotSent {
		ex.pc.conn.Close()
	}
	ex.wrote <- err
}

func (ex *exchange) sendBody(req *http.Request, chunked bool) error {
	if ex.cont != nil {
		t := time.NewTimer(expectContinueTimeout)
		select {
		case send := <-ex.cont:
			t.Stop()
			if !send {
				return errBodyNotSent
			}
		case <-t.C:
		}
	}
	// Each piece goes on as it comes, as from http.Transport: an app
	// may read an upload as a stream.
	bw := ex.pc.bw
	var body io.Reader = req.Body
	if !chunked {
		body = io.LimitReader(req.Body, req.ContentLength)
	}
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	buf := *bufp
	var sent int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			sent += int64(n)
			if chunked {
				bw.Write(strconv.AppendUint(bw.AvailableBuffer(), uint64(n), 16))
				bw.WriteString("\r\n")
			}
			bw.Write(buf[:n])
			if chunked {
				bw.WriteString("\r\n")
			}
			if err := bw.Flush(); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if !chunked {
		if sent < req.ContentLength {
			return fmt.Errorf("request body: %w after %d of %d bytes", io.ErrUnexpectedEOF, sent, req.ContentLength)
		}
		return nil
	}
	bw.WriteString("0\r\n")
	req.Trailer.Write(bw)
	bw.WriteString("\r\n")
	return bw.Flush()
}

// finish ends the exchange once the response's body was read to its end
// (whole) or abandoned: the connection goes back to the pool only if the
// request's body was sent whole too, the context did not end it, and
// neither side asked for it to close.
func (ex *exchange) finish(whole bool) {
	if ex.finished.Swap(true) {
		return
	}
	pc := ex.pc
	if !ex.stop() {
		whole = false // the context ended: the connection is being closed
	}
	if whole {
		whole = ex.bodySent()
	}
	if whole && !ex.resp.Close && !ex.resp.Request.Close && !pc.up.b.aborted.Load() {
		pc.up.put(pc)
		return
	}
	pc.close()
}

// maxBodyWait is how long the end of a response waits for its request's
// body to be out before the connection is closed rather than pooled, as
// http.Transport waits (maxWriteWaitBeforeConnReuse): an app normally
// answers once it read the body, a moment before its writer is done.
const maxBodyWait = 50 * time.Millisecond

// bodySent reports whether the request's body went out whole, waiting
// for it a moment (maxBodyWait).
func (ex *exchange) bodySent() bool {
	select {
	case err := <-ex.wrote:
		return err == nil
	default:
	}
	t := time.NewTimer(maxBodyWait)
	defer t.Stop()
	select {
	case err := <-ex.wrote:
		return err == nil
	case <-t.C:
		// The app answered long before it had the whole body: the
		// connection cannot carry another request until it is out.
		return false
	}
}

// fail ends an exchange that produced no response.
func (ex *exchange) fail() {
	ex.finished.Store(true)
	ex.stop()
	ex.pc.close()
}

// appBody is the body of a final response: the connection is given back
// (or closed) when it ends or is closed.
type appBody struct {
	ex   *exchange
	body io.ReadCloser // http.ReadResponse's: framed, reading from pc.br
}

func (b *appBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err != nil {
		b.ex.finish(err == io.EOF)
	}
	return n, err
}

func (b *appBody) Close() error {
	b.ex.finish(false) // nothing if it ended already
	return nil
}

// upgradedBody is the body of a 101 Switching Protocols response, which
// ReverseProxy needs writable: the connection itself, never pooled again.
type upgradedBody struct{ ex *exchange }

func (b *upgradedBody) Read(p []byte) (int, error)  { return b.ex.pc.br.Read(p) }
func (b *upgradedBody) Write(p []byte) (int, error) { return b.ex.pc.conn.Write(p) }
func (b *upgradedBody) Close() error {
	b.ex.finish(false)
	return nil
}

// proxyHeadSkipped are the fields writeProxyHead writes itself (or not at
// all), as http.Request.Write does.
var proxyHeadSkipped = map[string]bool{
	"Host": true, "User-Agent": true, "Content-Length": true, "Transfer-Encoding": true, "Trailer": true,
}

// writeProxyHead writes req's head and flushes it, as http.Request.Write
// writes a request ReverseProxy made (and http.Transport sends): the
// request line, Host, User-Agent unless empty (ReverseProxy sets it empty
// not to send Go's own), the body's framing — a Content-Length, or
// chunked with the announced trailers for a body of unknown length, or an
// explicit zero for the methods that normally carry a body — and the
// other fields. The body goes on in another goroutine (writeBody).
func writeProxyHead(pc *pconn, req *http.Request, hasBody, chunked bool) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	bw := pc.bw
	writeRequestLine(bw, req.Method, req.URL.RequestURI(), host)
	if ua := req.Header["User-Agent"]; len(ua) > 0 && ua[0] != "" {
		writeValues(bw, "User-Agent", ua[:1])
	}
	switch {
	case chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(req.Trailer) > 0 {
			keys := make([]string, 0, len(req.Trailer))
			for k := range req.Trailer {
				keys = append(keys, textproto.CanonicalMIMEHeaderKey(k))
			}
			slices.Sort(keys)
			writeValues(bw, "Trailer", []string{strings.Join(keys, ",")})
		}
	case hasBody:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), req.ContentLength, 10))
		bw.WriteString("\r\n")
	case req.Method == "POST" || req.Method == "PUT" || req.Method == "PATCH":
		bw.WriteString("Content-Length: 0\r\n")
	}
	if req.Close && !containsToken(strings.Join(req.Header["Connection"], ","), "close") {
		bw.WriteString("Connection: close\r\n")
	}
	if err := req.Header.WriteSubset(bw, proxyHeadSkipped); err != nil {
		return err
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}
