package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"hostel/internal/acme"
	"hostel/internal/api"
	"hostel/internal/handover"
	"hostel/internal/router"
	"hostel/internal/spec"
)

// CertWait is how long a deploy waits for the certificates of the hosts it
// serves before it reports and carries on with HTTP for the missing ones.
const CertWait = 30 * time.Second

// startHTTPS binds the HTTPS listener and starts certificate management,
// on the store: certificates, keys (sealed) and locks are the
// deployment's. It does nothing when --https is "".
func (d *Daemon) startHTTPS(ctx context.Context) error {
	if d.opts.HTTPSAddr == "" {
		return nil
	}
	ln, err := d.listen(handover.HTTPS, d.opts.HTTPSAddr)
	if err != nil {
		return fmt.Errorf("--https: %w", err)
	}
	d.httpsLn = ln
	host, _ := os.Hostname()
	d.certs, err = acme.New(ctx, acme.Options{Store: d.store, Keys: d.keys, Lease: d.lease.get,
		Owner: fmt.Sprintf("the daemon of %s on %s (pid %d)", d.opts.Root, host, os.Getpid()),
		Root:  d.opts.Root, HTTPAddr: d.HTTPAddr(), HTTPSAddr: ln.Addr().String(), Logf: d.logf})
	return err
}

// routerOptions are the router's: with HTTPS on, it redirects the hosts
// its table serves over HTTPS to the HTTPS listener once certificate
// management has their certificates.
func (d *Daemon) routerOptions(zone string) router.Options {
	opts := router.Options{Zone: zone, Logf: d.logf, Waker: wakeVia{d}}
	if d.certs != nil {
		opts.Certs = d.certs
		_, opts.HTTPSPort, _ = net.SplitHostPort(d.HTTPSAddr())
	}
	return opts
}

// publicHTTP is the handler of the HTTP listener: the router, behind the
// answerer of ACME challenges when HTTPS is on.
func (d *Daemon) publicHTTP() http.Handler {
	if d.certs == nil {
		return d.router
	}
	return d.certs.HTTPHandler(d.router)
}

// serveHTTPS serves the router over TLS (1.2+, HTTP/2) on the HTTPS listener.
func (d *Daemon) serveHTTPS() {
	if d.httpsLn == nil {
		return
	}
	// The front end (serveFront) has the TLS configuration and handler.
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.front.ServeTLS(d.httpsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logf("serve %s: %v", d.httpsLn.Addr(), err)
		}
	}()
	d.logf("serving HTTPS on %s", d.httpsLn.Addr())
}

// HTTPSAddr returns the bound public HTTPS address, "" when HTTPS is off.
func (d *Daemon) HTTPSAddr() string {
	if d.httpsLn == nil {
		return ""
	}
	return d.httpsLn.Addr().String()
}

// certsFollow hands the hosts of the table the router switched to, made
// of currents, to certificate management: the names it serves over HTTPS
// get certificates (production's acme block says from where), and no
// other.
func (d *Daemon) certsFollow(t router.Table, currents map[string]*spec.Generation) {
	if d.certs == nil {
		return
	}
	h := acme.Hosts{Zone: t.Zone, Public: t.Certificates()}
	if prod := currents[spec.DefaultEnv]; prod != nil {
		h.ACME = prod.Spec.ACME
	}
	d.certs.Follow(h)
}

// awaitCerts waits (up to CertWait) for the certificates of the current
// generation's hosts and reports each through progress.
func (d *Daemon) awaitCerts(ctx context.Context, progress func(string, ...any)) {
	if d.certs == nil {
		return
	}
	d.certs.Await(ctx, CertWait, progress)
}

// certStatus fills the HTTPS parts of a status.
func (d *Daemon) certStatus(st *api.Status) {
	if d.certs == nil {
		return
	}
	st.Listen.HTTPS = d.HTTPSAddr()
	st.InternalCA = d.certs.InternalCA()
	for _, cs := range d.certs.Status() {
		c := api.CertStatus{Host: cs.Host, Service: cs.Service, State: cs.State, Status: cs.String(), Error: cs.Error}
		if !cs.NotAfter.IsZero() {
			na := cs.NotAfter
			c.NotAfter = &na
		}
		st.Certificates = append(st.Certificates, c)
	}
}
