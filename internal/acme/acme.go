// Package acme gives hostel's public listeners their certificates:
//
//   - ACME certificates (through certmagic) for every public name the
//     router's table serves over HTTPS (Follow: the table decides, this
//     package only follows it), solved by HTTP-01 on the --http listener
//     and TLS-ALPN-01 on the --https one, kept in the store (storage.go)
//     that every daemon of the deployment shares, renewed in the
//     background;
//   - certificates from a private CA, the deployment's, kept in the store
//     too, for the immutable SERVICE-VERSION.ZONE names, minted on demand;
//   - an HTTP handler in front of the router that answers ACME HTTP-01
//     challenges — a protocol endpoint, not a route — and passes
//     everything else on.
//
// What TLS changes about routing — redirects to HTTPS, HSTS — is the
// router's decision (internal/router's Table.TLS), which asks Has whether
// a certificate is there. A failure to get a certificate never takes a
// service down: the host keeps being served on HTTP, the failure shows in
// Status, and certmagic retries with backoff.
package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"hostel/internal/keyring"
	"hostel/internal/router"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// Options configure a Manager.
type Options struct {
	// Store keeps the certificates, their keys (sealed with Keys), the
	// ACME account, challenge tokens and the internal CA, shared with
	// every daemon of the deployment.
	Store store.Store
	// Keys seals private keys to the deployment's machines and opens
	// them with this one's.
	Keys *keyring.Keyring
	// Lease is the daemon's lease, which the locks it holds while it
	// orders a certificate are bound to: they end with the daemon.
	Lease func(context.Context) (store.Lease, error)
	// Owner names this daemon in its locks, for people.
	Owner string
	// Root is the daemon's root: what an older daemon kept under
	// Root/certs (acme, internal) moves into the store.
	Root string
	// HTTPAddr and HTTPSAddr are the bound public listeners
	// ("127.0.0.1:8080"), on which challenges are solved.
	HTTPAddr, HTTPSAddr string
	// Logf receives certificate events and errors; nil discards them.
	Logf func(format string, args ...any)

	// RenewCheckInterval is how often certificates are checked for
	// renewal; zero means certmagic's default (10 minutes).
	RenewCheckInterval time.Duration
	// RenewalWindowRatio is the fraction of a certificate's lifetime left
	// at which it is renewed; zero means certmagic's default (1/3).
	RenewalWindowRatio float64
	// DisableTLSALPN solves only HTTP-01 challenges.
	DisableTLSALPN bool
}

// State of a host's certificate.
const (
	StateValid   = "valid"   // a certificate that has not expired is served
	StateFailing = "failing" // none is, and the last attempt failed
	StatePending = "pending" // none is yet; the first attempt runs
	StateNone    = "none"    // none is asked for: the spec has no acme block
)

// CertStatus is the certificate of one public host.
type CertStatus struct {
	// Host is the domain or redirect host.
	Host string
	// Service is the service the host belongs to.
	Service string
	// State is one of the State constants.
	State string
	// NotAfter is when the served certificate expires; zero if none is.
	NotAfter time.Time
	// Error is the last failure to obtain or renew; "" if none since the
	// last success.
	Error string
}

// String is the status line users see: "valid until …", "failing: …".
func (c CertStatus) String() string {
	switch c.State {
	case StateValid:
		s := "valid until " + c.NotAfter.UTC().Format(time.RFC3339)
		if c.Error != "" {
			s += "; renewal failing: " + c.Error
		}
		return s
	case StateFailing:
		return "failing: " + c.Error
	case StateNone:
		return "none: the spec has no acme block"
	}
	return "pending"
}

// Hosts are the names certificates are kept for, as the router's table
// has them, and where they come from.
type Hosts struct {
	// ACME is production's acme block: the CA and account of public
	// names' certificates; nil means none is ordered.
	ACME *spec.ACME
	// Zone is the zone of immutable names (SERVICE-VERSION.ZONE), whose
	// certificates the internal CA mints; "" means spec.DefaultZone.
	Zone string
	// Public are the public host names the router serves over HTTPS
	// (router.Table.Certificates), each with the service that answers it.
	Public map[string]string
}

