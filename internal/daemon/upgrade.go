package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"hostel/internal/api"
	"hostel/internal/handover"
)

// hostel upgrade (and SIGHUP) replaces the running daemon by a new binary
// without closing a listening socket (docs/daemon-restart.md):
//
//  1. The old daemon checks that the binary runs `hostel version`, then
//     starts it as `hostel serve` with the same flags, passing every
//     listening socket (LISTEN_FDS, the way systemd does) and one end of a
//     control socket (upgradeFDEnv).
//  2. The new daemon parses its flags and takes the sockets, says "hello"
//     and waits.
//  3. The old daemon lets go of everything the two cannot share: it stops
//     accepting API calls (the calls wait in the socket's backlog for the
//     new daemon), stops following the store, detaches from the services
//     and closes the store (bbolt takes one process at a time). Its
//     router goes on serving. Then it says "go".
//  4. The new daemon opens the store, adopts the services as after a
//     restart, serves the sockets it was passed and says "ready".
//  5. The old daemon answers the command, stops accepting, lets the
//     requests it accepted finish (idle keep-alive connections are closed
//     between requests) and exits.
//
// If the new daemon fails before step 3, nothing was given up: the old
// one serves on. If it fails after, the old binary is started the same
// way in its place (/proc/self/exe, there even if its file was replaced),
// and the command says why the new one failed.

// upgradeFDEnv names the descriptor of the control socket a daemon started
// by hostel upgrade talks to the daemon it replaces on.
const upgradeFDEnv = "HOSTEL_UPGRADE_FD"

// holderFDEnv names the descriptor of the connection to the holder of
// the sockets (listen.go) that the daemon replaced passes on: the new
// daemon keeps that holder rather than starting another.
const holderFDEnv = "HOSTEL_UPGRADE_HOLDER_FD"

// apiHeldEnv tells the new daemon that the API socket it is passed is
// systemd's (hostel.socket): not its to remove when it stops.
const apiHeldEnv = "HOSTEL_API_HELD"

// Bounds of the steps: a daemon that does not say hello within
// helloWait, or is not ready within readyWait of "go", failed.
const (
	helloWait   = 30 * time.Second
	readyWait   = 5 * time.Minute
	versionWait = 10 * time.Second
)

var _ api.UpgradeDaemon = (*Daemon)(nil)

// Upgrade implements api.UpgradeDaemon. On success the daemon exits once
// the answer is sent.
func (d *Daemon) Upgrade(ctx context.Context, req api.UpgradeRequest) (*api.UpgradeResult, error) {
	if !d.upgradeMu.TryLock() {
		return nil, errors.New("hostel upgrade: an upgrade of this daemon is already running")
	}
	defer d.upgradeMu.Unlock()
	if d.handedOver.Load() {
		return nil, errors.New("hostel upgrade: this daemon was already replaced")
	}
	if d.member != nil {
		return nil, errors.New("hostel upgrade: not with --etcd-embed (the etcd member's own ports are not passed on): stop and start the daemon")
	}
	path := req.Path
	if path == "" {
		var err error
		if path, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("hostel upgrade: the daemon's own path: %w", err)
		}
	}
	version, err := binaryVersion(ctx, path)
	if err != nil {
		return nil, err
	}
	// Copies of the sockets, taken once: the API's listener is closed
	// before the new daemon starts, and one that failed may have to pass
	// them on to the old binary.
	fds, names, err := d.socketFDs(true)
	defer handover.CloseAll(fds)
	if err != nil {
		return nil, fmt.Errorf("hostel upgrade: %w", err)
	}
	spawn := func(path string) (*successor, error) { return d.spawn(path, fds, names) }
	d.logf("upgrade: starting %s (hostel %s)", path, version)
	child, err := spawn(path)
	if err != nil {
		return nil, fmt.Errorf("hostel upgrade: %s: %w", path, err)
	}
	if err := child.hello(); err != nil {
		child.kill()
		return nil, fmt.Errorf("hostel upgrade: %s did not start: %w; the daemon (pid %d) serves on", path, err, os.Getpid())
	}
	d.logf("upgrade: the new daemon (pid %d) took the sockets; handing the store and the services over", child.pid)
	d.handOver()
	err = child.start()
	if err == nil {
		d.logf("upgrade: pid %d serves; this daemon finishes its requests and exits", child.pid)
		d.passIdle(child)
		d.quitOnce.Do(func() { close(d.quit) })
		return &api.UpgradeResult{OldPID: os.Getpid(), PID: child.pid, Version: version}, nil
	}
	child.kill()
	d.logf("upgrade: %s failed: %v; starting this daemon's own binary in its place", path, err)
	// The control plane is given up: the old binary takes over as a new
	// process, the way the new one would have.
	back, berr := spawn("/proc/self/exe")
	if berr == nil {
		if berr = back.hello(); berr == nil {
			berr = back.start()
		}
	}
	if berr != nil {
		back.kill()
		d.logf("upgrade: the old binary did not come back either: %v; exiting for the machine's supervisor to start hostel serve", berr)
		d.quitOnce.Do(func() { close(d.quit) })
		return nil, fmt.Errorf("hostel upgrade: %s failed: %w; the old binary did not come back either (%v): the daemon exits", path, err, berr)
	}
	d.passIdle(back)
	d.quitOnce.Do(func() { close(d.quit) })
	return nil, fmt.Errorf("hostel upgrade: %s failed: %w; the old binary serves on (pid %d)", path, err, back.pid)
}

