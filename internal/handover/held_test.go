package handover

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// unixPair returns the two ends of a connected unix stream socket pair.
func unixPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// listeners opens n loopback listeners and returns them with a copy of
// each one's descriptor.
func listeners(t *testing.T, n int) ([]net.Listener, []int) {
	t.Helper()
	var lns []net.Listener
	var fds []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		fd, err := Dup(ln)
		if err != nil {
			t.Fatal(err)
		}
		lns, fds = append(lns, ln), append(fds, fd)
	}
	return lns, fds
}

// The holder keeps the endpoints its daemon sends — more than one message
// carries, the last set replacing the one before — and hands them, with
// its listeners, to the next daemon once the first is gone.
func TestHolderKeepsEndpoints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hold.sock")
	hl, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	public, pfds := listeners(t, 1)
	h := &holder{fds: pfds, names: []string{HTTP}, path: path, ln: hl, gone: make(chan struct{}, 1)}
	t.Cleanup(func() { hl.Close(); CloseAll(pfds) })
	daemon, held := unixPair(t)
	h.own(held)
	go h.serve()

	held1 := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			h.mu.Lock()
			got := len(h.endpoints)
			h.mu.Unlock()
			if got == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the holder holds %d endpoints, want %d", got, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	many, mfds := listeners(t, maxRights+15)
	if err := HoldEndpoints(daemon, mfds); err != nil {
		t.Fatal(err)
	}
	CloseAll(mfds)
	held1(len(many))
	few, ffds := listeners(t, 3)
	if err := HoldEndpoints(daemon, ffds); err != nil {
		t.Fatal(err)
	}
	CloseAll(ffds)
	held1(len(few))

	if _, _, err := Fetch(path); err != ErrHeld {
		t.Fatalf("take while the daemon runs: %v, want ErrHeld", err)
	}
	daemon.Close()
	var set *Set
	var next net.Conn
	deadline := time.Now().Add(5 * time.Second)
	for set == nil {
		set, next, err = Fetch(path)
		if err != nil && err != ErrHeld || time.Now().After(deadline) {
			t.Fatalf("take once the daemon is gone: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer next.Close()
	defer set.Close()
	if _, ok := set.TakeFor(HTTP, public[0].Addr().String()); !ok {
		t.Errorf("the public listener was not handed on")
	}
	for _, ln := range few {
		if _, ok := set.TakeAddr(Endpoint, ln.Addr().String()); !ok {
			t.Errorf("endpoint %s was not handed on", ln.Addr())
		}
	}
	if left := set.Left(); len(left) != 0 {
		t.Errorf("handed on besides: %v", left)
	}
	for _, ln := range many {
		if _, ok := set.TakeAddr(Endpoint, ln.Addr().String()); ok {
			t.Errorf("endpoint %s of the replaced set was handed on", ln.Addr())
		}
	}
}

// More sockets than a message carries reach the daemon that takes them.
func TestTakeManySockets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hold.sock")
	hl, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lns, fds := listeners(t, 2*maxRights+1)
	names := make([]string, len(fds))
	for i := range names {
		names[i] = Endpoint
	}
	h := &holder{fds: fds, names: names, path: path, ln: hl, gone: make(chan struct{}, 1)}
	t.Cleanup(func() { hl.Close(); CloseAll(fds) })
	go h.serve()
	set, c, err := Fetch(path)
	if err != nil || set == nil {
		t.Fatalf("take: %v", err)
	}
	defer c.Close()
	defer set.Close()
	for _, ln := range lns {
		if _, ok := set.TakeAddr(Endpoint, ln.Addr().String()); !ok {
			t.Fatalf("%s was not handed on", ln.Addr())
		}
	}
}
