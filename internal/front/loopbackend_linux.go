package front

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// This file is an event loop's app connections (loop_linux.go).

var errNotLoopable = errors.New("backend address is not an IP address")

// loopBackend is a connection to an app that a loop opened: pooled per
// upstream in the loop while idle, carrying one client's request at a time.
type loopBackend struct {
	l          *eventLoop
	fd         int
	gen        int32
	u          *upstream
	client     *loopClient // the request it carries; nil when idle
	connecting bool
	readable   bool
	in         []byte
	out        []byte // request bytes not yet written
	checked    bool   // head checked: head and total are set
	head       quickHead
	total      int   // head and body
	check      bool  // check before reuse: bytes may wait that epoll will not report (see respond)
	hup        bool  // epoll reported the backend's end
	idleAt     int64 // UnixNano
	closed     bool
}

func (bc *loopBackend) generation() int32 { return bc.gen }

// backendFor returns an idle connection to u (reused) or dials one.
//
// A loop watches its idle connections: epoll reports bytes an app writes
// to one (a late write after its last response), and each batch of events
// closes such connections before it sends any request (run). What is left
// is checked here (alive, one more system call) — a connection whose
// check is set, and every connection for a request that cannot be sent
// twice (live), which must not meet one the app closed. Checking every
// reuse would cost a system call per request: 3 µs of the 15 µs a request
// costs a loop on these machines, a sixth of its throughput. Bytes that
// reach an idle connection while the loop works through one batch, after
// its last look and before the request is written, are taken for the
// answer — as bytes that reach it as the app gets the request always are.
func (l *eventLoop) backendFor(u *upstream, live bool) (bc *loopBackend, reused bool, err error) {
	list := l.idle[u]
	for len(list) > 0 {
		bc = list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		if bc.closed {
			continue
		}
		if time.Duration(l.now-bc.idleAt) > idleTimeout || (live || bc.check) && !bc.alive() {
			bc.close()
			continue
		}
		l.idle[u] = list
		return bc, true, nil
	}
	l.idle[u] = list
	bc, err = l.dial(u)
	return bc, false, err
}

func (l *eventLoop) putIdle(bc *loopBackend) {
	list := l.idle[bc.u]
	if len(list) >= maxIdlePerUpstream {
		live := list[:0]
		for _, o := range list {
			if !o.closed {
				live = append(live, o)
			}
		}
		clear(list[len(live):])
		list = live
	}
	if len(list) >= maxIdlePerUpstream || bc.hup || l.f.shutting.Load() {
		bc.close()
		return
	}
	bc.idleAt, bc.readable = l.now, false
	if cap(bc.in) > 16<<10 {
		bc.in = make([]byte, 0, 4096) // a large response's buffer is not kept
	}
	l.idle[bc.u] = append(list, bc)
}

