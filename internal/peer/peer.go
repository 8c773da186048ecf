// Package peer is how the nodes of a hostel cluster reach one another: the
// cluster's own certificate authority, made once per deployment and kept in
// the store (its key sealed to every machine with internal/keyring), the
// certificate each node issues itself with it at its start (for its name
// and the address it advertises), and the mutually authenticated TLS of the
// node-to-node port — a listener that refuses at the handshake whatever
// does not present a certificate of the cluster's CA, and the one client
// through which a node sends the others requests: its router's forwarded
// app requests, and the API requests a standby passes to the leader.
//
// What a node sends its peers, and what it does with what they send it,
// is the router's (internal/router, remote.go) and the daemon's
// (internal/daemon, leader.go); this package only says who may talk.
package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"hostel/internal/keyring"
	"hostel/internal/pki"
)

// Record kinds of the cluster's CA in the store, both keyed by caKey.
const (
	// KindCA holds the CA's certificate (PEM): every node trusts it.
	KindCA = "peer-ca"
	// KindCAKey holds the CA's private key (PEM), sealed to every machine
	// key of the deployment (keyring): the daemon reseals it when a
	// machine joins, with the other sealed kinds.
	KindCAKey = "peer-ca-key"
)

// caKey is the key of the CA's records: there is one per deployment.
const caKey = "ca"

// Lifetimes of the CA and of the node certificates it signs. A node
// certificate is issued at the node's start and again, in memory, when it
// nears its end (Identity.certificate): it is never written anywhere.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	nodeLifetime = 7 * 24 * time.Hour
	// nodeRenew is how long before its end a node's certificate is
	// replaced by a new one at the next handshake.
	nodeRenew = 24 * time.Hour
)

// CA is the cluster's certificate authority: it signs the certificates of
// the cluster's nodes, and only those. Every node holds its key, so that
// it issues its own certificate; whoever can read the store's sealed
// values with a machine key can as well deploy a service, and is trusted
// as much.
type CA struct {
	ca   *pki.CA
	pool *x509.CertPool
}

// LoadCA returns the deployment's CA from its store, making it there if there is
// none: the certificate in a KindCA record, its key sealed with keys in a
// KindCAKey record (keyring.LoadPair: one transaction, the first daemon's
// wins).
func LoadCA(ctx context.Context, keys *keyring.Keyring) (*CA, error) {
	certPEM, keyPEM, err := keys.LoadPair(ctx, KindCA, KindCAKey, caKey, func() ([]byte, []byte, error) {
		ca, err := NewCA()
		if err != nil {
			return nil, nil, err
		}
		return ca.ca.PEM()
	})
	if err != nil {
		return nil, fmt.Errorf("the cluster's CA: %w", err)
	}
	ca, err := parseCA(certPEM, keyPEM)
	clear(keyPEM)
	return ca, err
}

// NewCA makes a new CA. A deployment has one, which LoadCA makes; a CA
// made otherwise is another cluster's, which a node of this one refuses.
func NewCA() (*CA, error) {
	ca, err := pki.NewCA("hostel cluster CA", caLifetime)
	if err != nil {
		return nil, fmt.Errorf("the cluster's CA: %w", err)
	}
	return newCA(ca), nil
}

func newCA(ca *pki.CA) *CA {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &CA{ca: ca, pool: pool}
}

// ParseCA reads a CA from its certificate and key (PEM), as PEM writes
// them: for a program that hands one cluster's CA to another process (a
// benchmark); a daemon reads its deployment's with LoadCA.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) { return parseCA(certPEM, keyPEM) }

// PEM returns the CA's certificate and key in PEM.
func (ca *CA) PEM() (certPEM, keyPEM []byte, err error) { return ca.ca.PEM() }

func parseCA(certPEM, keyPEM []byte) (*CA, error) {
	ca, err := pki.ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("the cluster's CA: %w", err)
	}
	return newCA(ca), nil
}

