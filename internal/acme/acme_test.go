package acme_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/acme"
	"hostel/internal/acme/pebbletest"
	"hostel/internal/front/fronttest"
	"hostel/internal/keyring"
	"hostel/internal/router"
	"hostel/internal/routes"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest"
	"hostel/internal/store/storetest/backends"
)

// server is hostel's public front in miniature: an HTTP and an HTTPS
// listener serving a router that asks a Manager which certificates are
// there, the Manager's challenge handler in front of it on HTTP, and
// behind it a backend that names the host and the scheme.
type server struct {
	m          *acme.Manager
	r          *router.Router
	backend    string
	st         store.Store
	http       string
	https      string
	httpsPort  int
	root       string
	logMu      sync.Mutex
	log        strings.Builder
	closeFuncs []func()
}

func (s *server) logf(format string, args ...any) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	fmt.Fprintf(&s.log, format+"\n", args...)
}

func (s *server) Log() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.log.String()
}

type listeners struct{ http, https net.Listener }

func listen(t testing.TB) listeners {
	t.Helper()
	h, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return listeners{h, hs}
}

func port(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// daemon is what a Manager needs of the daemon it runs in: a root (whose
// host key is the machine's), a handle on the deployment's store, the
// machine's keyring and a lease for its locks.
type daemon struct {
	root string
	st   store.Store
	keys *keyring.Keyring
	// lease is granted on first use and kept: the daemon's lease.
	leaseMu sync.Mutex
	lease   store.Lease
}

// newDaemon starts a daemon's worth of what a Manager needs, with a root
// of its own, on a new handle of b.
func newDaemon(t *testing.T, b storetest.Backend) *daemon {
	t.Helper()
	return onRoot(t, b, t.TempDir())
}

// onRoot is newDaemon on root: the same root again is that root's daemon
// after a restart.
func onRoot(t *testing.T, b storetest.Backend, root string) *daemon {
	t.Helper()
	hk, err := secrets.EnsureHostKey(root)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{root: root, st: b.Open(t)}
	d.keys = keyring.New(d.st, hk)
	if err := d.keys.Join(context.Background()); err != nil {
		t.Fatal(err)
	}
	// As a daemon does: what it can open, it seals to every machine that
	// joins.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.keys.Follow(ctx, t.Logf, store.KindCertKey)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

func (d *daemon) getLease(ctx context.Context) (store.Lease, error) {
	d.leaseMu.Lock()
	defer d.leaseMu.Unlock()
	if d.lease == nil {
		l, err := d.st.Grant(ctx, storetest.LeaseTTL)
		if err != nil {
			return nil, err
		}
		d.lease = l
	}
	return d.lease, nil
}

// options fills in what opts needs of d.
func (d *daemon) options(opts acme.Options) acme.Options {
	opts.Store, opts.Keys, opts.Lease, opts.Root, opts.Owner = d.st, d.keys, d.getLease, d.root, d.root
	return opts
}

// start serves ln with a new Manager in daemon d.
func start(t testing.TB, d *daemon, ln listeners, opts acme.Options) *server {
	t.Helper()
	s := &server{st: d.st, root: d.root, http: ln.http.Addr().String(), https: ln.https.Addr().String(), httpsPort: port(ln.https.Addr().String())}
	opts = d.options(opts)
	opts.HTTPAddr, opts.HTTPSAddr, opts.Logf = s.http, s.https, s.logf
	m, err := acme.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	s.m = m
	s.backend = fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s over %s", r.Host, r.Header.Get("X-Forwarded-Proto"))
	}))
	s.r = router.New(router.Options{Logf: s.logf, Certs: m, HTTPSPort: strconv.Itoa(s.httpsPort)})
	hsrv := &http.Server{Handler: m.HTTPHandler(s.r)}
	tsrv := &http.Server{Handler: s.r, TLSConfig: m.TLSConfig()}
	go hsrv.Serve(ln.http)
	go tsrv.ServeTLS(ln.https, "", "")
	stop := func() {
		hsrv.Close()
		tsrv.Close()
		s.r.Close()
		m.Close()
	}
	var once sync.Once
	s.closeFuncs = append(s.closeFuncs, func() { once.Do(stop) })
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("manager log:\n%s", s.Log())
		}
	})
	return s
}

func (s *server) Close() {
	for _, f := range s.closeFuncs {
		f()
	}
}

