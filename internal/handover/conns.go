package handover

import (
	"encoding/base64"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The client connections a daemon replaced by hostel upgrade would close
// between requests go to the new daemon instead, on the upgrade's control
// socket once the new daemon serves: a close between requests races the
// client's next request, which a client does not send again if it is not
// idempotent. Each goes in a message of its own:
//
//	"conn PENDING\n" with the connection's descriptor, PENDING the bytes
//	read of its next request (base64, often empty).

// ConnSender passes client connections on over a control socket. Its
// methods are safe for concurrent use.
type ConnSender struct {
	mu sync.Mutex
	c  *net.UnixConn
}

// NewConnSender sends on c, a unix stream socket.
func NewConnSender(c net.Conn) (*ConnSender, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, errors.New("control socket: not a unix connection")
	}
	return &ConnSender{c: uc}, nil
}

// Send passes the connection fd (which stays the caller's to close) and
// the bytes read ahead of it.
func (s *ConnSender) Send(fd int, pending []byte) error {
	msg := "conn " + base64.StdEncoding.EncodeToString(pending) + "\n"
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _, err := s.c.WriteMsgUnix([]byte(msg), syscall.UnixRights(fd), nil)
	return err
}

// ReceiveConns reads the connections passed on c until it ends, and gives
// each, with the bytes read ahead of it, to adopt.
func ReceiveConns(c net.Conn, adopt func(c net.Conn, pending []byte)) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return errors.New("control socket: not a unix connection")
	}
	r := newRightsReader(uc)
	for {
		line, fds, err := r.next()
		if err != nil {
			CloseAll(fds)
			if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		enc, ok := strings.CutPrefix(line, "conn ")
		pending, derr := base64.StdEncoding.DecodeString(enc)
		if !ok || derr != nil || len(fds) != 1 {
			CloseAll(fds)
			continue
		}
		f := os.NewFile(uintptr(fds[0]), "passed")
		conn, err := net.FileConn(f)
		f.Close()
		if err != nil {
			continue
		}
		adopt(conn, pending)
	}
}
