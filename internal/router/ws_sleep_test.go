package router

import (
	"io"
	"net/http"
	"testing"

	"hostel/internal/front/fronttest"
)

// TestNoSleepWithAnUpgradedConnectionOpen: a version with a WebSocket (an
// upgraded connection) open is not put to sleep, however long it has
// been idle; once it closes, it may be.
func TestNoSleepWithAnUpgradedConnectionOpen(t *testing.T) {
	addr := fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, line)
		}
	}))
	r, pub := routeTo(t, addr)
	c, br := fronttest.RawConn(t, pub)
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(c, "ping\n")
	if line, _ := br.ReadString('\n'); line != "ping\n" {
		t.Fatalf("the upgraded connection echoed %q", line)
	}
	if r.Sleep(apiV1, 0) {
		t.Fatal("Sleep with an upgraded connection open: true")
	}
	c.Close()
	fronttest.WaitFor(t, "the connection's slot back", func() bool { return r.InFlight(apiV1) == 0 })
	if !r.Sleep(apiV1, 0) {
		t.Fatal("Sleep after the connection closed: false")
	}
}
