package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"hostel/internal/handover"
)

// listen returns the socket passed to the daemon as name
// (Options.Passed), else a new listener on addr. It records the socket
// under its name: hostel upgrade passes it on (upgrade.go).
func (d *Daemon) listen(name, addr string) (net.Listener, error) {
	ln, ok := d.opts.Passed.TakeFor(name, addr)
	if !ok {
		var err error
		ln, err = net.Listen("tcp", addr)
		if _, port, _ := net.SplitHostPort(addr); err != nil && errors.Is(err, syscall.EADDRINUSE) && d.opts.Passed.FromHolder() {
			// The last daemon listened on another address of this port
			// (":80", now "127.0.0.1:80"): the holder and this daemon let
			// go of it (the next holder holds what this daemon serves).
			d.opts.Passed.ClosePort(port)
			handover.Release(HoldPath(d.opts.Root))
			ln, err = net.Listen("tcp", addr)
		}
		if err != nil {
			return nil, err
		}
	}
	d.keep(name, ln)
	return ln, nil
}

// listenEndpoint is the router's Options.Listen: a <NEED>_URL endpoint
// reopens on the socket passed for its address, if there is one.
func (d *Daemon) listenEndpoint(addr string) (net.Listener, error) {
	ln, ok := d.opts.Passed.TakeAddr(handover.Endpoint, addr)
	if !ok {
		return net.Listen("tcp", addr)
	}
	return ln, nil
}

// keep records a socket the daemon listens on under its name.
func (d *Daemon) keep(name string, ln net.Listener) {
	d.socketsMu.Lock()
	defer d.socketsMu.Unlock()
	d.sockets = append(d.sockets, namedListener{name, ln})
}

// namedListener is a socket the daemon listens on and its name in
// LISTEN_FDNAMES.
type namedListener struct {
	name string
	ln   net.Listener
}

// checkPassed refuses the sockets passed that the daemon's flags leave
// unused: their clients would wait for an answer that never comes.
func (d *Daemon) checkPassed() error {
	if d.opts.Passed.FromHolder() {
		// The last daemon's, with other flags: let go of them. Its
		// endpoints wait for the services adopted (closeEndpointsLeft).
		return d.opts.Passed.CloseBut(handover.Endpoint)
	}
	if left := d.opts.Passed.Left(); len(left) > 0 {
		return fmt.Errorf("LISTEN_FDNAMES: %s passed but not used by these flags (--https \"\" turns HTTPS off; --api-listen, --advertise add those)",
			strings.Join(left, ", "))
	}
	return nil
}

// HoldPath is where the holder of the sockets of the daemon with root
// serves them (handover.RunHolder).
func HoldPath(root string) string { return filepath.Join(root, "hold.sock") }

// fetchHeld takes the sockets a holder keeps for root, when the daemon
// was passed none: the last daemon's, which crashed or stopped — under
// systemd, which holds the listeners itself, only the endpoints. It
// returns the connection that makes this daemon their holder's until it
// ends.
func fetchHeld(opts *Options) (net.Conn, error) {
	if opts.Passed != nil && !opts.Passed.FromSystemd() {
		return nil, nil
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	set, conn, err := handover.Fetch(HoldPath(root))
	// A daemon killed a moment ago: its holder may not have seen its
	// connection end yet.
	for deadline := time.Now().Add(2 * time.Second); errors.Is(err, handover.ErrHeld) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		set, conn, err = handover.Fetch(HoldPath(root))
	}
	if errors.Is(err, handover.ErrHeld) {
		return nil, fmt.Errorf("another hostel daemon is serving %s", SocketPath(root))
	}
	if err != nil {
		return nil, err
	}
	if opts.Passed.FromSystemd() {
		opts.Passed.AddFrom(set, handover.Endpoint)
		return conn, nil
	}
	opts.Passed = set
	return conn, nil
}

