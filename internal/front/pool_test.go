package front

import (
	"io"
	"net"
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
