package etcd_test

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"hostel/internal/store/etcd"
	"hostel/internal/store/etcd/etcdtest"
)

// certs writes a CA, a server certificate for 127.0.0.1 and a client
// certificate it signs, as PEM files in dir, and returns their paths.
func certs(t *testing.T, dir, name string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	c := etcdtest.NewCA(t, dir, name+"-ca")
	serverCert, serverKey = c.Leaf(t, "server", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, etcdtest.Loopback)
	clientCert, clientKey = c.Leaf(t, "client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, etcdtest.Loopback)
	return c.CertFile, serverCert, serverKey, clientCert, clientKey
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
