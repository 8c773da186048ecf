package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"hostel/internal/api"
	"hostel/internal/front"
	"hostel/internal/node"
	"hostel/internal/store"
)

// The CLI may talk to any daemon of a cluster, but only the one that leads
// the engine changes the deployment. A standby passes each request only
// the leader carries out (api.ForLeader, the one rule) to that daemon, on
// its node-to-node port through the node's one peer client — the same
// mutual TLS with the cluster's CA the router forwards apps' requests on —
// and relays the answer unchanged as it comes (a deploy's progress, line
// by line, through its confirm window). The leader's peer listener tells
// such a request from an app's by the one field every app request between
// nodes carries, the instance it is for (front.PeerInstanceField): without
// it, a request is the API's, which the leader serves as if asked on its
// own socket, and never passes on again — a daemon that no longer leads
// answers deploy.ErrStandby. What the engine does is all or nothing
// whoever asked: a leader lost mid-operation ends the relayed stream with
// an error, and the deployment is where the engine left it.

// passToLeader returns the API handler h that passes a request only the
// leader carries out to the daemon that leads, while this one does not.
func (d *Daemon) passToLeader(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !api.ForLeader(r) || d.engine.Leads() {
			h.ServeHTTP(w, r)
			return
		}
		name, addr, err := d.leader(r.Context())
		if err != nil {
			api.ReplyError(w, err)
			return
		}
		if name == d.nodeName() {
			// Recorded as leader but not leading (any more, or yet): the
			// engine says so.
			h.ServeHTTP(w, r)
			return
		}
		d.relay(w, r, name, addr)
	})
}

// leader returns the name of the node that leads the engine and the
// address of its node-to-node port, or why a request cannot be passed to
// it: no node leads now, this node has no peer client, or the leader
// advertises no address.
func (d *Daemon) leader(ctx context.Context) (name, addr string, err error) {
	r, err := d.store.Record(ctx, kindLeader, "engine")
	if errors.Is(err, store.ErrNotFound) {
		return "", "", errors.New("no node leads the engine now (its leader went, and another has not taken over yet): try again in a few seconds")
	} else if err != nil {
		return "", "", fmt.Errorf("which node leads the engine: %w", err)
	}
	name = string(r.Value)
	if d.peers == nil {
		return name, "", fmt.Errorf("node %s leads the engine, and this node cannot pass the request to it: it has no node-to-node port (serve --advertise); run the command on node %s", name, name)
	}
	if nr, err := d.store.Record(ctx, node.KindNode, name); err == nil {
		if info, err := node.DecodeInfo(name, nr.Value); err == nil {
			addr = info.Addr
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return name, "", fmt.Errorf("node %s, which leads the engine: %w", name, err)
	}
	if addr == "" {
		return name, "", fmt.Errorf("node %s leads the engine and advertises no address (serve --advertise) for this node to pass the request to: run the command on node %s", name, name)
	}
	return name, addr, nil
}

// relay sends r to the daemon of node name, which leads the engine, at
// its node-to-node port addr, and relays its answer to w.
func (d *Daemon) relay(w http.ResponseWriter, r *http.Request, name, addr string) {
	out, err := http.NewRequestWithContext(r.Context(), r.Method, "https://"+addr+r.URL.RequestURI(), r.Body)
	if err != nil {
		api.ReplyError(w, err)
		return
	}
	out.ContentLength = r.ContentLength
	if r.ContentLength == 0 {
		out.Body = http.NoBody
	}
	out.Header = r.Header.Clone()
	// An API request names no instance: that is how the leader tells it
	// from an app's (servePeer).
	front.DeletePeerFields(out.Header)
	// This node's remote API token stays here: the leader knows this node
	// by its certificate.
	out.Header.Del("Authorization")
	resp, err := d.peers.RoundTrip(out)
	if err != nil {
		if r.Context().Err() == nil {
			api.ReplyError(w, fmt.Errorf("node %s leads the engine and cannot be reached at %s: %w", name, addr, err))
		}
		return
	}
	api.Relay(w, resp, func(err error) error {
		return fmt.Errorf("lost node %s, which leads the engine, mid-operation: %w; `hostel status` and `hostel generations` show where it stopped", name, err)
	})
}

// servePeerAPI serves an API request another node passed to this one
// (passToLeader) with h, the API as this daemon's socket serves it, which
// passes nothing on. Only the requests for the leader pass between nodes.
func (d *Daemon) servePeerAPI(h http.Handler, w http.ResponseWriter, r *http.Request) {
	if !api.ForLeader(r) {
		api.ReplyError(w, api.Invalid(fmt.Errorf("%s %s: only the requests for the engine's leader pass between nodes", r.Method, r.URL.Path)))
		return
	}
	from := "?"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		from = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	d.logf("node %s passed %s %s to this one, which leads the engine", from, r.Method, r.URL.Path)
	h.ServeHTTP(w, r)
}