// hosts is what Follow was last given, names normalized; never mutated
// once stored.
type hosts struct {
	zone   string
	public map[string]string // host → service
}

type failure struct {
	err  string
	when time.Time
}

// acmeSettings identify a certmagic config: a change of any of them makes
// a new one.
type acmeSettings struct{ email, ca, caRoot string }

// Manager keeps the certificates of the names the router serves over
// HTTPS (Follow). Its methods are safe for concurrent use.
type Manager struct {
	opts    Options
	logf    func(string, ...any)
	storage *storage
	cache   *certmagic.Cache
	zlog    *zap.Logger

	// caMu guards ca, the deployment's internal CA, loaded from the store
	// at New or, when it could not be opened then (sealed before this
	// machine joined), at its first use after a daemon sealed it to this
	// one: caErr and caTried say why not and when it was last tried.
	caMu    sync.Mutex
	ca      *internalCA
	caErr   error
	caTried time.Time

	// hosts are the names Follow was last given: what TLS handshakes,
	// challenges and Status are answered for.
	hosts atomic.Pointer[hosts]

	mu       sync.Mutex
	settings *acmeSettings     // nil: no acme block
	cfg      *certmagic.Config // nil when settings is nil
	issuer   *certmagic.ACMEIssuer
	cfgCtx   context.Context    // ends when cfg is replaced or the Manager closes
	cancel   context.CancelFunc // ends cfgCtx
	managed  map[string]bool    // hosts handed to cfg
	failures map[string]failure
	setupErr error // the acme block could not be used
	closed   bool
}

// New moves what an older daemon kept under ROOT/certs into the store,
// loads or creates the internal CA and starts certificate maintenance.
// Call Follow with the hosts of each table the router swaps in, and Close
// at the end.
func New(ctx context.Context, opts Options) (*Manager, error) {
	if opts.Store == nil || opts.Keys == nil || opts.Lease == nil {
		return nil, errors.New("acme: Options.Store, Keys and Lease are required")
	}
	m := &Manager{opts: opts, logf: opts.Logf, managed: map[string]bool{}, failures: map[string]failure{},
		storage: &storage{st: opts.Store, keys: opts.Keys, lease: opts.Lease, owner: opts.Owner}}
	if m.logf == nil {
		m.logf = func(string, ...any) {}
	}
	dir := filepath.Join(opts.Root, "certs")
	if err := m.storage.migrate(ctx, filepath.Join(dir, "acme"), m.logf); err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	m.caTried = time.Now()
	if m.ca, m.caErr = loadOrCreateCA(ctx, m.storage, filepath.Join(dir, "internal"), m.logf); errors.Is(m.caErr, secrets.ErrNotRecipient) {
		m.logf("certificates: the internal CA cannot be used yet: %v", m.caErr)
	} else if m.caErr != nil {
		return nil, fmt.Errorf("internal CA: %w", m.caErr)
	}
	// certmagic logs through zap; its warnings and errors go to the
	// daemon's log, its chatter does not.
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "" // the daemon's log stamps its lines
	m.zlog = zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc),
		zapcore.AddSync(logfWriter(m.logf)), zap.WarnLevel))
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) {
			m.mu.Lock()
			defer m.mu.Unlock()
			if m.cfg == nil {
				return nil, errors.New("no acme block in the current spec")
			}
			return m.cfg, nil
		},
		RenewCheckInterval: opts.RenewCheckInterval,
		Logger:             m.zlog,
	})
	m.hosts.Store(&hosts{zone: spec.DefaultZone, public: map[string]string{}})
	return m, nil
}

