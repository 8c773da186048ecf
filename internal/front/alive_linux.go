package front

import "syscall"

// alive reports whether a pooled connection may carry a request now:
// nothing the app wrote waits to be read, in the connection's buffers or
// in its socket, and the app has not closed it (EOF). Bytes there came
// after the end of the last response, before this request was written:
// they would be read as its answer. It peeks once, without blocking:
// cheaper than a reader goroutine per idle connection watching it, as
// http.Transport has, and never behind it.
func (pc *pconn) alive() bool {
	if pc.buffered() {
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
	err = rc.Control(func(fd uintptr) {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = err == syscall.EAGAIN
	})
	return err == nil && alive
}