// startHolder hands copies of the listening sockets to a new holder,
// which keeps them open if this daemon crashes, and ends the last
// daemon's (held). The endpoints, which come and go with deploys, follow
// (holdEndpoints). Under systemd, which holds the listeners itself, the
// holder holds the endpoints alone — and, in a cluster, fences the node
// while this daemon cannot (fence.go). A daemon started by hostel upgrade
// keeps the holder of the daemon it replaced (kept, its connection), which
// holds the very sockets it was passed: no new process on the upgrade's
// time.
func (d *Daemon) startHolder(held, kept net.Conn) {
	if held != nil {
		defer held.Close()
	}
	if kept != nil {
		d.useHolder(kept)
		return
	}
	c, err := d.spawnHolder(HoldPath(d.opts.Root))
	if err != nil {
		d.logf("no socket holder: %v; if the daemon dies, connections are refused until it starts again", err)
		return
	}
	d.useHolder(c)
}

// spawnHolder ends the holder at path, if one answers, and starts a new
// one there with copies of the listening sockets (none under systemd).
func (d *Daemon) spawnHolder(path string) (net.Conn, error) {
	handover.Release(path)
	os.Remove(path) // a holder killed, not released
	var fds []int
	var names []string
	if !d.opts.Passed.FromSystemd() {
		var err error
		fds, names, err = d.socketFDs(false)
		defer handover.CloseAll(fds)
		if err != nil {
			return nil, err
		}
	}
	hold, err := listenPrivate(path)
	if err != nil {
		return nil, err
	}
	defer hold.Close()
	c, err := handover.SpawnHolder(path, hold, fds, names)
	if err != nil {
		os.Remove(path)
	}
	return c, err
}

// useHolder makes c the daemon's connection to its holder.
func (d *Daemon) useHolder(c net.Conn) {
	d.holderMu.Lock()
	d.holder = c
	d.holderMu.Unlock()
	go d.holdEndpoints(c)
	d.kickEndpoints()
	if d.opts.Store.etcd() {
		go d.tellFence(c)
	}
	// The API socket is held: not removed when the daemon stops.
	d.apiPassed = true
}

// holderConn is the connection to the daemon's holder, nil without one.
func (d *Daemon) holderConn() net.Conn {
	d.holderMu.Lock()
	defer d.holderMu.Unlock()
	return d.holder
}

// stopHolder ends the holder (hostel shutdown): the listeners close with
// the daemon, and so does the API socket's path.
func (d *Daemon) stopHolder() {
	d.holderMu.Lock()
	c := d.holder
	d.holder = nil
	d.holderMu.Unlock()
	if c == nil {
		return
	}
	handover.Release(HoldPath(d.opts.Root))
	c.Close()
	d.apiPassed = false
}

// kickEndpoints is the router's EndpointsChanged: the holder's copies of
// the endpoints are made again (holdEndpoints), never on the caller's
// time.
func (d *Daemon) kickEndpoints() {
	select {
	case d.endpointsKick <- struct{}{}:
	default:
	}
}

// holdEndpoints hands the holder on c copies of the <NEED>_URL endpoints'
// sockets each time they change, until c is no longer the holder's: a
// daemon that dies leaves the services' calls to their needs waiting in
// the backlog for the next one, as the public listeners do.
func (d *Daemon) holdEndpoints(c net.Conn) {
	for {
		select {
		case <-d.endpointsKick:
		case <-d.quit:
			return
		}
		d.holderMu.Lock()
		current := d.holder == c
		d.holderMu.Unlock()
		if !current {
			return
		}
		var fds []int
		var err error
		for _, ln := range d.router.EndpointListeners() {
			var fd int
			if fd, err = handover.Dup(ln); err != nil {
				break
			}
			fds = append(fds, fd)
		}
		if err == nil {
			d.holderWrite.Lock() // its messages and tellFence's, one at a time
			err = handover.HoldEndpoints(c, fds)
			d.holderWrite.Unlock()
		}
		handover.CloseAll(fds)
		if err != nil {
			d.logf("socket holder: the endpoints: %v; if the daemon dies, the services' calls to their needs are refused until it starts again", err)
		}
	}
}