// Close stops obtaining and renewing. Certificates stay in the store.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	if m.cancel != nil {
		m.cancel()
	}
	m.mu.Unlock()
	m.cache.Stop()
}

// Forget removes what is stored of hosts' certificates (a preview's,
// when it is removed): Follow stops renewing a host that is gone, and
// Forget leaves nothing of it in the store.
func (m *Manager) Forget(ctx context.Context, hosts []string) error {
	issuers, err := m.storage.List(ctx, certmagic.StorageKeys.CertsPrefix(""), false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var errs []error
	for _, h := range hosts {
		for _, dir := range issuers {
			key := path.Join(dir, certmagic.StorageKeys.Safe(normalizeHost(h)))
			if m.storage.Exists(ctx, key) {
				if err := m.storage.Delete(ctx, key); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// InternalCA returns the PEM of the root that signs the certificates of
// immutable version names.
func (m *Manager) InternalCA() string {
	ca, err := m.internalCA()
	if err != nil {
		return ""
	}
	return string(ca.certPEM)
}

// caRetry is how often the internal CA is read again while it cannot be
// opened.
const caRetry = time.Second

// internalCA returns the deployment's internal CA, reading it again (at
// most every caRetry) while it cannot be opened.
func (m *Manager) internalCA() (*internalCA, error) {
	m.caMu.Lock()
	defer m.caMu.Unlock()
	if m.ca != nil || time.Since(m.caTried) < caRetry {
		return m.ca, m.caErr
	}
	m.caTried = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), caRetry)
	defer cancel()
	m.ca, m.caErr = loadOrCreateCA(ctx, m.storage, filepath.Join(m.opts.Root, "certs", "internal"), m.logf)
	if m.caErr != nil {
		m.caErr = fmt.Errorf("internal CA: %w", m.caErr)
	}
	return m.ca, m.caErr
}

// Follow makes h's public names the ones certificates are kept for: it
// starts obtaining certificates for names that have none and stops
// renewing names h no longer has. It returns at once; Await waits for the
// certificates.
func (m *Manager) Follow(h Hosts) {
	p := &hosts{zone: normalizeHost(h.Zone), public: make(map[string]string, len(h.Public))}
	if p.zone == "" {
		p.zone = spec.DefaultZone
	}
	for host, service := range h.Public {
		p.public[normalizeHost(host)] = service
	}
	var settings *acmeSettings
	if a := h.ACME; a != nil {
		settings = &acmeSettings{email: a.Email, ca: a.CA, caRoot: a.CARoot}
	}
	m.hosts.Store(p)

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	if !sameSettings(settings, m.settings) {
		m.resetLocked(settings)
	}
	var gone []certmagic.SubjectIssuer
	for h := range m.managed {
		if _, want := p.public[h]; !want {
			delete(m.managed, h)
			delete(m.failures, h)
			gone = append(gone, certmagic.SubjectIssuer{Subject: h})
		}
	}
	if len(gone) > 0 {
		m.cache.RemoveManaged(gone)
	}
	if m.cfg == nil {
		return
	}
	var add []string
	for h := range p.public {
		if !m.managed[h] {
			m.managed[h] = true
			delete(m.failures, h) // of an earlier try
			add = append(add, h)
		}
	}
	if len(add) == 0 {
		return
	}
	sort.Strings(add)
	m.logf("certificates: managing %s", strings.Join(add, ", "))
	// ManageAsync loads what storage has (no request to the CA for a
	// certificate that is still valid) and obtains the rest in the
	// background, retrying with backoff.
	if err := m.cfg.ManageAsync(m.cfgCtx, add); err != nil {
		for _, h := range add {
			m.failures[h] = failure{err: err.Error(), when: time.Now()}
			// Not managed: the next Follow tries again (a key sealed
			// before this machine joined may be sealed to it by then).
			delete(m.managed, h)
		}
	}
}

// resetLocked replaces the certmagic config after the acme block changed.
func (m *Manager) resetLocked(s *acmeSettings) {
	if m.cancel != nil {
		m.cancel()
	}
	m.settings, m.cfg, m.issuer, m.cancel, m.setupErr = s, nil, nil, nil, nil
	m.managed = map[string]bool{}
	m.failures = map[string]failure{}
	if s == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := certmagic.New(m.cache, certmagic.Config{
		Storage:            m.storage,
		RenewalWindowRatio: m.opts.RenewalWindowRatio,
		OnEvent:            m.onEvent,
		Logger:             m.zlog,
	})
	iss := certmagic.ACMEIssuer{
		CA:                      s.ca,
		Email:                   s.email,
		Agreed:                  true,
		DisableTLSALPNChallenge: m.opts.DisableTLSALPN,
		Logger:                  m.zlog,
	}
	if iss.CA == "" {
		iss.CA = certmagic.LetsEncryptProductionCA
	}
	// Point certmagic's challenge servers at hostel's own listeners: it
	// finds the ports taken and leaves solving to the handlers below.
	if host, port, err := net.SplitHostPort(m.opts.HTTPAddr); err == nil {
		iss.ListenHost = host
		fmt.Sscan(port, &iss.AltHTTPPort)
	}
	if _, port, err := net.SplitHostPort(m.opts.HTTPSAddr); err == nil {
		fmt.Sscan(port, &iss.AltTLSALPNPort)
	}
	if s.caRoot != "" {
		pool, err := rootPool(s.caRoot)
		if err != nil {
			cancel()
			m.setupErr = fmt.Errorf("acme.ca_root: %w", err)
			m.logf("certificates: %v", m.setupErr)
			return
		}
		iss.TrustedRoots = pool
	}
	issuer := certmagic.NewACMEIssuer(cfg, iss)
	cfg.Issuers = []certmagic.Issuer{issuer}
	m.cfg, m.issuer, m.cancel, m.cfgCtx = cfg, issuer, cancel, ctx
}

// rootPool is the system roots plus caRoot: PEM text, or the path of a
// PEM file.
func rootPool(caRoot string) (*x509.CertPool, error) {
	pemData := []byte(caRoot)
	if !strings.Contains(caRoot, "-----BEGIN") {
		b, err := os.ReadFile(caRoot)
		if err != nil {
			return nil, err
		}
		pemData = b
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, errors.New("no PEM certificate in it")
	}
	return pool, nil
}

func sameSettings(a, b *acmeSettings) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// onEvent records certmagic's outcomes per host for Status and the log.
func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	id, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	what := "obtained"
	if renewal {
		what = "renewed"
	}
	switch event {
	case "cert_obtained":
		m.mu.Lock()
		delete(m.failures, id)
		m.mu.Unlock()
		m.logf("certificates: %s: %s", id, what)
	case "cert_failed":
		msg := "unknown error"
		if err, ok := data["error"].(error); ok {
			msg = oneLine(err.Error())
		}
		m.mu.Lock()
		m.failures[id] = failure{err: msg, when: time.Now()}
		m.mu.Unlock()
		m.logf("certificates: %s: not %s, will retry: %s", id, what, msg)
	}
	return nil
}

// Status returns the certificate state of every public host Follow was
// last given, sorted by host.
func (m *Manager) Status() []CertStatus {
	p := m.hosts.Load()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []CertStatus{}
	for h, service := range p.public {
		cs := CertStatus{Host: h, Service: service, State: StatePending}
		if f, ok := m.failures[h]; ok {
			cs.Error = f.err
		}
		switch {
		case m.settings == nil:
			cs.State = StateNone
		case m.setupErr != nil:
			cs.State, cs.Error = StateFailing, m.setupErr.Error()
		}
		if na, ok := m.notAfter(h); ok {
			cs.State, cs.NotAfter = StateValid, na
		} else if cs.Error != "" && cs.State == StatePending {
			cs.State = StateFailing
		}
		out = append(out, cs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}

var _ router.Certs = (*Manager)(nil)

// Has is router.Certs': whether a certificate that has not expired is
// there to serve for host, which the router then redirects from HTTP to
// HTTPS.
func (m *Manager) Has(host string) bool {
	_, ok := m.notAfter(normalizeHost(host))
	return ok
}

// notAfter is the end of the longest-lived unexpired certificate in the
// cache for host.
func (m *Manager) notAfter(host string) (time.Time, bool) {
	var best time.Time
	now := time.Now()
	for _, c := range m.cache.AllMatchingCertificates(host) {
		if c.Leaf != nil && c.Leaf.NotAfter.After(now) && c.Leaf.NotAfter.After(best) {
			best = c.Leaf.NotAfter
		}
	}
	return best, !best.IsZero()
}

// Await waits until every host Status lists has a certificate or has
// failed, or until timeout, and reports one line per host through report.
// It never fails: a host without a certificate keeps being served on HTTP.
func (m *Manager) Await(ctx context.Context, timeout time.Duration, report func(format string, args ...any)) {
	deadline := time.Now().Add(timeout)
	for {
		var waiting bool
		for _, cs := range m.Status() {
			if cs.State == StatePending {
				waiting = true
			}
		}
		if !waiting || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, cs := range m.Status() {
		switch cs.State {
		case StateValid:
			report("cert %s: %s", cs.Host, cs)
		case StatePending:
			report("cert %s: not ready after %s; serving HTTP meanwhile, still trying", cs.Host, timeout)
		default:
			report("cert %s: %s; serving HTTP meanwhile, will retry", cs.Host, cs)
		}
	}
}

// TLSConfig is the configuration of the HTTPS listener: TLS 1.2 and up,
// HTTP/2, TLS-ALPN-01 challenges, ACME certificates for public hosts and
// internal ones for immutable names.
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
		GetCertificate: m.getCertificate,
	}
}

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := normalizeHost(hello.ServerName)
	if name == "" {
		return nil, errors.New("hostel: no server name (SNI) in the TLS handshake")
	}
	p := m.hosts.Load()
	if _, _, ok := spec.ParseVersionHost(name, p.zone); ok {
		ca, err := m.internalCA()
		if err != nil {
			return nil, fmt.Errorf("hostel: %w", err)
		}
		return ca.leaf(name)
	}
	if _, ok := p.public[name]; !ok {
		return nil, fmt.Errorf("hostel: no certificate for %q", name)
	}
	m.mu.Lock()
	cfg := m.cfg
	m.mu.Unlock()
	if cfg == nil {
		return nil, fmt.Errorf("hostel: no certificate for %q: the spec has no acme block", name)
	}
	// certmagic answers TLS-ALPN-01 challenges and serves what its cache
	// holds; with OnDemand unset it never issues during a handshake.
	return cfg.GetCertificate(hello)
}

// HTTPHandler wraps the router on the HTTP listener: it answers ACME
// HTTP-01 challenges for the public names Follow was given and passes
// everything else to next — a challenge for any other name too, so that a
// service may run its own ACME client (the router never redirects a
// challenge to HTTPS).
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if certmagic.LooksLikeHTTPChallenge(r) {
			m.mu.Lock()
			iss := m.issuer
			m.mu.Unlock()
			// Only for a name of ours: another daemon of the deployment
			// may have started the challenge, so certmagic looks for its
			// token in the store, which a request for any other name
			// need not cost.
			_, ours := m.hosts.Load().public[normalizeHost(r.Host)]
			if iss != nil && ours && iss.HandleHTTPChallenge(w, r) {
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// logfWriter adapts Logf to the io.Writer zap needs.
type logfWriter func(format string, args ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	f("%s", strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// normalizeHost lowercases host and strips a port and a trailing dot, as
// the router does.
func normalizeHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