// deploy does what a daemon does when its router switches to g: it swaps
// in g's table, every service's version served by the backend, and
// hands the table's hosts to the Manager.
func (s *server) deploy(t testing.TB, g *spec.Generation) {
	t.Helper()
	for name := range g.Spec.Services {
		s.r.AddBackend(g.Instance(name), s.backend)
	}
	tab, h := tableOf(g)
	if err := s.r.Swap(tab); err != nil {
		t.Fatal(err)
	}
	s.m.Follow(h)
}

// tableOf is the router's table of production's generation g and the
// hosts a daemon hands its Manager for it.
func tableOf(g *spec.Generation) (router.Table, acme.Hosts) {
	tab := routes.Table(map[string]*spec.Generation{spec.DefaultEnv: g}, nil)
	return tab, acme.Hosts{ACME: g.Spec.ACME, Zone: tab.Zone, Public: tab.Certificates()}
}

// generation builds a generation whose services are given as domain lists.
func generation(acmeBlock *spec.ACME, services map[string]*spec.Service) *spec.Generation {
	vs := map[string]spec.Version{}
	for name := range services {
		vs[name] = "0123456789ab"
	}
	return &spec.Generation{Number: 1, Spec: &spec.Spec{ACME: acmeBlock, Services: services}, Versions: vs}
}

func pebbleACME(p *pebbletest.Pebble) *spec.ACME {
	return &spec.ACME{Email: "ops@example.org", CA: p.Directory, CARoot: p.ServerCA}
}

// get requests url through the server's listeners, whatever its host, with
// a client that trusts roots and follows no redirect.
func (s *server) get(t testing.TB, roots *x509.CertPool, url string) (*http.Response, string) {
	t.Helper()
	resp, body, err := s.tryGet(roots, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, body
}

func (s *server) tryGet(roots *x509.CertPool, url string) (*http.Response, string, error) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if strings.HasPrefix(url, "https://") {
			return (&net.Dialer{}).DialContext(ctx, network, s.https)
		}
		return (&net.Dialer{}).DialContext(ctx, network, s.http)
	}
	c := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: roots},
			ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := c.Get(url)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), nil
}

// peerSerial is the serial of the certificate the HTTPS listener serves
// for host, verified against roots.
func (s *server) peerSerial(t testing.TB, roots *x509.CertPool, host string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", s.https, &tls.Config{ServerName: host, RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS to %s: %v", host, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func awaitValid(t testing.TB, s *server, timeout time.Duration) []acme.CertStatus {
	t.Helper()
	var lines []string
	s.m.Await(context.Background(), timeout, func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) })
	st := s.m.Status()
	for _, cs := range st {
		if cs.State != acme.StateValid {
			t.Fatalf("%s: cert %s (await said %q)", cs.Host, cs, lines)
		}
	}
	return st
}

