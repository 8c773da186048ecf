package front

import (
	"net"
	"syscall"
)

// alive reports whether a pooled connection may still be used: the backend
// has not closed it (EOF) nor sent anything unasked. http.Transport learns
// this from a reader goroutine per connection; one non-blocking peek when
// a connection is about to carry a request that cannot be retried is
// cheaper.
func (pc *pconn) alive() bool {
	return pc.br.Buffered() == 0 && idleAlive(pc.conn)
}

// idleAlive reports whether nothing waits to be read on c, an app
// connection between two requests, and the app has not closed it: bytes
// there were written after the end of the last response and would be read
// as the next request's answer. It peeks from the descriptor directly
// (Control, not Read: the transport's reader goroutine may be parked in a
// Read of c, holding its read lock).
func idleAlive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var buf [1]byte
	err = rc.Control(func(fd uintptr) {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = err == syscall.EAGAIN
	})
	return err == nil && alive
}
