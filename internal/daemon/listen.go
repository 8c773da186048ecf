package daemon

import (
	"fmt"
	"net"
	"strings"

	"hostel/internal/handover"
)

// listen returns the socket passed to the daemon as name
// (Options.Passed), else a new listener on addr. It records the socket
// under its name: hostel upgrade passes it on (upgrade.go).
func (d *Daemon) listen(name, addr string) (net.Listener, error) {
	ln, ok := d.opts.Passed.TakeFor(name, addr)
	if !ok {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
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
	if left := d.opts.Passed.Left(); len(left) > 0 {
		return fmt.Errorf("LISTEN_FDNAMES: %s passed but not used by these flags (--https \"\" turns HTTPS off; --api-listen, --advertise add those)",
			strings.Join(left, ", "))
	}
	return nil
}
