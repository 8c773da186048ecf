package daemon

import (
	"errors"
	"log"
	"net/http"
	"time"

	"hostel/internal/front"
)

// serveFront serves the public HTTP listener through the router's front
// end: bodyless HTTP/1.1 requests for the router's hosts are forwarded
// without net/http's server; everything else (uploads, upgrades, HTTP/1.0,
// ACME challenges, redirects to HTTPS) goes through publicHTTP on net/http.
// serveHTTPS serves the HTTPS listener through the same front end.
func (d *Daemon) serveFront() {
	opts := front.Options{
		Logf:              d.logf,
		Handler:           d.publicHTTP(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(logfWriter(d.logf), "public http: ", 0),
		MaxConnections:    d.opts.MaxConnections,
	}
	if d.certs != nil {
		// What TLS changes (redirects to HTTPS, HSTS) is the router's
		// decision, which its Direct and DirectTLS ask; ACME challenges
		// go to the handler in front of it.
		opts.Direct = d.router.Direct
		// HTTPS (1.2+, HTTP/2 handed to net/http after the handshake).
		opts.TLSConfig = d.certs.TLSConfig()
		opts.DirectTLS = d.router.DirectTLS
	}
	d.front = front.New(d.router, opts)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.front.Serve(d.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logf("serve %s: %v", d.httpLn.Addr(), err)
		}
	}()
}

// logfWriter adapts the daemon's log to the io.Writer a log.Logger needs.
type logfWriter func(format string, args ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	n := len(p)
	if n > 0 && p[n-1] == '\n' {
		p = p[:n-1]
	}
	f("%s", p)
	return n, nil
}
