package etcd_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"hostel/internal/store/etcd"
)

// certs writes a CA, a server certificate for 127.0.0.1 and a client
// certificate it signs, as PEM files in dir, and returns their paths.
func certs(t *testing.T, dir, name string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(file, typ string, der []byte) string {
		path := filepath.Join(dir, name+"-"+file)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	leaf := func(serial int64, usage x509.ExtKeyUsage, file string) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: file},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		return write(file+".pem", "CERTIFICATE", der), write(file+"-key.pem", "EC PRIVATE KEY", keyDER)
	}
	ca = write("ca.pem", "CERTIFICATE", caDER)
	serverCert, serverKey = leaf(2, x509.ExtKeyUsageServerAuth, "server")
	clientCert, clientKey = leaf(3, x509.ExtKeyUsageClientAuth, "client")
	return
}

// TestTLS: over https://, with client certificates required, the store
// connects with the certificate, key and CA named as etcd's own flags
// name them, and not without the certificate or with another CA.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, serverCert, serverKey, clientCert, clientKey := certs(t, dir, "good")
	otherCA, _, _, otherCert, otherKey := certs(t, dir, "other")

	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client := url.URL{Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls = nil
	cfg.AdvertisePeerUrls = []url.URL{{Scheme: "unix", Path: filepath.Join(dir, "peer.sock")}}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = serverCert, serverKey
	cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = ca, true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		t.Fatal("etcd not ready")
	}
	open := func(cert, key, ca string) error {
		tc, err := etcd.TLSConfig(cert, key, ca)
		if err != nil {
			return err
		}
		s, err := etcd.Open(t.Context(), etcd.Config{Endpoints: []string{client.String()}, TLS: tc, DialTimeout: time.Second})
		if err == nil {
			_, err = s.PutRecord(t.Context(), "k", "x", nil, 0)
			s.Close()
		}
		return err
	}
	if err := open(clientCert, clientKey, ca); err != nil {
		t.Fatalf("with the client certificate and the CA: %v", err)
	}
	for name, files := range map[string][3]string{
		"without a client certificate":          {"", "", ca},
		"with a certificate of another CA":      {otherCert, otherKey, ca},
		"trusting another CA than the server's": {clientCert, clientKey, otherCA},
	} {
		if err := open(files[0], files[1], files[2]); err == nil {
			t.Errorf("%s: connected", name)
		}
	}
	if _, err := etcd.TLSConfig(clientCert, "", ca); err == nil {
		t.Error("TLSConfig with a certificate and no key: no error")
	}
}
