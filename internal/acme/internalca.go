package acme

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"hostel/internal/pki"
	"hostel/internal/store"
)

// Lifetimes of the internal CA and of the leaves it signs. Leaves are short
// because they are minted on demand and never written to disk.
const (
	internalRootLifetime = 10 * 365 * 24 * time.Hour
	internalLeafLifetime = 7 * 24 * time.Hour
	// internalLeafRenew is how long before its end a cached leaf is replaced.
	internalLeafRenew = 24 * time.Hour
	// internalLeafCacheMax bounds the leaves kept in memory; past it the
	// cache starts over, which only costs a signature per name.
	internalLeafCacheMax = 4096
)

// internalCA is the private CA that signs certificates for the immutable
// SERVICE-VERSION.ZONE names, which no public CA would issue. Its root and
// key are the deployment's, in the certificate storage (the key sealed);
// users who want those names without warnings trust the root (`hostel
// status --json` prints it as internal_ca).
type internalCA struct {
	ca      *pki.CA
	certPEM []byte

	mu     sync.Mutex
	leaves map[string]*tls.Certificate
}

// Keys of the internal CA in the certificate storage.
const (
	internalCACert = "internal/ca.crt"
	internalCAKey  = "internal/ca.key"
)

// loadOrCreateCA reads the internal CA from s, or makes it there: from the
// files an older daemon kept in dir (ca.crt, ca.key), else anew. Every
// daemon of a deployment signs with the one CA: of daemons that make one
// at once, the first to store it wins and the others read it back. Files
// left in dir go once the store holds a CA.
func loadOrCreateCA(ctx context.Context, s *storage, dir string, logf func(string, ...any)) (*internalCA, error) {
	for {
		certPEM, cerr := s.Load(ctx, internalCACert)
		keyPEM, kerr := s.Load(ctx, internalCAKey)
		switch {
		case cerr == nil && kerr == nil:
			ca, err := parseCA(certPEM, keyPEM)
			if err != nil {
				return nil, err
			}
			if old, err := os.ReadFile(filepath.Join(dir, "ca.crt")); err == nil && !bytes.Equal(old, certPEM) {
				logf("certificates: the deployment has an internal CA already; the one in %s is replaced by it (trust the root hostel status --json prints)", dir)
			}
			return ca, os.RemoveAll(dir)
		case errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist):
		case cerr != nil && !errors.Is(cerr, fs.ErrNotExist):
			return nil, cerr
		case kerr != nil && !errors.Is(kerr, fs.ErrNotExist):
			return nil, kerr
		default:
			return nil, fmt.Errorf("the store holds half of the internal CA (%s: %v, %s: %v)", internalCACert, cerr, internalCAKey, kerr)
		}
		certPEM, keyPEM, err := oldOrNewCA(dir)
		if err != nil {
			return nil, err
		}
		err = s.storeNew(ctx, map[string][]byte{internalCACert: certPEM, internalCAKey: keyPEM})
		clear(keyPEM)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
		// Read back what the store kept: this one, or another daemon's.
	}
}

// oldOrNewCA returns the internal CA an older daemon kept in dir, or a new
// one.
func oldOrNewCA(dir string) (certPEM, keyPEM []byte, err error) {
	certPEM, cerr := os.ReadFile(filepath.Join(dir, "ca.crt"))
	keyPEM, kerr := os.ReadFile(filepath.Join(dir, "ca.key"))
	if cerr == nil && kerr == nil {
		if _, err := parseCA(certPEM, keyPEM); err == nil {
			return certPEM, keyPEM, nil
		}
	}
	ca, err := pki.NewCA("hostel internal CA", internalRootLifetime)
	if err != nil {
		return nil, nil, fmt.Errorf("internal CA: %w", err)
	}
	return ca.PEM()
}

func parseCA(certPEM, keyPEM []byte) (*internalCA, error) {
	ca, err := pki.ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("internal CA (ca.crt, ca.key): %w", err)
	}
	return &internalCA{ca: ca, certPEM: certPEM, leaves: map[string]*tls.Certificate{}}, nil
}

// leaf returns a certificate for name, minting one if none is cached or the
// cached one nears its end.
func (ca *internalCA) leaf(name string) (*tls.Certificate, error) {
	now := time.Now()
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if c := ca.leaves[name]; c != nil && now.Add(internalLeafRenew).Before(c.Leaf.NotAfter) {
		return c, nil
	}
	c, err := ca.ca.Leaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    []string{name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, internalLeafLifetime)
	if err != nil {
		return nil, err
	}
	if len(ca.leaves) >= internalLeafCacheMax {
		ca.leaves = map[string]*tls.Certificate{}
	}
	ca.leaves[name] = c
	return c, nil
}
