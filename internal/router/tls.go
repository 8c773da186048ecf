package router

import (
	"net/url"
	"strings"
)

// This file is what TLS changes about routing. The table says, per public
// host name, whether it is served over HTTPS and whether it asks for HSTS
// (Table.TLS); decide applies it with what certificate management says
// is there (Options.Certs), so that redirects to HTTPS and HSTS are part
// of the one routing decision, and the front end's fast path asks the same
// decision (Direct, DirectTLS) before it forwards a request itself.

// TLS is what HTTPS means for one public host name of a Table.
type TLS struct {
	// HTTPS: the name is served over HTTPS with a certificate (it is one
	// of Table.Certificates), and a request for it on HTTP is answered 301
	// to HTTPS once Options.Certs has the certificate — of the name
	// itself, or for a redirect host of its target, where it is sent.
	// Until then it is served on HTTP.
	HTTPS bool
	// HSTS: a response to an HTTPS request for the name carries
	// Strict-Transport-Security. It needs HTTPS.
	HSTS bool
}

// Certs is what the router asks of certificate management
// (internal/acme's Manager).
type Certs interface {
	// Has reports whether a certificate for host (normalized, as the
	// table has it) is there to serve on HTTPS.
	Has(host string) bool
}

// HSTSHeader is the value of Strict-Transport-Security on the responses
// of hosts that ask for HSTS: one year.
const HSTSHeader = "max-age=31536000"

// challengePrefix starts the paths of ACME HTTP-01 challenges. Whoever
// answers them — hostel's certificate management in front of the router,
// or a service's own ACME client behind it — must get them on HTTP: they
// are never redirected to HTTPS.
const challengePrefix = "/.well-known/acme-challenge"

// isChallenge reports whether the escaped path is an ACME challenge's, in
// any spelling of it.
func isChallenge(path string) bool {
	if strings.IndexByte(path, '%') >= 0 {
		if p, err := url.PathUnescape(path); err == nil {
			path = p
		}
	}
	return strings.HasPrefix(path, challengePrefix)
}

// tlsOf applies t's TLS policy to rt, routed from host (normalized): on
// HTTP, a name served over HTTPS whose certificate is there is redirected
// to it, unless path (escaped) is an ACME challenge's; on HTTPS, HSTS
// where the name asks for it. target is where an HTTPS redirect goes:
// host itself, or a redirect host's target.
func (r *Router) tlsOf(t *Table, rt *route, host, target string, secure bool, path string) {
	p, ok := t.TLS[host]
	if !ok {
		return
	}
	if secure {
		rt.hsts = p.HSTS
		return
	}
	if p.HTTPS && r.certs != nil && !isChallenge(path) && r.certs.Has(target) {
		*rt = route{redirect: target, https: true}
	}
}

// Direct is front.Options.Direct of the HTTP listener: whether a request
// for host and the escaped path, which the fast path would forward, is
// forwarded as it is by the router's decision (not redirected to HTTPS)
// and is no ACME challenge, which the handler in front of the router (the
// certificate manager's) answers. Set it only with such a handler.
func (r *Router) Direct(host, path string) bool {
	if isChallenge(path) {
		return false
	}
	return !r.decide(host, "", false, path).https
}

// DirectTLS is front.Options.DirectTLS of the HTTPS listener: whether a
// request for host is forwarded without an HSTS header added.
func (r *Router) DirectTLS(host, path string) bool {
	return !r.decide(host, "", true, path).hsts
}

// Certificates returns the public host names t serves over HTTPS, each
// with the service that answers it (for a redirect host, its target's;
// "" if the target is none of t's domains): the names that need a
// certificate.
func (t *Table) Certificates() map[string]string {
	out := map[string]string{}
	for host, p := range t.TLS {
		if !p.HTTPS {
			continue
		}
		key, ok := t.Domains[host]
		if !ok {
			key = t.Domains[t.Redirects[host]]
		}
		out[host] = key.Service()
	}
	return out
}
