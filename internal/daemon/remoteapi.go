package daemon

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"hostel/internal/api"
	"hostel/internal/atomicfile"
	"hostel/internal/dashboard"
	"hostel/internal/drain"
	"hostel/internal/handover"
	"hostel/internal/pki"
)

// The remote API (serve --api-listen) serves the API's handler over HTTPS
// to clients with the daemon's token (api.Token: a secret and the pin of
// the daemon's key). Both are made at the first start that needs them and
// kept in ROOT/api (0700): key.pem, the TLS key (0600), and token (0600),
// which the operator reads there — the daemon never logs it. The
// certificate is made anew from the key at each start: clients verify the
// key's pin, not a chain, so nothing of it but the key needs keeping.
//
// The same listener serves the dashboard (internal/dashboard) to browsers,
// which cannot send the token as a header: every path but the API's
// (/v1/…) is the dashboard's, whose login takes the same token
// (/login?token=TOKEN) for a session cookie, and which answers 401 and
// nothing to a request without a session, as the API does without the
// token. It reads the daemon through the API socket, as `hostel
// dashboard` does.
//
// Cluster mode does not change this: each node has its own key and token
// (the cluster's CA, internal/peer, vouches for nodes to each other; a
// client outside the cluster has no reason to trust it).

// APIDir is where the remote API's key and token are kept.
func APIDir(root string) string { return filepath.Join(root, "api") }

// APITokenPath is the file the operator reads the remote API's token from.
func APITokenPath(root string) string { return filepath.Join(APIDir(root), "token") }

// CheckAPIListen says what is wrong with --api-listen; nil if nothing. It
// is HOST:PORT or :PORT (every address), port 0 picking a free one.
func CheckAPIListen(addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want HOST:PORT, e.g. 0.0.0.0:7443", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: %q is not a port", addr, port)
	}
	if host != "" && net.ParseIP(host) == nil && !validHostName(host) {
		return fmt.Errorf("%q: %q is neither an IP address nor a host name", addr, host)
	}
	return nil
}

// validHostName reports whether h is a DNS name: labels of letters,
// digits and hyphens.
func validHostName(h string) bool {
	if len(h) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
			label++
			if label > 63 {
				return false
			}
		default:
			return false
		}
	}
	return label > 0
}

// apiIdentity loads the remote API's key and token from dir, making
// whichever is missing; a token whose pin is not the key's (the key was
// replaced) is made anew. made says a new token was written.
func apiIdentity(dir, host string) (cert tls.Certificate, tok api.Token, made bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return cert, tok, false, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return cert, tok, false, err
	}
	key, err := loadOrMakeKey(filepath.Join(dir, "key.pem"))
	if err != nil {
		return cert, tok, false, fmt.Errorf("remote API key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return cert, tok, false, err
	}
	pin := api.KeyPin(spki)
	path := filepath.Join(dir, "token")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		tok, err = api.ParseToken(string(b))
		if err == nil && tok.Pin == pin {
			if err := os.Chmod(path, 0o600); err != nil {
				return cert, tok, false, err
			}
			break
		}
		fallthrough // unreadable, or for another key: a new one
	case errors.Is(err, os.ErrNotExist):
		if tok, err = api.NewToken(pin); err != nil {
			return cert, tok, false, err
		}
		if err := atomicfile.WriteFile(path, []byte(tok.String()+"\n"), 0o600); err != nil {
			return cert, tok, false, fmt.Errorf("remote API token: %w", err)
		}
		made = true
	default:
		return cert, tok, false, fmt.Errorf("remote API token: %w", err)
	}
	cert, err = selfSigned(key, host)
	return cert, tok, made, err
}

// loadOrMakeKey reads the ECDSA key at path (PEM), or makes one there.
func loadOrMakeKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := pki.NewKey()
		if err != nil {
			return nil, err
		}
		keyPEM, err := pki.KeyPEM(key)
		if err != nil {
			return nil, err
		}
		return key, atomicfile.WriteFile(path, keyPEM, 0o600)
	}
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, err
	}
	key, err := pki.ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// selfSigned makes the listener's certificate for key, naming host when
