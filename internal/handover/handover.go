// Package handover takes the listening sockets a daemon is started with —
// by systemd's socket units or systemd-socket-activate (LISTEN_FDS), or by
// the daemon it replaces (hostel upgrade) — and tells whoever started it
// that it is ready (NOTIFY_SOCKET). A socket passed on is never closed
// between two daemons, so no connection to it is refused: it waits in the
// socket's backlog until the next daemon accepts it.
package handover

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// The names of the sockets a daemon takes (LISTEN_FDNAMES; systemd's
// FileDescriptorName=). Each but Endpoint names one socket.
const (
	// HTTP is the public HTTP listener (serve --http).
	HTTP = "http"
	// HTTPS is the public HTTPS listener (serve --https).
	HTTPS = "https"
	// API is the API's unix socket, ROOT/hostel.sock.
	API = "api"
	// APIListen is the remote API's listener (serve --api-listen).
	APIListen = "api-listen"
	// Peer is the node-to-node port (serve --advertise).
	Peer = "peer"
	// Endpoint names the listeners of the <NEED>_URL endpoints, any
	// number of them, told apart by their address.
	Endpoint = "endpoint"
	// Unit names the sockets of one systemd socket unit, which can give
	// all its sockets one name only (FileDescriptorName=): each is taken
	// for the flag whose address it listens on, the API socket by its
	// path (hostel install writes such a unit).
	Unit = "hostel"
)

// names are the names a daemon takes, in the order documented.
var names = []string{HTTP, HTTPS, API, APIListen, Peer, Endpoint, Unit}

// firstFD is where passed descriptors start (SD_LISTEN_FDS_START).
const firstFD = 3

// Env variables of the protocol. ParentEnv is hostel's own: a daemon
// started by hostel upgrade cannot be given LISTEN_PID (its pid is not
// known before it runs), so it is given its parent's pid instead.
const (
	fdsEnv    = "LISTEN_FDS"
	namesEnv  = "LISTEN_FDNAMES"
	pidEnv    = "LISTEN_PID"
	ParentEnv = "HOSTEL_LISTEN_PARENT"
)

// Set is the sockets a daemon was passed. A nil *Set holds none. Its
// methods are safe for concurrent use.
type Set struct {
	mu sync.Mutex
	ls []passed
	// fromDaemon: passed by the daemon this one replaces (ParentEnv),
	// not by systemd; fromHolder: by a holder (hold.go).
	fromDaemon, fromHolder bool
}

// FromSystemd reports whether the sockets were passed by systemd (or
// systemd-socket-activate), which holds them itself.
func (s *Set) FromSystemd() bool { return s != nil && !s.fromDaemon && !s.fromHolder }

// FromHolder reports whether the sockets came from a holder: the last
// daemon's, whatever its flags were. One the flags leave unused is closed,
// not refused.
func (s *Set) FromHolder() bool { return s != nil && s.fromHolder }

// FromDaemon reports whether the sockets were passed by the daemon this
// one replaces (hostel upgrade) rather than by systemd.
func (s *Set) FromDaemon() bool { return s != nil && s.fromDaemon }

type passed struct {
	name string
	ln   net.Listener
}

// FromEnv takes the sockets passed in the environment and removes the
// variables that passed them (the daemon's children must not take them).
// It returns nil, nil when none were passed to this process. A name it
// does not know, or a descriptor that is not a listening socket, is an
// error: a socket passed and left unused would hang its clients.
func FromEnv() (*Set, error) {
	fds, fdNames, pid, parent := os.Getenv(fdsEnv), os.Getenv(namesEnv), os.Getenv(pidEnv), os.Getenv(ParentEnv)
	for _, v := range []string{fdsEnv, namesEnv, pidEnv, ParentEnv} {
		os.Unsetenv(v)
	}
	if fds == "" {
		return nil, nil
	}
	switch {
	case pid != "":
		if pid != strconv.Itoa(os.Getpid()) {
			return nil, nil // meant for another process
		}
	case parent != "":
		if parent != strconv.Itoa(os.Getppid()) {
			return nil, nil
		}
	default:
		return nil, fmt.Errorf("%s is set without %s", fdsEnv, pidEnv)
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%s: %q is not a number of descriptors", fdsEnv, fds)
	}
	ns := strings.Split(fdNames, ":")
	if fdNames == "" || len(ns) != n {
		return nil, fmt.Errorf("%s: %q names %d sockets, %s passes %d: name each (%s)", namesEnv, fdNames, len(ns), fdsEnv, n, strings.Join(names, ", "))
	}
	for _, name := range ns {
		if !slices.Contains(names, name) {
			return nil, fmt.Errorf("%s: unknown socket name %q (want one of %s)", namesEnv, name, strings.Join(names, ", "))
		}
	}
	s := &Set{fromDaemon: pid == ""}
	for i, name := range ns {
		fd := firstFD + i
		syscall.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), name)
		ln, err := net.FileListener(f)
		f.Close() // FileListener made its own copy
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("%s: socket %q (fd %d) is not a listening socket: %w", namesEnv, name, fd, err)
		}
		s.ls = append(s.ls, passed{name, ln})
	}
	return s, nil
}

