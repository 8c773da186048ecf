package api

import (
	"context"
	"net"
	"net/http"
)

// NewClientDial returns a client that reaches a daemon through dial instead
// of a local socket: over SSH, for instance, one connection per request.
// name says where the daemon is, in messages.
func NewClientDial(name string, dial func(ctx context.Context) (net.Conn, error)) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		// Each connection is a process (ssh); don't keep idle ones around.
		DisableKeepAlives: true,
	}
	return &Client{socket: name, hc: &http.Client{Transport: tr}}
}