// binaryVersion runs `path version` and returns the version it prints.
func binaryVersion(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), versionWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "version").CombinedOutput()
	v, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "hostel ")
	if err != nil || !ok || strings.ContainsAny(v, "\n ") {
		if err == nil {
			err = fmt.Errorf("printed %q", firstLine(string(out)))
		}
		return "", api.Invalid(fmt.Errorf("hostel upgrade: %s is not a hostel binary: `%s version`: %v", path, path, err))
	}
	return v, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// successor is a daemon started to replace this one.
type successor struct {
	pid    int
	proc   *os.Process
	state  *os.ProcessState // once exited is closed
	ctl    net.Conn
	lines  *bufio.Reader
	exited chan struct{}
}

// spawn starts the binary at path as `hostel serve` with this daemon's
// flags, passing it the listening sockets fds (socketFDs) and the control
// socket.
func (d *Daemon) spawn(path string, fds []int, names []string) (*successor, error) {
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer syscall.Close(pair[1])
	ours := os.NewFile(uintptr(pair[0]), "upgrade")
	ctl, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	env := append(os.Environ(),
		"LISTEN_FDS="+strconv.Itoa(len(fds)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		handover.ParentEnv+"="+strconv.Itoa(os.Getpid()),
		upgradeFDEnv+"="+strconv.Itoa(3+len(fds)))
	if d.opts.Passed.FromSystemd() {
		env = append(env, apiHeldEnv+"=1")
	}
	passed := append(slices.Clip(fds), pair[1])
	if h := d.holderConn(); h != nil {
		if hfd, err := handover.DupConn(h); err == nil {
			defer syscall.Close(hfd)
			env = append(env, holderFDEnv+"="+strconv.Itoa(3+len(passed)))
			passed = append(passed, hfd)
		}
	}
	// The same log: the new daemon's lines follow the old one's.
	stdio := [3]*os.File{os.Stdin, os.Stdout, os.Stderr}
	p, err := handover.Spawn(path, os.Args, env, &stdio, passed, false)
	if err != nil {
		ctl.Close()
		return nil, err
	}
	s := &successor{pid: p.Pid, proc: p, ctl: ctl, lines: bufio.NewReader(ctl), exited: make(chan struct{})}
	go func() {
		s.state, _ = p.Wait()
		close(s.exited)
	}()
	return s, nil
}

// socketFDs returns a copy of each listening socket (handover.Dup) and
// its name, with the endpoints' or without.
func (d *Daemon) socketFDs(endpoints bool) (fds []int, names []string, err error) {
	d.socketsMu.Lock()
	lns := append([]namedListener(nil), d.sockets...)
	d.socketsMu.Unlock()
	if d.router != nil && endpoints {
		for _, ln := range d.router.EndpointListeners() {
			lns = append(lns, namedListener{handover.Endpoint, ln})
		}
	}
	for _, nl := range lns {
		fd, err := handover.Dup(nl.ln)
		if err != nil {
			return fds, nil, fmt.Errorf("%s: %w", nl.name, err)
		}
		fds, names = append(fds, fd), append(names, nl.name)
	}
	return fds, names, nil
}

// hello waits for the new daemon to have parsed its flags and taken its
// sockets.
func (s *successor) hello() error { return s.expect("hello", helloWait) }

// start tells the new daemon to go on and waits until it serves.
func (s *successor) start() error {
	s.ctl.SetWriteDeadline(time.Now().Add(helloWait))
	if _, err := s.ctl.Write([]byte("go\n")); err != nil {
		return s.exitedWith(err)
	}
	return s.expect("ready", readyWait)
}

// expect reads the new daemon's next word: want, or "error MESSAGE".
func (s *successor) expect(want string, within time.Duration) error {
	s.ctl.SetReadDeadline(time.Now().Add(within))
	line, err := s.lines.ReadString('\n')
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("not %s within %s", want, within)
		}
		return s.exitedWith(err)
	}
	line = strings.TrimSuffix(line, "\n")
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return errors.New(msg)
	}
	if line != want {
		return fmt.Errorf("said %q, not %q", line, want)
	}
	return nil
}

