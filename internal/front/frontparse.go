package front

import (
	"bufio"
	"bytes"
	"net/textproto"
	"strings"
	"sync/atomic"
)

// Request is a request the front end (front.go) forwards itself: HTTP/1.1,
// origin-form target, no body, no upgrade. parseRequest accepts only
// requests that net/http would read the same way; everything else is left
// to net/http.
type Request struct {
	Method string
	// Target is the origin-form request target as received ("/p?q"): it
	// is sent to the backend unchanged, which is what ReverseProxy sends
	// for the targets parseRequest accepts.
	Target string
	Host   string
	// Header holds the fields in arrival order with canonical names,
	// without Host.
	Header []Field
	// Close is set when the client asked to close the connection after
	// the response (or the server is shutting down): the response says
	// Connection: close.
	Close      bool
	RemoteAddr string
	TLS        bool
	// zeroLength: the client sent "Content-Length: 0".
	zeroLength bool
	// connection holds the values of the Connection fields, which name
	// the fields not to pass on.
	connection []string
	// shutting, when set, makes the response close the connection (its
	// server began to shut down while the request ran).
	shutting *atomic.Bool
	// out is how the request went, reported by its slot (Outcome).
	out Outcome
}

// Field is one header field.
type Field struct{ Name, Value string }

// bufferedHead waits until br holds a complete head (of a request or a
// response) and returns it, unconsumed. It returns nil if the head
// outgrows br's buffer, and nil with the read error if the connection
// fails first: br then holds what arrived.
func bufferedHead(br *bufio.Reader) ([]byte, error) {
	for {
		buf, _ := br.Peek(br.Buffered())
		if n := headerEnd(buf); n >= 0 {
			return buf[:n], nil
		}
		if len(buf) >= br.Size() {
			return nil, nil
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// headerEnd returns the length of the head at the start of b (up to and
// including the empty line), or -1 if b holds no complete head.
func headerEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
		if i >= len(b) {
			return -1
		}
	}
}

// parseRequest parses a complete request head (as delimited by headerEnd)
// into req, reusing req.Header's storage. It returns false for anything
// the fast path does not take: another protocol version, a body, an
// upgrade, Expect, CONNECT, an absolute or unusual target, obsolete line
// folding, non-ASCII or control bytes, a missing or repeated Host — and
// for every malformed request, which net/http then answers.
func parseRequest(head string, req *Request) bool {
	fields, connection := req.Header[:0], req.connection[:0]
	*req = Request{Header: fields, connection: connection, shutting: req.shutting}
	line, rest, ok := nextLine(head)
	if !ok {
		return false
	}
	sp1 := strings.IndexByte(line, ' ')
	if sp1 <= 0 {
		return false
	}
	sp2 := strings.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return false
	}
	sp2 += sp1 + 1
	method, target, proto := line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	// The methods methodRefusal refuses are refused by the head scanner
	// (frontguard.go).
	if proto != "HTTP/1.1" || methodRefusal(method) != 0 || !fastTarget(target) {
		return false
	}
	req.Method, req.Target = method, target
	hosts := 0
	for {
		line, rest, ok = nextLine(rest)
		if !ok {
			return false
		}
		if line == "" {
			break
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return false
		}
		name := line[:colon]
		if !isToken(name) {
			return false
		}
		value := strings.Trim(line[colon+1:], " \t")
		if !fieldValue(value) {
			return false
		}
		if strings.IndexByte(name, '_') >= 0 {
			// Dropped, as nginx does: an app (or a framework that maps
			// "_" to "-") could take X_Forwarded_For for this hop's.
			continue
		}
		name = textproto.CanonicalMIMEHeaderKey(name)
		switch name {
		case "Host":
			hosts++
			if hosts > 1 || !fastHost(value) {
				return false
			}
			req.Host = value
			continue
		case "Content-Length":
			if value != "0" || req.zeroLength {
				return false
			}
			req.zeroLength = true
		case "Transfer-Encoding", "Upgrade", "Expect":
			return false
		case "Connection":
			connection = append(connection, value)
			req.Close = req.Close || containsToken(value, "close")
		}
		fields = append(fields, Field{name, value})
	}
	req.Header, req.connection = fields, connection
	return rest == "" && hosts == 1
}

// nextLine splits s after its first line, which must end in CRLF or LF; the
// line is returned without its end.
func nextLine(s string) (line, rest string, ok bool) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return "", "", false
	}
	line, rest = s[:i], s[i+1:]
	if strings.HasSuffix(line, "\r") {
		line = line[:len(line)-1]
	}
	if strings.IndexByte(line, '\r') >= 0 {
		return "", "", false
	}
	return line, rest, true
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChar[s[i]] {
			return false
		}
	}
	return true
}

var tokenChar = charClass("!#$%&'*+-.^_`|~")

// charClass is the set of ASCII letters, digits and the bytes of extra.
func charClass(extra string) (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for i := range len(extra) {
		t[extra[i]] = true
	}
	return t
}

// fieldValue reports whether v holds only visible ASCII, spaces and tabs.
func fieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// fastHost accepts host names, IPv4 and bracketed IPv6 literals with an
// optional port: the characters net/http's Host check allows minus the
// rare ones.
func fastHost(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']') {
			return false
		}
	}
	return true
}

// fastTarget accepts an origin-form target whose path holds only characters
// that url.URL.EscapedPath keeps as they are and valid %XX escapes, and
// whose query holds visible ASCII with valid escapes and no ';' (a query
// ReverseProxy passes unchanged). For these, the target ReverseProxy sends
// is the target received, so the fast path sends it as is.
func fastTarget(t string) bool {
	if t == "" || t[0] != '/' {
		return false
	}
	query := false
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c == '%':
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return false
			}
			i += 2
		case c == '?':
			query = true
		case c == '#' || c == ';' && query:
			return false
		case query:
			if c <= 0x20 || c >= 0x7f {
				return false
			}
		case !pathChar[c]:
			return false
		}
	}
	return true
}

var pathChar = charClass("-._~/!$&'()*+,;=:@")
