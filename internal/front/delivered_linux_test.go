package front_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tcpEstablished is Linux's TCP_ESTABLISHED (include/net/tcp_states.h),
// a TCPInfo.State.
const tcpEstablished = 1

// waitDelivered returns once everything written to c was acknowledged by
// its peer — on loopback, is in the peer's socket — or the peer closed the
// connection (a socket closed with bytes unread answers them with a reset,
// not an acknowledgement): a test orders the arrival of an app's bytes
// against a request exactly.
func waitDelivered(t testing.TB, c net.Conn) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Error(err) // from the app's goroutine: no Fatal
		return
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		var unacked int
		var info *unix.TCPInfo
		var ioErr error
		err := rc.Control(func(fd uintptr) {
			if unacked, ioErr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); ioErr == nil {
				info, ioErr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			}
		})
		if err != nil || ioErr != nil {
			t.Errorf("SIOCOUTQ, TCP_INFO: %v %v", err, ioErr)
			return
		}
		if unacked == 0 || info.State != tcpEstablished {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d bytes still unacknowledged after 10 s", unacked)
			return
		}
		time.Sleep(time.Millisecond)
	}
}
