package handover

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"hostel/internal/failpoint"
)

// Without systemd, a holder keeps a daemon's listening sockets open
// across its crash: a small process (the same binary, HoldEnv in its
// environment) started by the daemon with copies of its sockets, which
// does nothing but hold them and hand them to the next daemon of the same
// root, over a unix socket only root reaches. While no daemon runs, new
// connections wait in the listeners' backlog instead of being refused.
//
// A holder belongs to one daemon at a time: the one that started it, then
// the one that took its sockets; a daemon holds a connection to it while
// it runs. A second daemon is refused the sockets while the first runs.
// Once its daemon is gone (it crashed, or stopped), the holder waits
// HoldGrace for the next one — a supervisor's restart — then exits,
// closing the sockets. `hostel shutdown` ends it at once (Release).
//
// A holder fences the node too, in a cluster: its daemon tells it, as
// the node's lease is renewed, until when the node's exclusive instances
// may run ("fence MS" on its connection: that many milliseconds from
// now). Once that passes with no later word — its daemon died, is frozen,
// or cannot renew — it stops them itself (RunHolder's fence), once per
// bound: services outlive their daemon, but an exclusive one must not
// outlive its node's lease (daemon/fence.go).

// HoldEnv names the socket a holder serves at; in a process's
// environment, it makes the process a holder (RunHolder).
const HoldEnv = "HOSTEL_HOLD"

// holdNamesEnv names the sockets passed to a holder from descriptor 3 on;
// after them come its own listening socket, then its daemon's connection.
const holdNamesEnv = "HOSTEL_HOLD_NAMES"

// HoldGrace is how long a holder waits for a daemon once its own is gone.
var HoldGrace = 15 * time.Second

// ErrHeld is Fetch's error when another daemon holds the sockets.
var ErrHeld = errors.New("another hostel daemon holds this root's sockets")

// RunHolder is the holder's process: it serves the sockets it was
// started with at the path HoldEnv names, calls fence with the root (the
// directory of that path) when a bound its daemon told passes, and
// returns when it ends.
func RunHolder(fence func(root string)) error {
	path := os.Getenv(HoldEnv)
	names := strings.Split(os.Getenv(holdNamesEnv), ":")
	if os.Getenv(holdNamesEnv) == "" {
		names = nil
	}
	// Raw descriptors, never an os.File: see Dup.
	fds := make([]int, len(names))
	for i := range names {
		fds[i] = firstFD + i
	}
	// Its own socket, bound (0600) and listening before this process
	// began: a daemon that starts the moment the last one died finds it
	// even while the holder itself is still starting.
	lf := os.NewFile(uintptr(firstFD+len(names)), "hold")
	fl, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fmt.Errorf("holder: %w", err)
	}
	ln, ok := fl.(*net.UnixListener)
	if !ok {
		return fmt.Errorf("holder: descriptor %d is not a unix socket", firstFD+len(names))
	}
	owner, err := net.FileConn(os.NewFile(uintptr(firstFD+len(names)+1), "daemon"))
	if err != nil {
		return fmt.Errorf("holder: %w", err)
	}
	h := &holder{fds: fds, names: names, path: path, ln: ln, gone: make(chan struct{}, 1),
		fence: func() { fence(filepath.Dir(path)) }, rearm: make(chan struct{}, 1)}
	h.own(owner)
	owner.Write([]byte("ok\n"))
	go h.serve()
	go h.fenceAt()
	for {
		h.mu.Lock()
		owned := h.owner != nil
		took := make(chan struct{})
		h.took = took
		h.mu.Unlock()
		if owned {
			<-h.gone
			continue
		}
		select {
		case <-took:
		case <-time.After(HoldGrace):
			h.mu.Lock()
			if h.owner == nil {
				ln.Close()
				os.Remove(path)
				armed := !h.until.IsZero()
				h.mu.Unlock()
				if armed {
					// Its daemon is gone, and no other came: the bound
					// will pass with nobody left to fence.
					h.fence()
				}
				return nil
			}
			h.mu.Unlock()
		}
	}
}

type holder struct {
	fds   []int
	names []string
	// endpoints are the <NEED>_URL endpoints' listening sockets, which
	// come and go with deploys: the daemon sends the whole set each time
	// it changes (HoldEndpoints).
	endpoints []int
	path      string // where ln is linked
	ln        *net.UnixListener
	mu        sync.Mutex
	owner     net.Conn      // the daemon's connection; nil while none runs
	gone      chan struct{} // a daemon's connection ended
	took      chan struct{} // closed when a daemon takes the sockets; nil once closed
	// until is the bound its daemon told last (HoldFence); zero once
	// passed and fenced, or before any. rearm wakes fenceAt when it
	// moves.
	until time.Time
	rearm chan struct{}
	fence func()
}