// TestIssueAndServe is the bar "20 of 20 issuance cycles": twenty domains
// through hostel's real HTTP-01 path against Pebble with its validation
// delays and nonce rejection on; then each is served over HTTPS with a
// certificate a client trusting Pebble's root accepts for that name, and
// HTTP redirects to it.
func TestIssueAndServe(t *testing.T) {
	t.Parallel()
	ln := listen(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(ln.http.Addr().String()), TLSPort: port(ln.https.Addr().String())})
	s := start(t, newDaemon(t, backends.Bolt(t)), ln, acme.Options{DisableTLSALPN: true})

	services := map[string]*spec.Service{}
	var domains []string
	for i := range 18 {
		d := fmt.Sprintf("app%02d.example.test", i)
		domains = append(domains, d)
		services[fmt.Sprintf("app%02d", i)] = &spec.Service{Domains: []string{d}}
	}
	no := false
	services["shop"] = &spec.Service{Domains: []string{"shop.example.test"}, Redirects: []string{"www.shop.example.test"}, HSTS: true}
	services["plain"] = &spec.Service{Domains: []string{"plain.example.test"}, TLS: &no}
	domains = append(domains, "shop.example.test", "www.shop.example.test")

	t0 := time.Now()
	s.deploy(t, generation(pebbleACME(p), services))
	st := awaitValid(t, s, 90*time.Second)
	t.Logf("%d certificates in %s", len(st), time.Since(t0).Round(time.Millisecond))
	if len(st) != 20 {
		t.Fatalf("got %d certificates, want 20 (plain has tls off): %+v", len(st), st)
	}
	if !strings.Contains(s.Log(), "certificates: app00.example.test: obtained") {
		t.Errorf("log does not say app00 was obtained:\n%s", s.Log())
	}
	hs := strconv.Itoa(s.httpsPort)

	t.Run("https", func(t *testing.T) {
		for _, d := range domains {
			if d == "www.shop.example.test" {
				continue
			}
			resp, body := s.get(t, p.Roots, "https://"+d+"/x")
			if want := "hello from " + d + " over https"; body != want || resp.Proto != "HTTP/2.0" {
				t.Errorf("https %s: got %s %q, want HTTP/2.0 %q", d, resp.Proto, body, want)
			}
			if hsts := resp.Header.Get("Strict-Transport-Security"); (d == "shop.example.test") != (hsts != "") {
				t.Errorf("https %s: Strict-Transport-Security %q", d, hsts)
			}
		}
	})
	t.Run("redirects", func(t *testing.T) {
		for _, tc := range []struct{ name, url, want string }{
			{"domain", "http://app03.example.test/a/b?q=1&r=2", "https://app03.example.test:" + hs + "/a/b?q=1&r=2"},
			{"redirect host", "http://www.shop.example.test/cart?id=7", "https://shop.example.test:" + hs + "/cart?id=7"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, _ := s.get(t, p.Roots, tc.url)
				if resp.StatusCode != 301 || resp.Header.Get("Location") != tc.want {
					t.Errorf("got %d %q, want 301 %q", resp.StatusCode, resp.Header.Get("Location"), tc.want)
				}
			})
		}
	})
	t.Run("tls false serves http only", func(t *testing.T) {
		resp, body := s.get(t, p.Roots, "http://plain.example.test/")
		if resp.StatusCode != 200 || body != "hello from plain.example.test over http" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
		if _, _, err := s.tryGet(p.Roots, "https://plain.example.test/"); err == nil {
			t.Errorf("https to a tls:false domain succeeded")
		}
	})
	t.Run("acme challenge path of an unknown token", func(t *testing.T) {
		resp, _ := s.get(t, p.Roots, "http://app01.example.test/.well-known/acme-challenge/nope")
		if resp.StatusCode == 301 {
			t.Errorf("challenge path was redirected")
		}
	})
	t.Run("a service's own acme client", func(t *testing.T) {
		// A name hostel keeps no certificate for: its challenges reach
		// the service.
		resp, body := s.get(t, p.Roots, "http://plain.example.test/.well-known/acme-challenge/tok")
		if resp.StatusCode != 200 || body != "hello from plain.example.test over http" {
			t.Errorf("got %d %q, want the service's answer", resp.StatusCode, body)
		}
	})
	t.Run("immutable names use the internal CA", func(t *testing.T) {
		internal := x509.NewCertPool()
		if !internal.AppendCertsFromPEM([]byte(s.m.InternalCA())) {
			t.Fatal("InternalCA is not PEM")
		}
		host := "app01-0123456789ab." + spec.DefaultZone
		if _, body := s.get(t, internal, "https://"+host+"/"); !strings.HasPrefix(body, "hello from "+host) {
			t.Errorf("got %q", body)
		}
		if _, _, err := s.tryGet(p.Roots, "https://"+host+"/"); err == nil {
			t.Errorf("an internal certificate verified against Pebble's root")
		}
	})
	t.Run("old TLS refused", func(t *testing.T) {
		_, err := tls.Dial("tcp", s.https, &tls.Config{ServerName: "app01.example.test", RootCAs: p.Roots, MaxVersion: tls.VersionTLS11})
		if err == nil {
			t.Errorf("TLS 1.1 handshake succeeded")
		}
	})
	t.Run("keys sealed in the store, nothing on disk", func(t *testing.T) {
		if _, err := os.Stat(filepath.Join(s.root, "certs")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ROOT/certs: %v, want none", err)
		}
		keys, err := s.st.Records(context.Background(), store.KindCertKey)
		if err != nil {
			t.Fatal(err)
		}
		// 20 certificates, the ACME account and the internal CA.
		if len(keys) != 22 {
			t.Errorf("%d private keys in the store, want 22", len(keys))
		}
		for _, r := range keys {
			if strings.Contains(string(r.Value), "PRIVATE KEY") || !strings.Contains(string(r.Value), `"age":`) {
				t.Errorf("%s is not sealed: %.60s…", r.Key, r.Value)
			}
		}
	})
}

// TestRestartKeepsCertificates: a new Manager over the same store, opened
// again, serves the certificates it finds there without asking the CA,
// which is gone.
func TestRestartKeepsCertificates(t *testing.T) {
	t.Parallel()
	backends.Each(t, testRestartKeepsCertificates)
}

