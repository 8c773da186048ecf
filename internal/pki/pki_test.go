package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"
	"time"
)

func TestCA(t *testing.T) {
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseCA(certPEM, keyPEM)
	if err != nil || !back.Cert.Equal(ca.Cert) || !back.Key.Equal(ca.Key) {
		t.Fatalf("ParseCA(PEM()) = %v, %v; want the same CA", back, err)
	}
	for _, bad := range [][2][]byte{{nil, keyPEM}, {certPEM, nil}, {keyPEM, certPEM}} {
		if _, err := ParseCA(bad[0], bad[1]); err == nil {
			t.Errorf("ParseCA of %.20q, %.20q: no error", bad[0], bad[1])
		}
	}

	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "a.example"}, DNSNames: []string{"a.example"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	a, err := back.Leaf(tmpl, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	b, err := back.Leaf(tmpl, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := a.Leaf.Verify(x509.VerifyOptions{DNSName: "a.example", Roots: roots}); err != nil {
		t.Errorf("a leaf does not verify against its CA: %v", err)
	}
	if a.Leaf.SerialNumber.Cmp(b.Leaf.SerialNumber) == 0 {
		t.Error("two leaves share a serial number")
	}
	if d := a.Leaf.NotAfter.Sub(a.Leaf.NotBefore); d != 10*time.Minute+backdate {
		t.Errorf("a leaf of 10m is valid for %s", d)
	}
	if tmpl.SerialNumber != nil {
		t.Error("Leaf changed the template it was given")
	}
	other, _ := NewCA("other", time.Hour)
	others := x509.NewCertPool()
	others.AddCert(other.Cert)
	if _, err := a.Leaf.Verify(x509.VerifyOptions{DNSName: "a.example", Roots: others}); err == nil {
		t.Error("a leaf verifies against another CA")
	}
}
