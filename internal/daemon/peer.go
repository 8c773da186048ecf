package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"

	"hostel/internal/drain"
	"hostel/internal/front"
	"hostel/internal/handover"
	"hostel/internal/nix"
	"hostel/internal/peer"
)

// A node of a cluster that advertises an address (--advertise) is one the
// others reach: it listens there for them — the node-to-node port, whose
// TLS takes only the certificates of the cluster's own CA (internal/peer)
// — reports the address in its record (node.Info.Addr), and its router
// reaches the instances the others run through the one client it has to
// them (router.Options.Peers). A node that advertises nothing serves what
// runs on it alone.

// CheckAdvertise says what is wrong with --advertise; nil if nothing. It
// is HOST:PORT, which the daemon listens on and the other nodes dial (port
// 0 picks a free one); it is for cluster mode (etcd) only.
func CheckAdvertise(addr string, store StoreOptions) error {
	if addr == "" {
		return nil
	}
	if !store.etcd() {
		return errors.New("the address other nodes reach is for cluster mode: add --etcd URLS or --etcd-embed")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want HOST:PORT (%w)", addr, err)
	}
	if host == "" {
		return fmt.Errorf("%q: want the host other nodes reach, not only a port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: %q is not a port", addr, port)
	}
	return nil
}

// listenPeer, with --advertise, binds the node-to-node port and makes the
// node's identity in the cluster: the cluster's CA (made in the store by
// the first node that needs it), and the node's certificate for its name
// and its advertised host. It returns the client the router reaches the
// other nodes with; nil without --advertise.
func (d *Daemon) listenPeer(ctx context.Context) (http.RoundTripper, error) {
	if d.opts.Advertise == "" {
		return nil, nil
	}
	ca, err := peer.LoadCA(ctx, d.keys)
	if err != nil {
		return nil, err
	}
	ln, err := d.listen(handover.Peer, d.opts.Advertise)
	if err != nil {
		return nil, fmt.Errorf("--advertise: %w", err)
	}
	// Port 0 picked one: the others dial that.
	host, _, _ := net.SplitHostPort(d.opts.Advertise)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	d.peerAddr = net.JoinHostPort(host, port)
	id, err := ca.Identity(d.nodeName(), d.peerAddr)
	if err != nil {
		ln.Close()
		return nil, err
	}
	d.peerLn = tls.NewListener(ln, id.ServerConfig())
	d.peers = id.Transport()
	if err := d.startNixCache(ctx, d.peers); err != nil {
		d.peerLn.Close()
		return nil, fmt.Errorf("the cluster's Nix key: %w", err)
	}
	return d.peers, nil
}

// servePeer serves the node-to-node port: what the other nodes forward
// to the instances that run here (router.ServePeer) — every such request
// names its instance (front.PeerInstanceField) —, the cluster's binary
// cache (nixcache.go: /nix-cache-info, *.narinfo, /nar/), and the API requests a
// standby passes to the leader, which name none, with apiHandler, the API
// as the daemon's socket serves it (servePeerAPI). A client the TLS
// refuses is logged, not served.
func (d *Daemon) servePeer(apiHandler http.Handler) {
	if d.peerLn == nil {
		return
	}
	h := func(w http.ResponseWriter, r *http.Request) {
		if _, app := r.Header[front.PeerInstanceField]; app {
			d.router.ServePeer(w, r)
			return
		}
		if d.nixCache != nil && nix.IsCacheRequest(r) {
			d.nixCache.serve.ServeHTTP(w, r)
			return
		}
		d.servePeerAPI(apiHandler, w, r)
	}
	srv := drain.New(&http.Server{Handler: http.HandlerFunc(h), ReadHeaderTimeout: 30 * time.Second,
		ErrorLog: log.New(logfWriter(d.logf), "peer: ", 0)})
	d.servers = append(d.servers, srv)
	d.wg.Go(func() {
		if err := srv.Serve(d.peerLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logf("serve %s: %v", d.peerLn.Addr(), err)
		}
	})
	d.logf("node %s: other nodes reach it at %s (mutual TLS, the cluster's CA)", d.nodeName(), d.peerAddr)
}
