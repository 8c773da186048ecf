package daemon

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hostel/internal/api"
)

func TestCheckAPIListen(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"", true}, {"127.0.0.1:0", true}, {":7443", true}, {"[::1]:7443", true}, {"node-1.example.org:7443", true},
		{"https://0.0.0.0:7443", false}, {"127.0.0.1", false}, {"127.0.0.1:65536", false}, {"127.0.0.1:x", false},
		{"bad host:1", false}, {"a..b:1", false},
	} {
		if err := CheckAPIListen(tt.addr); (err == nil) != tt.ok {
			t.Errorf("CheckAPIListen(%q) = %v, want ok %v", tt.addr, err, tt.ok)
		}
	}
}

// The key and token are made once and kept; a token for another key (the
// key replaced) is made anew; the certificate served is the pinned key's.
func TestAPIIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "api")
	cert, tok, made, err := apiIdentity(dir, "127.0.0.1")
	if err != nil || !made {
		t.Fatalf("first apiIdentity: made %v, %v; want a new token", made, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if api.KeyPin(leaf.RawSubjectPublicKeyInfo) != tok.Pin {
		t.Errorf("the certificate's key is not the token's pin")
	}
	b, _ := os.ReadFile(filepath.Join(dir, "token"))
	if strings.TrimSpace(string(b)) != tok.String() {
		t.Errorf("ROOT/api/token holds %q, want the token", b)
	}
	_, tok2, made, err := apiIdentity(dir, "127.0.0.1")
	if err != nil || made || tok2 != tok {
		t.Errorf("second apiIdentity: made %v, same token %v, %v; want the kept one", made, tok2 == tok, err)
	}
	if err := os.Remove(filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	_, tok3, made, err := apiIdentity(dir, "127.0.0.1")
	if err != nil || !made || tok3.Pin == tok.Pin || tok3.Secret == tok.Secret {
		t.Errorf("after the key was replaced: made %v, %v; want a new token for the new key", made, err)
	}
}

// Refused requests are logged at most once per refusalLogEvery, with how
// many there were since.
func TestRefusalsLog(t *testing.T) {
	var lines []string
	logf := func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }
	var r refusals
	t0 := time.Now()
	for i := range 5 {
		r.note(logf, "10.0.0.1:1", t0.Add(time.Duration(i)*time.Second))
	}
	r.note(logf, "10.0.0.2:1", t0.Add(refusalLogEvery+time.Second))
	if len(lines) != 2 || !strings.Contains(lines[0], "refused 1 request(s)") ||
		!strings.Contains(lines[1], "refused 5 request(s) without the token (6 in all), the latest from 10.0.0.2:1") {
		t.Errorf("logged %q", lines)
	}
}