// exitedWith explains a control socket cut: how the new daemon exited.
func (s *successor) exitedWith(err error) error {
	select {
	case <-s.exited:
		return fmt.Errorf("it exited (%v) before it was ready; its error is in the daemon's log", s.state)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("control socket: %w", err)
	}
}

// kill ends a new daemon that failed, and waits for it.
func (s *successor) kill() {
	if s == nil {
		return
	}
	s.proc.Kill()
	<-s.exited
	s.ctl.Close()
}

// passIdle has the front end pass the client connections it would close
// between requests as it stops to s, the daemon that serves now, on the
// control socket (handover/conns.go): none is closed under a client
// about to send its next request.
func (d *Daemon) passIdle(s *successor) {
	if d.front == nil {
		return
	}
	sender, err := handover.NewConnSender(s.ctl)
	if err != nil {
		d.logf("upgrade: %v: idle connections are closed", err)
		return
	}
	d.front.PassIdle(sender.Send)
}

// handOver lets go of what the daemon replacing this one needs alone: the
// API (its callers wait in the socket's backlog), the store, the services.
// The public listeners and the router serve on until Close. A request
// that would wake a sleeping version meanwhile is answered 503.
func (d *Daemon) handOver() {
	d.handedOver.Store(true)
	// The holder is the new daemon's (it was passed its connection):
	// this one no longer tells it of endpoints.
	d.holderMu.Lock()
	d.holder = nil
	d.holderMu.Unlock()
	// Not removed when this daemon stops: it is the new daemon's now.
	d.apiPassed = true
	for _, ln := range []net.Listener{d.apiLn, d.remoteLn, d.peerLn} {
		if ln != nil {
			ln.Close()
		}
	}
	d.detach()
}

// upgradeControl is the new daemon's end of the control socket, nil when
// the daemon was not started by hostel upgrade; holder is the connection
// to the socket holder the daemon replaced passed on, nil if none.
type upgradeControl struct{ c, holder net.Conn }

// controlFromEnv takes the control socket upgradeFDEnv names.
func controlFromEnv() (*upgradeControl, error) {
	v := os.Getenv(upgradeFDEnv)
	os.Unsetenv(upgradeFDEnv)
	if v == "" {
		return nil, nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s: %q is not a descriptor", upgradeFDEnv, v)
	}
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "upgrade")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", upgradeFDEnv, err)
	}
	u := &upgradeControl{c: c}
	if v := os.Getenv(holderFDEnv); v != "" {
		os.Unsetenv(holderFDEnv)
		if fd, err := strconv.Atoi(v); err == nil && fd >= 3 {
			syscall.CloseOnExec(fd)
			hf := os.NewFile(uintptr(fd), "holder")
			u.holder, _ = net.FileConn(hf) // none: the daemon starts a holder of its own
			hf.Close()
		}
	}
	return u, nil
}

// holderConn is the connection to the socket holder passed on, nil if
// none (or if the daemon was not started by hostel upgrade).
func (u *upgradeControl) holderConn() net.Conn {
	if u == nil {
		return nil
	}
	return u.holder
}

// await says hello and waits for the old daemon to let go.
func (u *upgradeControl) await() error {
	if u == nil {
		return nil
	}
	if _, err := u.c.Write([]byte("hello\n")); err != nil {
		return fmt.Errorf("hostel upgrade: the daemon replaced: %w", err)
	}
	line, err := bufio.NewReader(u.c).ReadString('\n')
	if err != nil || line != "go\n" {
		return fmt.Errorf("hostel upgrade: the daemon replaced gave up (%q, %v)", line, err)
	}
	return nil
}

// done tells the old daemon how the start went. After an error it closes
// the socket; after a start, the old daemon passes its idle client
// connections on it (receive).
func (u *upgradeControl) done(err error) {
	if u == nil {
		return
	}
	msg := "ready\n"
	if err != nil {
		msg = "error " + strings.ReplaceAll(err.Error(), "\n", " ") + "\n"
	}
	u.c.Write([]byte(msg))
	if err != nil {
		u.c.Close()
	}
}

// receive serves the client connections the old daemon passes on until
// it exits, then closes the socket.
func (u *upgradeControl) receive(d *Daemon) {
	if u == nil {
		return
	}
	defer u.c.Close()
	err := handover.ReceiveConns(u.c, func(c net.Conn, pending []byte) {
		if d.front == nil {
			c.Close()
			return
		}
		d.front.Adopt(c, pending)
	})
	if err != nil {
		d.logf("upgrade: the connections the daemon replaced passed on: %v", err)
	}
}
