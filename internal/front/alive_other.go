//go:build !linux

package front

import "net"

// alive reports whether a pooled connection may still be used; without a
// non-blocking peek it can only check for bytes the backend sent unasked.
func (pc *pconn) alive() bool { return pc.br.Buffered() == 0 }

// idleAlive cannot peek without Linux's recvfrom flags: http.Transport's
// own reader goroutine is the only check there.
func idleAlive(net.Conn) bool { return true }
