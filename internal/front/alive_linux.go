package front

import "syscall"

// alive reports whether a pooled connection may still be used: the backend
// has not closed it (EOF) nor sent anything unasked. http.Transport learns
// this from a reader goroutine per connection; one non-blocking peek when
// a connection is about to carry a request that cannot be retried is
// cheaper.
func (pc *pconn) alive() bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	sc, ok := pc.conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = err == syscall.EAGAIN
		return true
	})
	return err == nil && alive
}