// fenceAt fences the node whenever a bound passes before a later one is
// told.
func (h *holder) fenceAt() {
	t := time.NewTimer(time.Hour)
	for {
		h.mu.Lock()
		until := h.until
		h.mu.Unlock()
		if until.IsZero() {
			t.Stop()
		} else {
			t.Reset(time.Until(until))
		}
		select {
		case <-h.rearm:
			continue
		case <-t.C:
		}
		h.mu.Lock()
		due := !h.until.IsZero() && !time.Now().Before(h.until)
		if due {
			h.until = time.Time{}
		}
		h.mu.Unlock()
		if due {
			h.fence()
		}
	}
}

// fenceIn sets the bound to fence at: ms milliseconds from now.
func (h *holder) fenceIn(ms int64) {
	h.mu.Lock()
	h.until = time.Now().Add(time.Duration(ms) * time.Millisecond)
	h.mu.Unlock()
	select {
	case h.rearm <- struct{}{}:
	default:
	}
}

// own makes c the daemon's connection, until it ends.
func (h *holder) own(c net.Conn) {
	h.mu.Lock()
	h.owner = c
	if h.took != nil {
		close(h.took)
		h.took = nil
	}
	h.mu.Unlock()
	go func() {
		h.follow(c)
		h.mu.Lock()
		if h.owner == c {
			h.owner = nil
		}
		h.mu.Unlock()
		select {
		case h.gone <- struct{}{}:
		default:
		}
	}()
}

func (h *holder) serve() {
	for {
		c, err := h.ln.AcceptUnix()
		if err != nil {
			return
		}
		go h.answer(c)
	}
}

// answer serves one request: "take" (the sockets, and c becomes the
// daemon's connection) or "exit".
func (h *holder) answer(c *net.UnixConn) {
	line, err := bufio.NewReader(io.LimitReader(c, 16)).ReadString('\n')
	switch {
	case err != nil:
		c.Close()
	case line == "exit\n":
		c.Write([]byte("bye\n"))
		h.ln.Close()
		os.Remove(h.path)
		os.Exit(0)
	case line == "take\n":
		h.mu.Lock()
		if h.owner != nil {
			h.mu.Unlock()
			c.Write([]byte("busy\n"))
			c.Close()
			return
		}
		h.owner = c // taken: a second daemon asking meanwhile is busy
		fds, names := slices.Clip(h.fds), slices.Clip(h.names)
		for _, fd := range h.endpoints {
			fds, names = append(fds, fd), append(names, Endpoint)
		}
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		err := sendSockets(c, fds, names) // under mu: the endpoints stay open
		c.SetWriteDeadline(time.Time{})
		if err != nil {
			h.owner = nil
		}
		h.mu.Unlock()
		if err != nil {
			c.Close()
			return
		}
		h.own(c)
	default:
		c.Close()
	}
}

// Fetch takes the sockets the holder at path holds, and returns them with
// the connection that makes the caller their daemon: keep it open while
// the daemon runs. nil, nil, nil: no holder answers there.
func Fetch(path string) (*Set, net.Conn, error) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, nil, nil // none: a stale path is the daemon's to remove
	}
	uc := c.(*net.UnixConn)
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := uc.Write([]byte("take\n")); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("socket holder %s: %w", path, err)
	}
	fds, ns, err := receiveSockets(uc)
	if err != nil {
		CloseAll(fds)
		c.Close()
		if errors.Is(err, ErrHeld) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("socket holder %s: %w", path, err)
	}
	s := &Set{fromHolder: true}
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "held")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil || i >= len(ns) {
			continue
		}
		s.ls = append(s.ls, passed{ns[i], ln})
	}
	uc.SetDeadline(time.Time{})
	return s, c, nil
}

// Release ends the holder at path, if one answers there, and waits until
// it has let go of its path.
func Release(path string) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("exit\n"))
	io.ReadAll(c)
}

// SpawnHolder starts a holder serving at path, which hold listens on
// (bound there by the caller, only root may connect), with copies of fds
// (named; from Dup), and returns the connection that makes the caller its
// daemon. hold is the caller's to close.
func SpawnHolder(path string, hold net.Listener, fds []int, names []string) (net.Conn, error) {
	hfd, err := Dup(hold)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(hfd)
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours := os.NewFile(uintptr(pair[0]), "holder")
	defer syscall.Close(pair[1])
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(), HoldEnv+"="+path, holdNamesEnv+"="+strings.Join(names, ":"))
	// Its own session: a terminal's Ctrl-C stops the daemon, not it.
	p, err := Spawn("/proc/self/exe", []string{"hostel-hold", path}, env, nil, append(append([]int(nil), fds...), hfd, pair[1]), true)
	if err != nil {
		c.Close()
		return nil, err
	}
	go p.Wait()
	failpoint.Hit("holder-after-spawn")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	c.SetReadDeadline(time.Time{})
	if err != nil || line != "ok\n" {
		p.Kill()
		c.Close()
		return nil, fmt.Errorf("socket holder (pid %d) did not start: %q, %v", p.Pid, line, err)
	}
	return c, nil
}
