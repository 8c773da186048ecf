package handover

import (
	"fmt"
	"strings"
)

// UnitOptions are what the systemd units run.
type UnitOptions struct {
	// Binary is the absolute path of hostel.
	Binary string
	// Root is the daemon's --root.
	Root string
	// HTTPAddr and HTTPSAddr are its --http and --https; HTTPSAddr ""
	// turns HTTPS off.
	HTTPAddr, HTTPSAddr string
}

// Units returns hostel.socket and hostel.service: systemd holds the
// public listeners and the API socket (the socket unit, which outlives
// the daemon), passes them to `hostel serve` (Type=notify: it says
// READY=1), restarts it when it fails, and leaves the services running
// when it stops (KillMode=process: the next daemon adopts them).
func Units(o UnitOptions) (socket, service string) {
	var b strings.Builder
	b.WriteString(`[Unit]
Description=hostel's listeners, held by systemd across restarts, crashes and upgrades of hostel serve

[Socket]
`)
	for _, addr := range []string{o.HTTPAddr, o.HTTPSAddr} {
		if addr != "" {
			fmt.Fprintf(&b, "ListenStream=%s\n", listenStream(addr))
		}
	}
	fmt.Fprintf(&b, `ListenStream=%s/hostel.sock
SocketMode=0600
DirectoryMode=0755
# hostel serve tells its sockets apart by address (docs/daemon-restart.md).
FileDescriptorName=%s
Backlog=4096
NoDelay=true

[Install]
WantedBy=sockets.target
`, o.Root, Unit)
	socket = b.String()

	service = fmt.Sprintf(`[Unit]
Description=hostel: many web apps on one machine, the Nix way
Requires=hostel.socket
After=hostel.socket network-online.target
Wants=network-online.target

[Service]
Type=notify
# hostel upgrade (and systemctl reload) starts the new daemon, which says
# MAINPID= and READY=1 itself.
NotifyAccess=all
ExecStart=%s serve --root %s --http %s --https %s
ExecReload=/bin/kill -HUP $MAINPID
# The services run on when the daemon stops or crashes: the next one adopts them.
KillMode=process
Restart=on-failure
RestartSec=1s
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
`, o.Binary, o.Root, quote(o.HTTPAddr), quote(o.HTTPSAddr))
	return socket, service
}

// listenStream writes addr as ListenStream= takes it: ":80" (any
// address) is a bare port, which systemd binds on IPv6 and IPv4.
func listenStream(addr string) string {
	if strings.HasPrefix(addr, ":") {
		return addr[1:]
	}
	return addr
}

// quote writes an argument of ExecStart=: "" for an empty one.
func quote(s string) string {
	if s == "" {
		return `""`
	}
	return s
}
