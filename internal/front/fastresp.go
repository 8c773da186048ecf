package front

import (
	"bufio"
	"bytes"
	"net/http"
	"strconv"
)

// This file is the forwarder's quick path for the common response: an
// HTTP/1.1 final status, a Content-Length (or no body by rule: HEAD, 204,
// 304), no Transfer-Encoding, Trailer or Upgrade field, no Connection field
// but "keep-alive" or "close" (which Node and gunicorn send), a head
// that fits the connection's buffer. It is checked and copied from the
// buffer without allocating; any other response is read by
// http.ReadResponse (fast.go).

// quickHead is what checkHead learns of a response head.
type quickHead struct {
	n        int // length of the head, up to and including the empty line
	code     int
	length   int64 // -1: none
	date     bool
	stream   bool // text/event-stream
	hopByHop bool // a hop-by-hop field the write must skip
	close    bool // the backend closes its connection after this response
}

// peekHead waits until br holds a complete response head and checks it;
// ok is false for anything the quick path does not take, and nothing is
// consumed either way.
func peekHead(br *bufio.Reader, method string) (h quickHead, ok bool) {
	head, _ := bufferedHead(br)
	if head == nil {
		return h, false
	}
	return checkHead(head, method)
}

func checkHead(head []byte, method string) (h quickHead, ok bool) {
	h.n, h.length = len(head), -1
	line, rest := cutLine(head)
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' {
		return h, false
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return h, false
		}
		h.code = h.code*10 + int(c-'0')
	}
	if h.code < 200 || !fieldValueBytes(line[12:]) {
		return h, false
	}
	lengths := 0
	for {
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !canonicalToken(line[:colon]) {
			return h, false
		}
		value := trimOWS(line[colon+1:])
		if !fieldValueBytes(value) {
			return h, false
		}
		switch string(line[:colon]) {
		case "Transfer-Encoding", "Trailer", "Upgrade":
			return h, false
		case "Connection":
			// Other values name fields to drop, which the
			// ReadResponse path handles.
			switch {
			case bytes.EqualFold(value, []byte("keep-alive")):
			case bytes.EqualFold(value, []byte("close")):
				h.close = true
			default:
				return h, false
			}
			h.hopByHop = true
		case "Keep-Alive", "Proxy-Connection", "Te", "Proxy-Authenticate", "Proxy-Authorization":
			h.hopByHop = true
		case "Content-Length":
			lengths++
			if lengths > 1 || len(value) == 0 || len(value) > 18 {
				return h, false
			}
			h.length = 0
			for _, c := range value {
				if c < '0' || c > '9' {
					return h, false
				}
				h.length = h.length*10 + int64(c-'0')
			}
		case "Date":
			h.date = true
		case "Content-Type":
			h.stream = h.stream || eventStreamType(value)
		}
	}
	noBody := method == http.MethodHead || h.code == http.StatusNoContent || h.code == http.StatusNotModified
	if !noBody && h.length < 0 {
		return h, false // delimited by the connection's close
	}
	return h, true
}

// writeHead writes the response head checked by checkHead as the quick
// path sends it: net/http's status line, the fields as received but the
// hop-by-hop ones (and Content-Length, written last, for a response with a
// body), Date if missing, Connection: close if the client connection ends.
func writeHead(w *bufio.Writer, head []byte, h quickHead, noBody, close bool) {
	writeStatus(w, h.code)
	_, rest := cutLine(head)
	for {
		var line []byte
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		name := line[:colon]
		if h.hopByHop {
			switch string(name) {
			case "Connection", "Keep-Alive", "Proxy-Connection", "Te", "Proxy-Authenticate", "Proxy-Authorization":
				continue
			}
		}
		if !noBody && string(name) == "Content-Length" {
			continue
		}
		w.Write(name)
		w.WriteString(": ")
		w.Write(trimOWS(line[colon+1:]))
		w.WriteString("\r\n")
	}
	if !h.date {
		w.WriteString("Date: ")
		w.Write(httpDate())
		w.WriteString("\r\n")
	}
	if !noBody {
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), h.length, 10))
		w.WriteString("\r\n")
	}
	if close {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
}

// cutLine splits b after its first line (CRLF or LF), returned without
// its end; a line holding a lone CR is returned with it, which fails the
// checks.
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// fieldValueBytes is fieldValue for bytes.
func fieldValueBytes(v []byte) bool {
	for _, c := range v {
		if (c < 0x20 && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// eventStreamType is isEventStream for one Content-Type value.
func eventStreamType(v []byte) bool {
	const es = "text/event-stream"
	v = bytes.TrimLeft(v, " \t")
	if len(v) < len(es) || !bytes.EqualFold(v[:len(es)], []byte(es)) {
		return false
	}
	rest := v[len(es):]
	return len(rest) == 0 || rest[0] == ';' || rest[0] == ' ' || rest[0] == '\t'
}

func trimOWS(b []byte) []byte {
	return bytes.Trim(b, " \t")
}

// canonicalToken reports whether b is a field name in the canonical form
// net/http gives names ("Content-Type"), so that the quick path sends the
// names the ReadResponse path would.
func canonicalToken(b []byte) bool {
	upper := true
	for _, c := range b {
		if !tokenChar[c] {
			return false
		}
		switch {
		case upper && 'a' <= c && c <= 'z', !upper && 'A' <= c && c <= 'Z':
			return false
		}
		upper = c == '-'
	}
	return len(b) > 0
}

// respondQuick writes the response whose head peekHead checked, copying
// its body from pc. keep and reuse are respondFast's.
func (u *upstream) respondQuick(pc *pconn, h quickHead, req *Request, w *bufio.Writer, hu *hangup) (keep, reuse bool) {
	noBody := req.Method == http.MethodHead || h.code == http.StatusNoContent || h.code == http.StatusNotModified
	req.closing()
	head, _ := pc.br.Peek(h.n)
	writeHead(w, head, h, noBody, req.Close)
	req.out.Status = h.code
	pc.br.Discard(h.n)
	if noBody {
		return !req.Close, !h.close
	}
	remaining := h.length
	if remaining <= int64(pc.br.Buffered()) {
		// The whole body is here already (small responses).
		body, _ := pc.br.Peek(int(remaining))
		w.Write(body)
		req.out.Bytes = remaining
		pc.br.Discard(int(remaining))
		if h.stream && w.Flush() != nil {
			return false, false
		}
		return !req.Close, !h.close
	}
	if w.Flush() != nil {
		return false, false
	}
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	buf := *bufp
	for remaining > 0 {
		n, err := pc.br.Read(buf[:min(int64(len(buf)), remaining)])
		if n > 0 {
			remaining -= int64(n)
			req.out.Bytes += int64(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return false, false
			}
			if h.stream && w.Flush() != nil {
				return false, false
			}
		}
		if err != nil && remaining > 0 {
			if !hu.isGone() && !u.b.aborted.Load() {
				u.b.logf("router: %s %s%s via %s: reading response body: %v", req.Method, req.Host, req.Target, u.b.key, err)
			}
			return false, false
		}
	}
	return !req.Close, !h.close
}
