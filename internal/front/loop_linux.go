package front

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file is the front end's event loops (Linux): HTTP/1.1 client
// connections (plain ones, and TLS ones once their handshake is done) and
// the backend connections their requests go to are served by a few
// goroutines that each wait on their own epoll set and do the reads and
// writes themselves, as nginx's worker does. The goroutine-per-connection
// front end (front.go) costs a Go scheduler wake-up per read that has to
// wait, a read that finds nothing (EAGAIN) first, and the runtime's own
// poller in between: about a quarter of the router's CPU time per request,
// which is what kept it level with nginx instead of ahead.
//
// A TLS connection keeps its crypto/tls session: the loop puts what it
// reads into the session's switchConn and writes out what the session
// wrote there (front.go).
//
// A loop takes only the common exchange: a request parseRequest accepts
// for a host the router forwards, and a response checkHead accepts whose
// head and body fit maxLoopResponse. Anything else — a request the fast
// path does not take, a streamed, chunked or large response, a backend
// given by name — goes back to a goroutine: the client connection (and
// the backend connection of a response under way) become net.Conns again,
// with the bytes the loop read ahead in front, and front.go serves them
// from there on.
//
// The loop owns its descriptors: adopt duplicates an accepted connection's
// descriptor and closes the net.Conn, so that Go's poller forgets it and
// nothing else can close it under the loop.

// maxLoopResponse bounds the response (head and body) a loop buffers to
// forward whole; larger ones are streamed by a goroutine.
const maxLoopResponse = 64 << 10

const loopEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// loopPartialWrites counts responses a client's socket did not take at
// once, for tests.
var loopPartialWrites atomic.Int64

var errLoopClosed = errors.New("router: event loops closed")

// loops are a Front's event loops.
type loops struct {
	f     *Front
	ls    []*eventLoop
	next  atomic.Uint32
	conns atomic.Int64 // client connections the loops hold
	wg    sync.WaitGroup
}

// startLoops starts n event loops for f (0: one per two CPUs, see
// defaultLoops); nil if they cannot be set up, which leaves every
// connection to goroutines.
func (f *Front) startLoops(n int) *loops {
	if n <= 0 {
		n = defaultLoops()
	}
	ls := &loops{f: f}
	for range n {
		l, err := newEventLoop(ls)
		if err != nil {
			f.logf("router: front end: no event loop (%v): connections are served by goroutines", err)
			for _, l := range ls.ls {
				l.closeFDs()
			}
			return nil
		}
		ls.ls = append(ls.ls, l)
	}
	for _, l := range ls.ls {
		ls.wg.Go(l.run)
	}
	return ls
}

// tick has every loop check its connections' timeouts and the backends
// aborted past their stop grace: the Front's sweeper calls it on each of
// its ticks.
func (ls *loops) tick() {
	if ls == nil {
		return
	}
	for _, l := range ls.ls {
		l.mu.Lock()
		l.tickAsked = true
		l.wakeLocked()
		l.mu.Unlock()
	}
}

// stop wakes the loops to see that the Front has stopped.
func (ls *loops) stop() {
	if ls == nil {
		return
	}
	for _, l := range ls.ls {
		l.wake()
	}
}

// adopt hands an accepted plain-HTTP connection to a loop. On error c is
// untouched.
func (ls *loops) adopt(c net.Conn, t *connTicket) error {
	return ls.adoptFD(c, c.RemoteAddr().String(), nil, t)
}

// adoptTLS hands a TLS connection whose handshake is done to a loop: its
// switchConn turns to the loop's buffers. On error tc is untouched.
func (ls *loops) adoptTLS(tc *tls.Conn, remote string, t *connTicket) error {
	sw, ok := tc.NetConn().(*switchConn)
	if !ok {
		return errors.New("not a switchConn")
	}
	return ls.adoptFD(sw.Conn, remote, tc, t)
}

// adoptFD takes c's descriptor, with its ticket t, into a loop and closes
// c.
func (ls *loops) adoptFD(c net.Conn, remote string, tc *tls.Conn, t *connTicket) error {
	rc, err := rawConn(c)
	if err != nil {
		return err
	}
	l := ls.ls[ls.next.Add(1)%uint32(len(ls.ls))]
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return errLoopClosed
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	// Go's poller drops the descriptor it knows; the duplicate keeps the
	// socket open.
	c.Close()
	if tc != nil {
		tc.NetConn().(*switchConn).mem = true
	}
	ls.conns.Add(1)
	l.incoming = append(l.incoming, adopted{fd, remote, tc, t})
	l.wakeLocked()
	return nil
}

