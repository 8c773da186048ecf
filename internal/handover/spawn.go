package handover

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// Dup returns a copy of ln's descriptor (close-on-exec), to pass on with
// Spawn. It never goes through os.File.Fd, which puts a descriptor in
// blocking mode — and with it ln's own, since the mode belongs to the
// socket, not to a descriptor: ln's Accept would then block a thread,
// and its Close wait for the next connection.
func Dup(ln net.Listener) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("listener %s cannot be passed on", ln.Addr())
	}
	fd, err := dup(sc)
	if err != nil {
		return -1, fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	return fd, nil
}

// DupConn returns a copy of c's descriptor (close-on-exec), as Dup does
// of a listener's: a holder's connection, passed on to the daemon that
// replaces this one.
func DupConn(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("connection to %s cannot be passed on", c.RemoteAddr())
	}
	return dup(sc)
}

func dup(sc syscall.Conn) (int, error) {
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(s uintptr) {
		r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			dupErr = errno
			return
		}
		fd = int(r)
	}); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, fmt.Errorf("dup: %w", dupErr)
	}
	return fd, nil
}

// CloseAll closes descriptors from Dup.
func CloseAll(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// Spawn starts path with args and env, stdin, stdout and stderr from
// stdio (nil: /dev/null), and fds passed from descriptor 3 on, in order.
// Unlike os/exec it takes raw descriptors: see Dup.
func Spawn(path string, args, env []string, stdio *[3]*os.File, fds []int, setsid bool) (*os.Process, error) {
	files := make([]uintptr, 3, 3+len(fds))
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	for i := range files {
		f := null
		if stdio != nil && stdio[i] != nil {
			f = stdio[i]
		}
		files[i] = f.Fd() // stdio and /dev/null: blocking is what they are
	}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	pid, err := syscall.ForkExec(path, args, &syscall.ProcAttr{Env: env, Files: files, Sys: &syscall.SysProcAttr{Setsid: setsid}})
	if err != nil {
		return nil, err
	}
	return os.FindProcess(pid)
}
