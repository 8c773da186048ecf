package front

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPopIdle: the pool hands out its most recently used connection, and
// one idle past idleTimeout is closed with every older one.
func TestPopIdle(t *testing.T) {
	u := &upstream{b: &Backend{conns: map[*pconn]struct{}{}}}
	now := time.Now()
	var closed []net.Conn
	add := func(idle time.Duration) *pconn {
		c, peer := net.Pipe()
		t.Cleanup(func() { peer.Close() })
		closed = append(closed, c)
		pc := &pconn{conn: c, up: u, idleAt: now.Add(-idle)}
		u.idle = append(u.idle, pc)
		return pc
	}
	add(idleTimeout + 2*time.Second)
	add(idleTimeout + time.Second)
	fresh := add(time.Second)
	if pc := u.popIdle(now); pc != fresh {
		t.Fatalf("popIdle = %p, want the most recent connection %p", pc, fresh)
	}
	if pc := u.popIdle(now); pc != nil {
		t.Fatalf("popIdle = %p, want nil: the rest are stale", pc)
	}
	if len(u.idle) != 0 {
		t.Errorf("%d connections left in the pool", len(u.idle))
	}
	for i, c := range closed[:2] {
		if err := c.SetDeadline(time.Time{}); err != io.ErrClosedPipe {
			t.Errorf("stale connection %d: %v, want it closed", i, err)
		}
	}
}

// TestPutRefusesUnreadBytes: a connection that holds bytes read from the
// app and not consumed after a response — still in what an event loop had
// read before it handed the connection over (loopBackend.giveBack), below
// the buffer, which a large body's reads go around — is closed, not
// pooled: the app wrote them after the end of the response, and the next
// request would take them as its answer.
func TestPutRefusesUnreadBytes(t *testing.T) {
	const stray = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED"
	body := strings.Repeat("b", 8192)
	resp := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	for _, tc := range []struct {
		name, read string // read by the loop
		pooled     bool
	}{
		{"the response", resp, true},
		{"the response and bytes after it", resp + stray, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &upstream{b: &Backend{conns: map[*pconn]struct{}{}}}
			c, app := net.Pipe()
			t.Cleanup(func() { app.Close(); c.Close() })
			pending := bytes.NewReader([]byte(tc.read))
			pc := &pconn{conn: c, br: bufio.NewReaderSize(io.MultiReader(pending, c), 4096), pending: pending, up: u}
			r, err := http.ReadResponse(pc.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			// As the forwarder copies a body: 32 KiB reads, which
			// bufio serves from under its buffer once it is empty.
			if n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r.Body}, make([]byte, 32<<10)); err != nil || n != int64(len(body)) {
				t.Fatalf("body: %d bytes, %v", n, err)
			}
			u.put(pc)
			if pooled := len(u.idle) == 1; pooled != tc.pooled {
				t.Errorf("pooled: %v, want %v", pooled, tc.pooled)
			}
		})
	}
}