// count is how many client connections the loops hold.
func (ls *loops) count() int {
	if ls == nil {
		return 0
	}
	return int(ls.conns.Load())
}

// close makes every loop close its connections and stop, and waits.
func (ls *loops) close() {
	if ls == nil {
		return
	}
	for _, l := range ls.ls {
		l.mu.Lock()
		l.closing = true
		l.wakeLocked()
		l.mu.Unlock()
	}
	ls.wg.Wait()
}

// defaultLoops is one event loop per two CPUs (GOMAXPROCS), at least one.
// The apps hostel serves run on the same machine and need the CPUs more
// than the router: a loop keeps a CPU busy at about 80,000 requests a
// second, and on two CPUs shared with a load generator and an app, one
// loop spent a tenth less CPU per request than two (BENCHMARKS.md).
func defaultLoops() int {
	return max(1, runtime.GOMAXPROCS(0)/2)
}

type adopted struct {
	fd     int
	remote string
	tls    *tls.Conn // nil for plain HTTP
	ticket *connTicket
}

// loopObj is what a loop's descriptor serves: a client or a backend
// connection.
type loopObj interface {
	event(ev uint32)
	generation() int32
}

type eventLoop struct {
	ls   *loops
	f    *Front
	epfd int
	// ep is epfd in Go's poller: the loop waits for its set there rather
	// than in a blocking epoll_wait, which would cost the runtime a
	// processor hand-off and a thread wake-up per wait.
	ep   *os.File
	epRC syscall.RawConn
	efd  int // eventfd: adoptions, ticks, closing

	mu        sync.Mutex
	incoming  []adopted
	closing   bool // Front.Close: close everything now
	stopped   bool // the loop is gone: adopt no more
	woken     bool
	tickAsked bool // by the sweeper, through loops.tick

	objs    []loopObj // by descriptor
	gen     int32
	clients map[*loopClient]struct{}
	idle    map[*upstream][]*loopBackend
	now     int64 // UnixNano, as of the last wake-up
	tickDue bool  // tick after this batch of events

	out     []byte        // a response or request being written
	bw      *bufio.Writer // writes into out
	scratch []byte        // what TLS connections read
}