// there is one (clients check the key, but a browser or curl shows it).
func selfSigned(key *ecdsa.PrivateKey, host string) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "hostel remote API", Organization: []string{"hostel"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else if host != "" {
		tmpl.DNSNames = []string{host}
	}
	c, err := pki.SelfSigned(key, tmpl, 5*365*24*time.Hour)
	if err != nil {
		return tls.Certificate{}, err
	}
	return *c, nil
}

// listenRemoteAPI, with --api-listen, binds the remote API's listener (TLS)
// and loads its token; nothing without.
func (d *Daemon) listenRemoteAPI() error {
	if d.opts.APIListen == "" {
		return nil
	}
	host, _, _ := net.SplitHostPort(d.opts.APIListen)
	cert, tok, made, err := apiIdentity(APIDir(d.opts.Root), host)
	if err != nil {
		return fmt.Errorf("--api-listen: %w", err)
	}
	ln, err := d.listen(handover.APIListen, d.opts.APIListen)
	if err != nil {
		return fmt.Errorf("--api-listen: %w", err)
	}
	d.remoteLn = tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		NextProtos: []string{"http/1.1"}})
	d.remoteToken = tok
	if made {
		d.logf("remote API: made a new token in %s (the clients' HOSTEL_TOKEN)", APITokenPath(d.opts.Root))
	}
	return nil
}

// RemoteAPIAddr is the remote API's bound address; "" without.
func (d *Daemon) RemoteAPIAddr() string {
	if d.remoteLn == nil {
		return ""
	}
	return d.remoteLn.Addr().String()
}

// dashboardSampleEvery is how often the dashboard served with the remote
// API scrapes the daemon's metrics for its rates, from its first login.
const dashboardSampleEvery = 10 * time.Second

// serveRemoteAPI serves h on the remote API's listener to the requests
// that carry the token, and the dashboard to the sessions opened with it.
// Refused ones are counted, and logged at most once every
// refusalLogEvery, with where the latest came from; never what it sent.
func (d *Daemon) serveRemoteAPI(h http.Handler) {
	if d.remoteLn == nil {
		return
	}
	var ref refusals
	refused := func(r *http.Request) { ref.note(d.logf, r.RemoteAddr, time.Now()) }
	d.dashboard = dashboard.New(api.NewClient(SocketPath(d.opts.Root)), dashboard.Options{
		Token: d.remoteToken.String(), Refused: refused, SampleEvery: dashboardSampleEvery})
	mux := http.NewServeMux()
	mux.Handle("/v1/", api.RequireToken(d.remoteToken, h, refused))
	mux.Handle("/", d.dashboard)
	srv := drain.New(&http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(logfWriter(d.logf), "remote API: ", 0),
	})
	// The dashboard's streams (logs, events) end with the server rather
	// than hold its stop.
	srv.OnStop(d.dashboard.Close)
	d.servers = append(d.servers, srv)
	d.wg.Go(func() {
		if err := srv.Serve(d.remoteLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logf("serve %s: %v", d.remoteLn.Addr(), err)
		}
	})
	d.logf("remote API on https://%s, its dashboard at /login?token=TOKEN (token in %s)", d.remoteLn.Addr(), APITokenPath(d.opts.Root))
}

// refusalLogEvery bounds how often refused requests are logged: a client
// guessing tokens fills no disk.
const refusalLogEvery = 10 * time.Second

// refusals counts the remote API's refused requests.
type refusals struct {
	mu     sync.Mutex
	total  uint64
	logged uint64
	last   time.Time
}

func (r *refusals) note(logf func(string, ...any), from string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total++
	if !r.last.IsZero() && now.Sub(r.last) < refusalLogEvery {
		return
	}
	logf("remote API: refused %d request(s) without the token (%d in all), the latest from %s", r.total-r.logged, r.total, from)
	r.logged, r.last = r.total, now
}