// Identity is one node's side of the node-to-node TLS: its certificate,
// issued by the cluster's CA for its name and the address it advertises,
// which it presents both as a server (its peer listener) and as a client
// (its router forwarding to other nodes), and the CA it trusts, alone.
type Identity struct {
	ca    *CA
	node  string
	hosts []string // the SANs: the node's name, the advertised host

	mu   sync.Mutex
	cert *tls.Certificate // renewed by certificate as it nears its end
}

// Identity issues the certificate of node, reached at advertise
// (HOST:PORT, the address other nodes dial): its subject is the node's
// name, and both the name and the advertised host are its names, so that
// a client that dials the advertised address verifies it.
func (ca *CA) Identity(node, advertise string) (*Identity, error) {
	host, _, err := net.SplitHostPort(advertise)
	if err != nil {
		return nil, fmt.Errorf("node %s: advertised address %q: %w", node, advertise, err)
	}
	id := &Identity{ca: ca, node: node, hosts: []string{node}}
	if host != node {
		id.hosts = append(id.hosts, host)
	}
	if _, err := id.certificate(); err != nil {
		return nil, err
	}
	return id, nil
}

// certificate returns the node's certificate, issuing a new one when there
// is none or it nears its end.
func (id *Identity) certificate() (*tls.Certificate, error) {
	now := time.Now()
	id.mu.Lock()
	defer id.mu.Unlock()
	if c := id.cert; c != nil && now.Add(nodeRenew).Before(c.Leaf.NotAfter) {
		return c, nil
	}
	tmpl := &x509.Certificate{
		Subject:  pkix.Name{CommonName: id.node, Organization: []string{"hostel cluster"}},
		KeyUsage: x509.KeyUsageDigitalSignature,
		// Both ends of the node-to-node TLS.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range id.hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	c, err := id.ca.ca.Leaf(tmpl, nodeLifetime)
	if err != nil {
		return nil, fmt.Errorf("node %s: its certificate: %w", id.node, err)
	}
	id.cert = c
	return c, nil
}

// Node is the name the identity was issued for.
func (id *Identity) Node() string { return id.node }

// Leaf returns the node's certificate as it is now.
func (id *Identity) Leaf() *x509.Certificate {
	c, err := id.certificate()
	if err != nil {
		return nil
	}
	return c.Leaf
}

// protos are the application protocols of the node-to-node port: HTTP/1.1
// alone, whose upgrades (websockets) a reverse proxy carries.
var protos = []string{"http/1.1"}

// ServerConfig is the TLS configuration of the node's peer listener: TLS
// 1.3, the node's certificate, and a client certificate of the cluster's
// CA required — a client without one, or with another's, fails the
// handshake and never sends a request.
func (id *Identity) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return id.certificate()
		},
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  id.ca.pool,
		NextProtos: protos,
	}
}

// ClientConfig is the TLS configuration of the node's connections to its
// peers: TLS 1.3, the node's certificate, and the cluster's CA the only
// one trusted for the peer's, which must name the address dialled.
func (id *Identity) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.certificate()
		},
		RootCAs:    id.ca.pool,
		NextProtos: protos,
	}
}

// Listen listens on addr for the node's peers: every connection is TLS
// with ServerConfig, its handshake made by the server that accepts it.
func (id *Identity) Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(ln, id.ServerConfig()), nil
}

// DialTimeout bounds a connection to a peer, its TLS handshake apart: a
// node that is gone is not waited for longer (its requests get 503).
const DialTimeout = 3 * time.Second

// Transport returns the node's client to its peers: one http.Transport
// with ClientConfig, whose pool keeps connections per peer. It is the one
// client every path to a peer uses (the router's forwarding, a standby's
// requests to the leader); there is no other.
func (id *Identity) Transport() *http.Transport {
	dialer := &net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		// Peers are reached directly, never through an HTTP_PROXY from
		// the daemon's environment.
		Proxy:               nil,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     id.ClientConfig(),
		TLSHandshakeTimeout: DialTimeout,
		// Go's default of 2 idle connections per host makes a busy proxy
		// dial for most requests (caddy issue #2805); keep many open.
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		// HTTP/1.1 (protos): a websocket's upgrade passes through.
		ForceAttemptHTTP2: false,
		// The peer's response, encoded as the app sent it, passes through.
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
	}
}