// dial opens a non-blocking connection to u.
func (l *eventLoop) dial(u *upstream) (*loopBackend, error) {
	ap, err := netip.ParseAddrPort(u.addr)
	if err != nil {
		return nil, errNotLoopable
	}
	opErr := func(call string, err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: os.NewSyscallError(call, err)}
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, opErr("socket", err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	bc := &loopBackend{l: l, fd: fd, gen: l.nextGen(), u: u}
	switch err := unix.Connect(fd, sa); err {
	case nil:
	case unix.EINPROGRESS:
		bc.connecting = true
	default:
		unix.Close(fd)
		return nil, opErr("connect", err)
	}
	if err := l.add(fd, bc); err != nil {
		unix.Close(fd)
		return nil, opErr("epoll_ctl", err)
	}
	if bc.in == nil {
		bc.in = make([]byte, 0, 4096)
	}
	return bc, nil
}

// alive is pconn.alive for a loop connection.
func (bc *loopBackend) alive() bool {
	var buf [1]byte
	_, _, err := unix.Recvfrom(bc.fd, buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return err == unix.EAGAIN
}

func (bc *loopBackend) event(ev uint32) {
	if bc.connecting {
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		bc.connecting = false
		if e, err := unix.GetsockoptInt(bc.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
			if err == nil {
				err = syscall.Errno(e)
			}
			err = &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(bc.u.addr), Err: os.NewSyscallError("connect", err)}
			if c := bc.client; c != nil && bc.u.retryRefused(err, time.Unix(0, bc.l.now)) {
				// Nothing was sent: the app just started does not
				// accept yet.
				bc.close()
				c.bc, bc.client = nil, nil
				c.dialElsewhere()
				return
			}
			bc.broken(err)
			return
		}
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && len(bc.out) > 0 {
		if err := bc.write(bc.out); err != nil {
			bc.broken(err)
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		bc.readable = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		bc.hup = true // closed by the backend: not to be used again
	}
	if bc.client == nil {
		if bc.readable {
			bc.close() // closed by the backend, or an answer nobody asked for
		}
		return
	}
	if bc.readable || bc.hup {
		bc.read()
	}
}

func tcpAddr(addr string) net.Addr {
	ap, _ := netip.ParseAddrPort(addr)
	return net.TCPAddrFromAddrPort(ap)
}

// write writes p, keeping what the socket does not take for its next
// writable edge.
func (bc *loopBackend) write(p []byte) error {
	n, err := rawWrite(bc.fd, p)
	if err != nil && err != unix.EAGAIN {
		return &net.OpError{Op: "write", Net: "tcp", Addr: tcpAddr(bc.u.addr), Err: os.NewSyscallError("write", err)}
	}
	// p may be bc.out itself: append moves the rest down.
	bc.out = append(bc.out[:0], p[n:]...)
	return nil
}

// broken ends the request bc carries after a connection failure, retrying
// it on another connection when that is safe.
func (bc *loopBackend) broken(err error) {
	c := bc.client
	bc.close()
	if c == nil {
		return
	}
	c.bc = nil
	c.fail(err)
}

// read reads the response to the request bc carries and, once it is
// complete, has the client write it.
func (bc *loopBackend) read() {
	c := bc.client
	for {
		if !bc.checked {
			if n := headerEnd(bc.in); n >= 0 {
				h, ok := checkHead(bc.in[:n], c.req.Method)
				noBody := c.req.Method == http.MethodHead || h.code == http.StatusNoContent || h.code == http.StatusNotModified
				total := n
				if ok && !noBody {
					total += int(h.length)
				}
				if !ok || h.length > maxLoopResponse || total > maxLoopResponse {
					bc.giveBack()
					return
				}
				bc.checked, bc.head, bc.total = true, h, total
			} else if len(bc.in) >= maxLoopResponse {
				bc.giveBack()
				return
			}
		}
		if bc.checked && len(bc.in) >= bc.total {
			c.respond(bc)
			return
		}
		if !bc.readable && !bc.hup {
			return
		}
		if len(bc.in) == cap(bc.in) {
			want := 2 * cap(bc.in)
			if bc.checked {
				want = max(want, bc.total)
			}
			bc.in = append(make([]byte, 0, min(want, maxLoopResponse)), bc.in...)
		}
		n, err := rawRead(bc.fd, bc.in[len(bc.in):cap(bc.in)])
		if err == unix.EAGAIN {
			bc.readable = false
			return
		}
		if err != nil || n == 0 {
			if err == nil {
				err = io.EOF
			}
			c.bc, bc.client = nil, nil
			fresh := len(bc.in) == 0
			bc.close()
			if fresh && c.reused && replayable(c.req.Method, c.req.Header) {
				c.send() // the backend had closed the idle connection
				return
			}
			if !fresh {
				err = io.ErrUnexpectedEOF
			}
			c.fail(fmt.Errorf("reading response: %w", err))
			return
		}
		if n < cap(bc.in)-len(bc.in) {
			bc.readable = false
		}
		bc.in = bc.in[:len(bc.in)+n]
	}
}

// giveBack hands the client connection and bc, with the response begun,
// to a goroutine, which streams the response.
func (bc *loopBackend) giveBack() {
	l, c, u := bc.l, bc.client, bc.u
	c.bc, bc.client = nil, nil
	bc.closed = true
	conn, err := l.release(bc.fd)
	if err != nil {
		c.fail(err)
		return
	}
	pending := bytes.NewReader(append([]byte(nil), bc.in...))
	pc := &pconn{conn: conn, br: bufio.NewReaderSize(io.MultiReader(pending, conn), 4096), bw: bufio.NewWriterSize(conn, 4096), pending: pending, up: u}
	tracked := u.b.track(pc)
	if !tracked {
		conn.Close()
	}
	req := &c.req
	handed := c.giveBack(func(w *bufio.Writer, h *hangup) bool {
		if !tracked {
			return u.failFast(w, req, errAborted)
		}
		if !h.use(pc.conn) {
			pc.close()
			return false
		}
		return u.respondTo(pc, req, w, h)
	})
	if !handed && tracked {
		pc.close()
	}
}

func (bc *loopBackend) close() {
	if bc.closed {
		return
	}
	bc.closed = true
	bc.l.forget(bc.fd)
	unix.Close(bc.fd)
}
