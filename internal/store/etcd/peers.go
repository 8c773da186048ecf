package etcd

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"hostel/internal/spec"
)

// Peer is one of the initial members of a cluster of members embedded in
// the daemons (hostel serve --etcd-peers NAME=PEER_URL,…).
type Peer struct {
	// Name is the member's, the node's whose daemon runs it.
	Name string
	// URL is where the member listens for its peers, and what it
	// advertises to them: http:// or https://, an IP address and a port.
	URL url.URL
}

// ClientURL is where the member whose peer URL is peer answers clients:
// the same scheme and address, on the port below the peer port — etcd's
// own pair, 2379 for 2380. One rule, so that every daemon knows where
// every member answers from the list of peers alone.
func ClientURL(peer url.URL) url.URL {
	host, port, _ := net.SplitHostPort(peer.Host)
	p, _ := strconv.Atoi(port)
	return url.URL{Scheme: peer.Scheme, Host: net.JoinHostPort(host, strconv.Itoa(p-1))}
}

// ParsePeers reads the list of --etcd-peers, entries NAME=PEER_URL. It
// refuses a name that is not a node name or comes twice, a URL that is
// not http(s)://IP:PORT (the member listens on that address, so it must
// be one of the machine's), two members that would listen on one address
// (peer or client port, ClientURL), a list that mixes http:// and
// https://, and http:// anywhere but on a loopback address: traffic
// between machines is authenticated (TLS, certificates of the cluster's
// CA); plain HTTP is for tests and clusters on one machine.
func ParsePeers(list []string) ([]Peer, error) {
	if len(list) == 0 {
		return nil, errors.New("no members: want NAME=PEER_URL,…")
	}
	var peers []Peer
	listeners := map[string]string{} // address → whose listener
	for _, entry := range list {
		name, raw, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want NAME=PEER_URL", entry)
		}
		if err := spec.CheckNodeName(name); err != nil {
			return nil, fmt.Errorf("%q: %w", entry, err)
		}
		if slices.ContainsFunc(peers, func(p Peer) bool { return p.Name == name }) {
			return nil, fmt.Errorf("%q: member %s is named twice", entry, name)
		}
		u, err := peerURL(raw)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", entry, err)
		}
		if len(peers) > 0 && peers[0].URL.Scheme != u.Scheme {
			return nil, fmt.Errorf("%q: %s:// among %s:// URLs: every member is on https://, or every one on http:// on this machine", entry, u.Scheme, peers[0].URL.Scheme)
		}
		client := ClientURL(*u)
		for _, l := range []struct{ addr, what string }{{u.Host, name + "'s peer port"}, {client.Host, name + "'s client port (its peer port less one)"}} {
			if other, ok := listeners[l.addr]; ok {
				return nil, fmt.Errorf("%q: %s, %s, is %s", entry, l.what, l.addr, other)
			}
			listeners[l.addr] = l.what
		}
		peers = append(peers, Peer{Name: name, URL: *u})
	}
	return peers, nil
}

// peerURL parses one PEER_URL.
func peerURL(raw string) (*url.URL, error) {
	const want = "want https://IP:PORT (http:// on a loopback address)"
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", want, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%s", want)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", want, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return nil, fmt.Errorf("%s is not an IP address: the member listens on its peer URL's address (%s)", host, want)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 2 || p > 65535 {
		return nil, fmt.Errorf("port %q: want 2 to 65535 (clients are served on the port below)", port)
	}
	if u.Scheme == "http" && !ip.IsLoopback() {
		return nil, fmt.Errorf("http:// to %s, which is not a loopback address: peers on other machines are reached over https://, with certificates (--etcd-cert, --etcd-key, --etcd-ca)", host)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// Cluster is how a member embedded in the daemon joins its cluster.
type Cluster struct {
	// Name is this member's: one of Peers.
	Name string
	// Peers are the cluster's initial members, this one among them.
	Peers []Peer
	// CertFile and KeyFile are this member's certificate and key, and
	// CAFile the cluster's CA, for https:// peers (none for http://).
	// The member serves its peer and client ports with the certificate
	// and accepts only connections that present one the CA signed, from
	// the address it names; the daemon's client presents the same
	// certificate. So it must name the member's peer address (an IP
	// SAN) and be for both server and client authentication.
	CertFile, KeyFile, CAFile string
}

// self returns this member's entry in Peers.
func (c Cluster) self() (Peer, error) {
	for _, p := range c.Peers {
		if p.Name == c.Name {
			return p, nil
		}
	}
	names := make([]string, len(c.Peers))
	for i, p := range c.Peers {
		names[i] = p.Name
	}
	return Peer{}, fmt.Errorf("this node, %s, is not one of the members (%s)", c.Name, strings.Join(names, ", "))
}

// secure reports whether the members talk over TLS.
func (c Cluster) secure() bool { return len(c.Peers) > 0 && c.Peers[0].URL.Scheme == "https" }

// initialCluster is the list as etcd's --initial-cluster takes it.
func (c Cluster) initialCluster() string {
	var b strings.Builder
	for i, p := range c.Peers {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.Name + "=" + p.URL.String())
	}
	return b.String()
}

// token is the cluster's --initial-cluster-token: from its list of
// members, which every member is started with, so that two clusters made
// from different lists never take each other's members for their own.
func (c Cluster) token() string {
	entries := strings.Split(c.initialCluster(), ",")
	slices.Sort(entries)
	sum := sha256.Sum256([]byte(strings.Join(entries, ",")))
	return "hostel-" + hex.EncodeToString(sum[:8])
}

// Endpoints are the client URLs of every member.
func (c Cluster) Endpoints() []string {
	out := make([]string, len(c.Peers))
	for i, p := range c.Peers {
		u := ClientURL(p.URL)
		out[i] = u.String()
	}
	return out
}

// Check checks what can be checked before the member starts: this
// member is one of the peers, and on https:// the files make a
// certificate the CA signed, for server and client authentication,
// naming this member's peer address — what its peers will check of its
// connections. Errors name the file.
func (c Cluster) Check() error {
	self, err := c.self()
	if err != nil {
		return err
	}
	if !c.secure() {
		if c.CertFile != "" || c.KeyFile != "" || c.CAFile != "" {
			return errors.New("certificates are for https:// peer URLs")
		}
		return nil
	}
	if c.CertFile == "" || c.KeyFile == "" || c.CAFile == "" {
		return errors.New("https:// peer URLs need this member's certificate, its key and the cluster's CA")
	}
	cfg, err := TLSConfig(c.CertFile, c.KeyFile, c.CAFile)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		return fmt.Errorf("%s: %w", c.CertFile, err)
	}
	inter := x509.NewCertPool()
	for _, der := range cfg.Certificates[0].Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(ic)
		}
	}
	host, _, _ := net.SplitHostPort(self.URL.Host)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: cfg.RootCAs, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return fmt.Errorf("%s, with the CA of %s: %w", c.CertFile, c.CAFile, err)
		}
	}
	if err := leaf.VerifyHostname(host); err != nil {
		return fmt.Errorf("%s does not name %s, this member's peer address (an IP SAN): %w", c.CertFile, host, err)
	}
	return nil
}

// clientTLS is the daemon's client's TLS configuration: nil on http://.
func (c Cluster) clientTLS() (*tls.Config, error) {
	if !c.secure() {
		return nil, nil
	}
	return TLSConfig(c.CertFile, c.KeyFile, c.CAFile)
}