func newEventLoop(ls *loops) (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd), Pad: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(efd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(efd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	ep := os.NewFile(uintptr(epfd), "epoll")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		unix.Close(efd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	l := &eventLoop{
		ls: ls, f: ls.f, epfd: epfd, ep: ep, epRC: rc, efd: efd,
		clients: map[*loopClient]struct{}{},
		idle:    map[*upstream][]*loopBackend{},
	}
	l.bw = bufio.NewWriterSize((*outWriter)(l), 4096)
	return l, nil
}

// outWriter appends to the loop's out buffer.
type outWriter eventLoop

func (w *outWriter) Write(p []byte) (int, error) {
	w.out = append(w.out, p...)
	return len(p), nil
}

// writer returns the loop's buffered writer, emptied, for a new message.
func (l *eventLoop) writer() *bufio.Writer {
	l.out = l.out[:0]
	l.bw.Reset((*outWriter)(l))
	return l.bw
}

func (l *eventLoop) wake() {
	l.mu.Lock()
	l.wakeLocked()
	l.mu.Unlock()
}

func (l *eventLoop) wakeLocked() {
	if l.woken || l.stopped {
		return
	}
	l.woken = true
	one := uint64(1)
	unix.Write(l.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
}

func (l *eventLoop) closeFDs() {
	l.ep.Close()
	unix.Close(l.efd)
}

func (l *eventLoop) run() {
	defer func() {
		if e := recover(); e != nil {
			l.f.logf("router: front end: event loop panic: %v", e)
		}
		l.shut()
	}()
	events := make([]unix.EpollEvent, 128)
	l.now = time.Now().UnixNano()
	for {
		var n int
		err := l.epRC.Read(func(fd uintptr) bool {
			n = rawEpollWait(int(fd), events)
			return n > 0
		})
		if err != nil {
			l.f.logf("router: front end: event loop: %v", err)
			return
		}
		l.now = time.Now().UnixNano()
		// Idle app connections first: one that got bytes nobody asked
		// for (a late write after its last response) is closed before
		// a request of this batch could be sent on it and be answered
		// with them (issue 11).
		for i := 0; i < n; i++ {
			if o := l.obj(&events[i]); o != nil {
				if bc, ok := o.(*loopBackend); ok && bc.client == nil {
					bc.event(events[i].Events)
					events[i].Pad = -2 // handled
				}
			}
		}
		for i := 0; i < n; i++ {
			ev := &events[i]
			switch ev.Pad {
			case -1:
				if !l.woke() {
					return
				}
				continue
			case -2:
				continue
			}
			if o := l.obj(ev); o != nil {
				o.event(ev.Events)
			}
		}
		if l.tickDue {
			l.tickDue = false
			l.tick()
		}
	}
}

// obj returns what an event is for; nil for the eventfd and for a
// descriptor closed (or reused) since the event was reported.
func (l *eventLoop) obj(ev *unix.EpollEvent) loopObj {
	fd := int(ev.Fd)
	if ev.Pad < 0 || fd >= len(l.objs) {
		return nil
	}
	if o := l.objs[fd]; o != nil && o.generation() == ev.Pad {
		return o
	}
	return nil
}

// woke handles the eventfd: adoptions, ticks, Close, and the end of
// Shutdown. It returns false when the loop is to stop.
func (l *eventLoop) woke() bool {
	var buf [8]byte
	unix.Read(l.efd, buf[:])
	l.mu.Lock()
	l.woken = false
	in := l.incoming
	l.incoming = nil
	closing := l.closing
	l.tickDue = l.tickDue || l.tickAsked
	l.tickAsked = false
	l.mu.Unlock()
	for _, a := range in {
		l.register(a)
	}
	select {
	case <-l.f.stop:
		closing = true
	default:
	}
	return !closing
}

// shut closes everything the loop holds and stops it taking more.
func (l *eventLoop) shut() {
	l.mu.Lock()
	l.stopped = true
	in := l.incoming
	l.incoming = nil
	l.mu.Unlock()
	for _, a := range in {
		unix.Close(a.fd)
		a.ticket.release()
		l.ls.conns.Add(-1)
	}
	for c := range l.clients {
		c.close()
	}
	for u, bcs := range l.idle {
		for _, bc := range bcs {
			bc.close()
		}
		delete(l.idle, u)
	}
	l.closeFDs()
}

func (l *eventLoop) add(fd int, o loopObj) error {
	for fd >= len(l.objs) {
		l.objs = append(l.objs, make([]loopObj, len(l.objs)+64)...)
	}
	ev := unix.EpollEvent{Events: loopEvents, Fd: int32(fd), Pad: o.generation()}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return err
	}
	l.objs[fd] = o
	return nil
}

func (l *eventLoop) nextGen() int32 {
	l.gen = (l.gen + 1) & 0x3fffffff // never negative: -1 is the eventfd's, -2 an event handled
	return l.gen
}

func (l *eventLoop) register(a adopted) {
	c := &loopClient{l: l, fd: a.fd, gen: l.nextGen(), remote: a.remote, state: lcNew, since: l.now, ticket: a.ticket}
	c.req.shutting = &l.f.shutting
	if a.tls != nil {
		c.tls, c.sw = a.tls, a.tls.NetConn().(*switchConn)
	}
	if err := l.add(a.fd, c); err != nil {
		unix.Close(a.fd)
		a.ticket.release()
		l.ls.conns.Add(-1)
		return
	}
	l.clients[c] = struct{}{}
	// A request that arrived before the ADD is reported by it; but TLS
	// may hold one it read with the handshake.
	if c.tls != nil {
		c.advance()
	}
}

// tick enforces the header and idle timeouts, shutdown, and the abort of
// draining backends.
func (l *eventLoop) tick() {
	f := l.f
	shutting := f.shutting.Load()
	for c := range l.clients {
		if shutting && c.passIdle() {
			continue
		}
		age := time.Duration(l.now - c.since)
		if f.expired(c.state, age, shutting) {
			c.close()
			continue
		}
		if c.state == lcActive {
			switch {
			case c.slot.b.aborted.Load():
				if c.bc != nil {
					c.bc.close()
					c.bc = nil
				}
				c.fail(errAborted)
			case c.eof && age > watchDelay:
				c.close() // the client is gone
			}
		}
	}
	for u, bcs := range l.idle {
		u.mu.Lock()
		retired := u.retired
		u.mu.Unlock()
		if !retired && !shutting {
			continue
		}
		for _, bc := range bcs {
			bc.close()
		}
		delete(l.idle, u)
	}
}

// rawEpollWait is epoll_wait(2) without waiting: the number of events
// ready, 0 if none (or on an error, which the next wait reports again).
func rawEpollWait(epfd int, events []unix.EpollEvent) int {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0
	}
	return int(n)
}

// rawRead and rawWrite are read(2) and write(2) on a non-blocking socket,
// which cannot block: no scheduler hand-off around them.
func rawRead(fd int, p []byte) (int, error)  { return rawIO(unix.SYS_READ, fd, p) }
func rawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }

func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}