// Take returns the socket passed as name (for Endpoint, the first) and
// forgets it; false if none was.
func (s *Set) Take(name string) (net.Listener, bool) {
	return s.take(func(p passed) bool { return p.name == name })
}

// TakeFor returns the socket passed as name, else one passed as Unit
// that listens where addr says (a TCP HOST:PORT whose empty host is any
// address, or a unix socket's path), and forgets it.
func (s *Set) TakeFor(name, addr string) (net.Listener, bool) {
	if s.FromHolder() {
		// The last daemon's: by name, if it listens where the flag says
		// (any port for port 0; the root's own API socket).
		return s.take(func(p passed) bool {
			return p.name == name && (p.ln.Addr().Network() == "unix" || sameAddr(p.ln.Addr(), addr) || samePortless(p.ln.Addr(), addr))
		})
	}
	if ln, ok := s.Take(name); ok {
		return ln, true
	}
	return s.take(func(p passed) bool { return p.name == Unit && sameAddr(p.ln.Addr(), addr) })
}

// sameAddr reports whether a listens where addr says.
func sameAddr(a net.Addr, addr string) bool {
	if a.Network() == "unix" {
		return a.String() == addr
	}
	host, port, err := net.SplitHostPort(addr)
	gotHost, gotPort, err2 := net.SplitHostPort(a.String())
	if err != nil || err2 != nil || port != gotPort {
		return false
	}
	want, got := net.ParseIP(host), net.ParseIP(gotHost)
	switch {
	case host == "" || want != nil && want.IsUnspecified():
		return got != nil && got.IsUnspecified()
	case want != nil:
		return got != nil && want.Equal(got)
	}
	return false // a host name: systemd binds addresses
}

// samePortless reports whether addr asks for any port (0) on a's host.
func samePortless(a net.Addr, addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	gotHost, gotPort, err2 := net.SplitHostPort(a.String())
	return err == nil && err2 == nil && port == "0" && sameAddr(a, net.JoinHostPort(host, gotPort)) && gotHost != ""
}

// TakeAddr returns the socket passed as name that listens on addr
// (HOST:PORT as net.Listener.Addr writes it) and forgets it.
func (s *Set) TakeAddr(name, addr string) (net.Listener, bool) {
	return s.take(func(p passed) bool { return p.name == name && p.ln.Addr().String() == addr })
}

func (s *Set) take(match func(passed) bool) (net.Listener, bool) {
	if s == nil {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.ls, match)
	if i < 0 {
		return nil, false
	}
	ln := s.ls[i].ln
	s.ls = slices.Delete(s.ls, i, i+1)
	return ln, true
}

// Left returns the names and addresses of the sockets not taken yet but
// Endpoint's.
func (s *Set) Left() []string {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var left []string
	for _, p := range s.ls {
		if p.name != Endpoint {
			left = append(left, p.name+" ("+p.ln.Addr().String()+")")
		}
	}
	return left
}

// ClosePort closes the sockets not taken that listen on port: a holder's
// that a flag asks for on another address of the same port, which would
// keep the new address from being bound.
func (s *Set) ClosePort(port string) {
	s.closeIf(func(p passed) bool {
		_, got, err := net.SplitHostPort(p.ln.Addr().String())
		return err == nil && got == port
	})
}

// AddFrom moves the sockets of other named name into s, and closes the
// rest of other's.
func (s *Set) AddFrom(other *Set, name string) {
	if s == nil || other == nil {
		other.Close()
		return
	}
	other.mu.Lock()
	var moved []passed
	other.ls = slices.DeleteFunc(other.ls, func(p passed) bool {
		if p.name == name {
			moved = append(moved, p)
			return true
		}
		return false
	})
	other.mu.Unlock()
	other.Close()
	s.mu.Lock()
	s.ls = append(s.ls, moved...)
	s.mu.Unlock()
}

// CloseName closes the sockets not taken that are named name.
func (s *Set) CloseName(name string) error {
	return s.closeIf(func(p passed) bool { return p.name == name })
}

// CloseBut closes the sockets not taken but those named name.
func (s *Set) CloseBut(name string) error {
	return s.closeIf(func(p passed) bool { return p.name != name })
}

func (s *Set) closeIf(match func(passed) bool) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	s.ls = slices.DeleteFunc(s.ls, func(p passed) bool {
		if match(p) {
			errs = append(errs, p.ln.Close())
			return true
		}
		return false
	})
	return errors.Join(errs...)
}

// Close closes the sockets not taken.
func (s *Set) Close() error { return s.closeIf(func(passed) bool { return true }) }

// Notify sends state ("READY=1") to the socket NOTIFY_SOCKET names, as
// sd_notify does; without one it does nothing.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	return nil
}
