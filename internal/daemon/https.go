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
	ln, err := net.Listen("tcp", d.opts.HTTPSAddr)
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

// publicHTTP is the handler of the HTTP listener: the router, wrapped for
// ACME challenges and redirects to HTTPS when HTTPS is on.
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

// updateCertsLocked hands the live generations to certificate management:
// production's domains, and previews' SERVICE.ENV.DOMAIN names.
// d.liveMu must be held.
func (d *Daemon) updateCertsLocked() {
	if d.certs == nil {
		return
	}
	var previews []*spec.Generation
	for env, g := range d.live {
		if env != spec.DefaultEnv {
			previews = append(previews, g)
		}
	}
	d.certs.Update(d.live[spec.DefaultEnv], previews...)
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
