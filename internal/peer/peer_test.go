package peer

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"testing"
	"time"

	"hostel/internal/keyring/keyringtest"
	"hostel/internal/store/storetest"
	"hostel/internal/store/storetest/backends"
)

// serve serves a peer listener of id on a free loopback port until the
// test ends; every request is answered with the client certificate's
// subject ("stranger" without one). It returns the listener's address.
func serve(t *testing.T, id *Identity, host string) string {
	t.Helper()
	ln, err := id.Listen(net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := "stranger"
		if cs := r.TLS.PeerCertificates; len(cs) > 0 {
			name = cs[0].Subject.CommonName
		}
		fmt.Fprintf(w, "hello %s", name)
	}), ErrorLog: discardLog}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// get requests https://addr/ through rt and returns the body.
func get(rt http.RoundTripper, addr string) (string, error) {
	c := &http.Client{Transport: rt, Timeout: 10 * time.Second}
	resp, err := c.Get("https://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestLoadCA: the first daemon makes the deployment's CA, every other
// finds the same one (certificate and key) and their nodes talk; the key
// is in the store sealed, never as PEM.
func TestLoadCA(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ctx := t.Context()
		ka, sta := keyringtest.Machine(t, b)
		kb, _ := keyringtest.Machine(t, b)
		caA, err := LoadCA(ctx, ka)
		if err != nil {
			t.Fatal(err)
		}
		caB, err := LoadCA(ctx, kb)
		if err != nil {
			t.Fatal(err)
		}
		if !caA.ca.Cert.Equal(caB.ca.Cert) || !caA.ca.Key.Equal(caB.ca.Key) {
			t.Fatal("a second daemon made a CA of its own")
		}
		if again, err := LoadCA(ctx, ka); err != nil || !again.ca.Cert.Equal(caA.ca.Cert) {
			t.Fatalf("loading the CA again: %v", err)
		}
		r, err := sta.Record(ctx, KindCAKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		_, keyPEM, _ := caA.ca.PEM()
		if bytes.Contains(r.Value, []byte("PRIVATE KEY")) || bytes.Contains(r.Value, keyPEM) {
			t.Fatalf("the CA's key is in the store unsealed: %s", r.Value)
		}
		idA, err := caA.Identity("a", "127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		idB, err := caB.Identity("b", "127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		addr := serve(t, idA, "127.0.0.1")
		if got, err := get(idB.Transport(), addr); err != nil || got != "hello b" {
			t.Errorf("b to a: %q, %v; want hello b", got, err)
		}
	})
}

// TestHandshake: the peer port takes only a client certificate of the
// cluster's CA — none, or one of another CA, fails the handshake and no
// request is served — and a node trusts only a peer with a certificate of
// the cluster's CA for the address it dials.
func TestHandshake(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	idA, _ := ca.Identity("a", "127.0.0.1:7946")
	idB, _ := ca.Identity("b", "127.0.0.1:7946")
	stranger, _ := other.Identity("b", "127.0.0.1:7946")
	elsewhere, _ := ca.Identity("c", "127.0.0.2:7946") // a node of the cluster, but not at 127.0.0.1
	addr := serve(t, idA, "127.0.0.1")

	// Clients of the peer port.
	noCert := idB.Transport()
	noCert.TLSClientConfig.GetClientCertificate = nil
	pool := x509.NewCertPool()
	pool.AddCert(ca.ca.Cert)
	strangerToA := stranger.Transport()
	strangerToA.TLSClientConfig.RootCAs = pool // it trusts a; a must not trust it
	for _, tc := range []struct {
		name string
		rt   http.RoundTripper // nil: plain HTTP
		want string            // "": refused
	}{
		{"a node of the cluster", idB.Transport(), "hello b"},
		{"no client certificate", noCert, ""},
		{"a certificate of another CA", strangerToA, ""},
		{"plain HTTP", nil, ""},
		{"a server certificate of another CA", stranger.Transport(), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got string
			var err error
			if tc.rt == nil {
				got, err = plainGet(addr)
			} else {
				got, err = get(tc.rt, addr)
			}
			switch {
			case tc.want == "" && err == nil:
				t.Errorf("served %q, want the connection refused", got)
			case tc.want != "" && (err != nil || got != tc.want):
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}

	// The client's side: the peer's certificate must be the cluster's and
	// name the address dialled.
	for _, tc := range []struct {
		name string
		id   *Identity
	}{{"another CA's server", stranger}, {"a certificate for another address", elsewhere}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serve(t, tc.id, "127.0.0.1")
			_, err := get(idB.Transport(), addr)
			var verr *tls.CertificateVerificationError
			if !errors.As(err, &verr) {
				t.Errorf("b to %s: %v, want a certificate verification error", tc.name, err)
			}
		})
	}
}

// plainGet sends a plain-HTTP request to addr.
func plainGet(addr string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("%s: %s", resp.Status, b)
	}
	return string(b), nil
}

// TestIdentityNames: a node's certificate names the node and the host it
// advertises, for both ends of the TLS, and is renewed as it nears its
// end.
func TestIdentityNames(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		advertise string
		dns       []string
		ips       int
	}{
		{"10.0.0.7:7946", []string{"n1"}, 1},
		{"n1.cluster.example:7946", []string{"n1", "n1.cluster.example"}, 0},
		{"n1:7946", []string{"n1"}, 0},
	} {
		id, err := ca.Identity("n1", tc.advertise)
		if err != nil {
			t.Fatal(err)
		}
		leaf := id.Leaf()
		if fmt.Sprint(leaf.DNSNames) != fmt.Sprint(tc.dns) || len(leaf.IPAddresses) != tc.ips || leaf.Subject.CommonName != "n1" {
			t.Errorf("%s: names %v %v, CN %q; want %v and %d IP", tc.advertise, leaf.DNSNames, leaf.IPAddresses, leaf.Subject.CommonName, tc.dns, tc.ips)
		}
		if fmt.Sprint(leaf.ExtKeyUsage) != fmt.Sprint([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
			t.Errorf("%s: key usage %v, want server and client", tc.advertise, leaf.ExtKeyUsage)
		}
	}
	if _, err := ca.Identity("n1", "no-port"); err == nil {
		t.Error("an advertised address without a port was taken")
	}

	id, _ := ca.Identity("n1", "127.0.0.1:1")
	first := id.Leaf()
	// As if a week had gone by: the certificate ends within nodeRenew.
	id.mu.Lock()
	old := *id.cert
	leaf := *old.Leaf
	leaf.NotAfter = time.Now().Add(nodeRenew / 2)
	old.Leaf = &leaf
	id.cert = &old
	id.mu.Unlock()
	if renewed := id.Leaf(); renewed.SerialNumber.Cmp(first.SerialNumber) == 0 || time.Until(renewed.NotAfter) < nodeLifetime-time.Hour {
		t.Errorf("a certificate near its end was not renewed (ends %s)", renewed.NotAfter)
	}
}

var discardLog = log.New(io.Discard, "", 0)
