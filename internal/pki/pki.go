// Package pki is the certificate authorities hostel makes for itself — the
// internal zone's, which signs the certificates of the immutable names, and
// a cluster's, which signs its nodes' — and the leaf certificates they
// sign: ECDSA P-256 keys, a CA kept as PEM (wherever its owner keeps it),
// leaves made in memory and never written.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"time"
)

// CA is a certificate authority: its certificate and its key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// backdate is how long before now a certificate is valid from: clocks of
// machines differ.
const backdate = time.Hour

// NewCA makes a CA named name, valid for lifetime, that signs leaves only
// (no intermediate CA).
func NewCA(name string, lifetime time.Duration) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"hostel"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// ParseCA reads a CA kept as PEM (PEM's output).
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil {
		return nil, errors.New("its certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// PEM returns the CA's certificate and key as PEM.
func (ca *CA) PEM() (certPEM, keyPEM []byte, err error) {
	keyPEM, err = KeyPEM(ca.Key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), keyPEM, nil
}

// NewKey makes a key: ECDSA on P-256, as every certificate here has.
func NewKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// KeyPEM encodes key as PEM (SEC 1, "EC PRIVATE KEY").
func KeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// ParseKey reads a key KeyPEM encoded.
func ParseKey(keyPEM []byte) (*ecdsa.PrivateKey, error) {
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("its key is not PEM")
	}
	return x509.ParseECPrivateKey(kb.Bytes)
}

// SelfSigned makes a certificate for key signed by itself, from tmpl (its
// subject, names and usages; serial and validity, lifetime from now, are
// set here): for a listener whose clients check the key itself (a pin),
// not a chain.
func SelfSigned(key *ecdsa.PrivateKey, tmpl *x509.Certificate, lifetime time.Duration) (*tls.Certificate, error) {
	now := time.Now()
	t := *tmpl
	t.SerialNumber, t.NotBefore, t.NotAfter = serial(), now.Add(-backdate), now.Add(lifetime)
	der, err := x509.CreateCertificate(rand.Reader, &t, &t, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Leaf signs a certificate for a new key: tmpl says its subject, names and
// usages; its serial number and validity (lifetime from now) are set
// here. The result carries the chain up to the CA and its parsed leaf.
func (ca *CA) Leaf(tmpl *x509.Certificate, lifetime time.Duration) (*tls.Certificate, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	t := *tmpl
	t.SerialNumber, t.NotBefore, t.NotAfter = serial(), now.Add(-backdate), now.Add(lifetime)
	der, err := x509.CreateCertificate(rand.Reader, &t, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// serial is a random serial number of 127 bits, as RFC 5280 asks (positive,
// at most 20 octets, unpredictable).
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}