func testRestartKeepsCertificates(t *testing.T, b storetest.Backend) {
	root := t.TempDir()
	ln := listen(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(ln.http.Addr().String()), TLSPort: port(ln.https.Addr().String())})
	g := generation(pebbleACME(p), map[string]*spec.Service{
		"a": {Domains: []string{"a.example.test"}},
		"b": {Domains: []string{"b.example.test"}},
	})
	s := start(t, onRoot(t, b, root), ln, acme.Options{})
	s.deploy(t, g)
	awaitValid(t, s, 60*time.Second)
	serials := map[string]string{}
	for _, h := range []string{"a.example.test", "b.example.test"} {
		serials[h] = s.peerSerial(t, p.Roots, h)
	}
	s.Close()
	// The CA is unreachable from now on: whatever the new Manager serves
	// comes from the store.
	p.Stop()
	b.Reopen(t)

	s2 := start(t, onRoot(t, b, root), listen(t), acme.Options{})
	s2.deploy(t, g)
	st := awaitValid(t, s2, 10*time.Second)
	for _, cs := range st {
		if cs.Error != "" {
			t.Errorf("%s: %s", cs.Host, cs)
		}
		if got := s2.peerSerial(t, p.Roots, cs.Host); got != serials[cs.Host] {
			t.Errorf("%s: serial %s after restart, want %s", cs.Host, got, serials[cs.Host])
		}
	}
	if strings.Contains(s2.Log(), "obtained") || strings.Contains(s2.Log(), "will retry") {
		t.Errorf("the restarted manager went to the CA:\n%s", s2.Log())
	}
}

// TestRenewal: with certificates that live 30 s and a renewal window of
// most of that, the served certificate is replaced without a restart.
func TestRenewal(t *testing.T) {
	t.Parallel()
	ln := listen(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(ln.http.Addr().String()), TLSPort: port(ln.https.Addr().String()),
		Validity: 30 * time.Second, NoSleep: true})
	s := start(t, newDaemon(t, backends.Bolt(t)), ln, acme.Options{RenewCheckInterval: 500 * time.Millisecond, RenewalWindowRatio: 0.8})
	s.deploy(t, generation(pebbleACME(p), map[string]*spec.Service{"a": {Domains: []string{"renew.example.test"}}}))
	awaitValid(t, s, 30*time.Second)
	first := s.peerSerial(t, p.Roots, "renew.example.test")
	deadline := time.Now().Add(25 * time.Second)
	for s.peerSerial(t, p.Roots, "renew.example.test") == first {
		if time.Now().After(deadline) {
			t.Fatalf("certificate %s not renewed within 25s", first)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(s.Log(), "renew.example.test: renewed") {
		t.Errorf("log does not report the renewal:\n%s", s.Log())
	}
}

// TestCAUnreachable: without a CA, the domain keeps being served on HTTP,
// nothing redirects, and the status says why.
func TestCAUnreachable(t *testing.T) {
	t.Parallel()
	s := start(t, newDaemon(t, backends.Bolt(t)), listen(t), acme.Options{})
	dead := fmt.Sprintf("https://127.0.0.1:%d/dir", pebbletest.FreePort(t))
	s.deploy(t, generation(&spec.ACME{CA: dead}, map[string]*spec.Service{"a": {Domains: []string{"down.example.test"}}}))
	var lines []string
	s.m.Await(context.Background(), 20*time.Second, func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) })
	st := s.m.Status()
	if len(st) != 1 || st[0].State != acme.StateFailing || !strings.Contains(st[0].String(), "failing: ") {
		t.Fatalf("status %+v, want failing", st)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "serving HTTP meanwhile") {
		t.Errorf("await reported %q", lines)
	}
	resp, body := s.get(t, nil, "http://down.example.test/p")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "hello from down.example.test") {
		t.Errorf("http: got %d %q, want the service", resp.StatusCode, body)
	}
}

// TestNoACMEBlock: a spec without acme asks no CA; its domains stay on HTTP.
func TestNoACMEBlock(t *testing.T) {
	t.Parallel()
	s := start(t, newDaemon(t, backends.Bolt(t)), listen(t), acme.Options{})
	s.deploy(t, generation(nil, map[string]*spec.Service{"a": {Domains: []string{"a.example.test"}}}))
	st := s.m.Status()
	if len(st) != 1 || st[0].State != acme.StateNone {
		t.Fatalf("status %+v, want none", st)
	}
	resp, _ := s.get(t, nil, "http://a.example.test/")
	if resp.StatusCode != 200 {
		t.Errorf("http: got %d, want 200", resp.StatusCode)
	}
	if _, _, err := s.tryGet(nil, "https://a.example.test/"); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("https: got %v, want a handshake failure", err)
	}
}
