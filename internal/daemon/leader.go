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
		if !api.ForLeader(r) {
			h.ServeHTTP(w, r)
			return
		}
		// One read, bounded, before anything is asked of the engine: a
		// store out of reach would hold the request as long as it is
		// out, and the CLI with it.
		ctx, cancel := context.WithTimeout(r.Context(), storeWait)
		name, addr, rev, err := d.leader(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil {
			api.ReplyError(w, errStoreAway)
			return
		}
		if d.engine.Leads() {
			h.ServeHTTP(w, r)
			return
		}
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
		d.relay(w, r, name, addr, rev)
	})
}

// leader returns the name of the node that leads the engine, the
// address of its node-to-node port and the revision of the record that
// says it leads, or why a request cannot be passed to it: no node leads
// now, this node has no peer client, or the leader advertises no address.
func (d *Daemon) leader(ctx context.Context) (name, addr string, rev uint64, err error) {
	r, err := d.store.Record(ctx, kindLeader, "engine")
	if errors.Is(err, store.ErrNotFound) {
		return "", "", 0, errors.New("no node leads the engine now (its leader went, and another has not taken over yet): try again in a few seconds")
	} else if err != nil {
		return "", "", 0, fmt.Errorf("which node leads the engine: %w", err)
	}
	name, rev = string(r.Value), r.Revision
	if d.peers == nil {
		return name, "", rev, fmt.Errorf("node %s leads the engine, and this node cannot pass the request to it: it has no node-to-node port (serve --advertise); run the command on node %s", name, name)
	}
	if nr, err := d.store.Record(ctx, node.KindNode, name); err == nil {
		if info, err := node.DecodeInfo(name, nr.Value); err == nil {
			addr = info.Addr
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return name, "", rev, fmt.Errorf("node %s, which leads the engine: %w", name, err)
	}
	if addr == "" {
		return name, "", rev, fmt.Errorf("node %s leads the engine and advertises no address (serve --advertise) for this node to pass the request to: run the command on node %s", name, name)
	}
	return name, addr, rev, nil
}

// relay sends r to the daemon of node name, which leads the engine, at
// its node-to-node port addr, and relays its answer to w — for as long as
// the record at revision rev says it leads. A leader whose machine
// vanished (cut off, frozen) keeps its connections open with nothing
// coming, which TCP would not end for minutes, if ever; its leadership
// ends with its lease, a few seconds after its last renewal, and so does
// the relay.
func (d *Daemon) relay(w http.ResponseWriter, r *http.Request, name, addr string, rev uint64) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	go d.whileLeads(ctx, cancel, name, rev)
	out, err := http.NewRequestWithContext(ctx, r.Method, "https://"+addr+r.URL.RequestURI(), r.Body)
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
			api.ReplyError(w, fmt.Errorf("node %s leads the engine and cannot be reached at %s: %w", name, addr, cause(ctx, err)))
		}
		return
	}
	api.Relay(w, resp, func(err error) error {
		err = cause(ctx, err)
		return fmt.Errorf("lost node %s, which leads the engine, mid-operation: %w; `hostel status` and `hostel generations` show where it stopped", name, err)
	})
}

// errStoreAway answers a request for the leader when the store does not.
var errStoreAway = fmt.Errorf("the store does not answer within %s (etcd out of reach, or without a quorum): nothing was changed, and what runs keeps running as it is; try again once it is back", storeWait)

// errLeaderGone ends a relay to a node that no longer leads the engine.
var errLeaderGone = errors.New("it no longer leads the engine (its lease ended: its machine stopped answering)")

// whileLeads watches the record that says node name leads the engine,
// from revision rev, and cancels with errLeaderGone once it goes or names
// another node; it returns when ctx ends. A watch that cannot go on
// cancels nothing: the relay is then as bounded as before.
func (d *Daemon) whileLeads(ctx context.Context, cancel context.CancelCauseFunc, name string, rev uint64) {
	events, err := d.store.Watch(ctx, rev)
	if err != nil {
		return
	}
	for ev := range events {
		if ev.Err != nil {
			return
		}
		if ev.Kind != kindLeader || ev.Key != "engine" {
			continue
		}
		r, err := d.store.Record(ctx, kindLeader, "engine")
		if errors.Is(err, store.ErrNotFound) || (err == nil && string(r.Value) != name) {
			cancel(errLeaderGone)
			return
		}
	}
}

// cause is err, or why ctx was cancelled when a relay ended it.
func cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return err
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
