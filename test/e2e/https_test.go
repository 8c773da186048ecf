package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"hostel/internal/acme/pebbletest"
)

// httpsStatus is the HTTPS part of `hostel status --json`.
type httpsStatus struct {
	Listen       struct{ HTTP, HTTPS string }
	InternalCA   string `json:"internal_ca"`
	Certificates []struct {
		Host, Service, State, Status, Error string
	}
	Services []ServiceStatus
}

func (e *Env) httpsStatus() httpsStatus {
	e.t.Helper()
	var st httpsStatus
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	return st
}

// certOf returns the status line of host's certificate.
func (st httpsStatus) certOf(host string) string {
	for _, c := range st.Certificates {
		if c.Host == host {
			return c.State + ": " + c.Status
		}
	}
	return "absent"
}

// GetTLS requests https://host/path on the daemon's HTTPS listener with a
// client that trusts roots and checks the certificate's chain and name.
func (e *Env) GetTLS(roots *x509.CertPool, host, path string) (*http.Response, string, error) {
	c := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, e.HTTPS)
			},
			TLSClientConfig:   &tls.Config{RootCAs: roots},
			ForceAttemptHTTP2: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	// The port in the URL is what a browser sends in Host.
	_, port, _ := net.SplitHostPort(e.HTTPS)
	resp, err := c.Get("https://" + net.JoinHostPort(host, port) + path)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), nil
}

// deployOutput runs a deploy that must succeed and returns what it printed
// on stdout and stderr (progress).
func (e *Env) deployOutput() string {
	e.t.Helper()
	out, errOut, code := e.Run("deploy", "--no-confirm")
	if code != 0 {
		e.t.Fatalf("deploy: exit %d\n%s%s", code, out, errOut)
	}
	return out + errOut
}

func (e *Env) serial(roots *x509.CertPool, host string) string {
	e.t.Helper()
	conn, err := tls.Dial("tcp", e.HTTPS, &tls.Config{ServerName: host, RootCAs: roots})
	if err != nil {
		e.t.Fatalf("TLS to %s: %v", host, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestHTTPS is automatic HTTPS as a user meets it, against Pebble with its
// default validation delays and nonce rejection: a deploy gets
// certificates for its domains during the switch; HTTPS serves them; HTTP
// redirects; a restart serves the same certificates without the CA; a new
// domain while the CA is down stays on HTTP and status says why.
func TestHTTPS(t *testing.T) {
	ports := pebbletest.FreePorts(t, 2)
	httpPort, httpsPort := ports[0], ports[1]
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: httpPort, TLSPort: httpsPort})
	e := NewEnv(t)
	listen := []string{"--http", fmt.Sprintf("127.0.0.1:%d", httpPort), "--https", fmt.Sprintf("127.0.0.1:%d", httpsPort)}
	e.StartDaemonArgs(listen...)

	acmeBlock := map[string]any{"email": "ops@example.org", "ca": p.Directory, "ca_root": p.ServerCA}
	services := map[string]any{
		"shop":   e.App("shop", map[string]any{"domains": []string{"shop.example"}, "redirects": []string{"www.shop.example"}, "hsts": true}),
		"wiki":   e.App("wiki", map[string]any{"domains": []string{"wiki.example"}}),
		"quotes": e.App("quotes", map[string]any{"domains": []string{"quotes.example"}, "tls": false}),
	}
	e.WriteSpec(map[string]any{"acme": acmeBlock, "services": services})
	out := e.deployOutput()
	for _, h := range []string{"shop.example", "www.shop.example", "wiki.example"} {
		if !strings.Contains(out, "cert "+h+": valid until") {
			t.Errorf("deploy output lacks a valid certificate for %s:\n%s", h, out)
		}
	}
	if strings.Contains(out, "cert quotes.example") {
		t.Errorf("deploy asked for a certificate for tls:false quotes.example:\n%s", out)
	}
	hs := fmt.Sprint(httpsPort)

	t.Run("certificate expiry metric", func(t *testing.T) {
		text := e.scrape("")
		for _, h := range []string{"shop.example", "www.shop.example", "wiki.example"} {
			m := regexp.MustCompile(`(?m)^hostel_certificate_expiry_timestamp_seconds\{domain="` + regexp.QuoteMeta(h) + `"[^}]*\} (\S+)$`).FindStringSubmatch(text)
			if m == nil {
				t.Errorf("no certificate expiry for %s", h)
				continue
			}
			if at, _ := strconv.ParseFloat(m[1], 64); at < float64(time.Now().Add(24*time.Hour).Unix()) {
				t.Errorf("%s: certificate expiry %s, want a day or more ahead", h, m[1])
			}
		}
		if strings.Contains(text, `domain="quotes.example"`) {
			t.Errorf("an expiry for tls:false quotes.example")
		}
	})

	t.Run("https", func(t *testing.T) {
		resp, body, err := e.GetTLS(p.Roots, "shop.example", "/")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || !strings.Contains(body, "The Shop") || resp.Proto != "HTTP/2.0" {
			t.Errorf("shop: %d %s %q", resp.StatusCode, resp.Proto, body)
		}
		if resp.Header.Get("Strict-Transport-Security") == "" {
			t.Errorf("shop asked for hsts and got none")
		}
		resp, body, err = e.GetTLS(p.Roots, "wiki.example", "/")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || !strings.Contains(body, "The wiki") || resp.Header.Get("Strict-Transport-Security") != "" {
			t.Errorf("wiki: %d %q hsts %q", resp.StatusCode, body, resp.Header.Get("Strict-Transport-Security"))
		}
		resp, _, err = e.GetTLS(p.Roots, "www.shop.example", "/cart?x=1")
		if err != nil {
			t.Fatal(err)
		}
		if want := "https://shop.example:" + hs + "/cart?x=1"; resp.StatusCode != 301 || resp.Header.Get("Location") != want {
			t.Errorf("https www: %d %q, want 301 %q", resp.StatusCode, resp.Header.Get("Location"), want)
		}
	})
	t.Run("http redirects", func(t *testing.T) {
		for _, tc := range []struct{ host, path, want string }{
			{"shop.example", "/cart?x=1", "https://shop.example:" + hs + "/cart?x=1"},
			{"www.shop.example", "/cart?x=1", "https://shop.example:" + hs + "/cart?x=1"},
			{"wiki.example", "/a", "https://wiki.example:" + hs + "/a"},
		} {
			code, h, _ := e.Get(tc.host, tc.path)
			if code != 301 || h.Get("Location") != tc.want {
				t.Errorf("http %s%s: %d %q, want 301 %q", tc.host, tc.path, code, h.Get("Location"), tc.want)
			}
		}
		if code, _, body := e.Get("quotes.example", "/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("tls:false quotes over http: %d %q", code, body)
		}
	})
	st := e.httpsStatus()
	t.Run("status", func(t *testing.T) {
		if st.Listen.HTTPS != "127.0.0.1:"+hs {
			t.Errorf("listen.https %q", st.Listen.HTTPS)
		}
		if got := st.certOf("wiki.example"); !strings.HasPrefix(got, "valid: valid until ") {
			t.Errorf("wiki.example: %s", got)
		}
		text := e.MustRun("status")
		if !strings.Contains(text, "cert: valid until") {
			t.Errorf("status text lacks certificates:\n%s", text)
		}
	})
	t.Run("immutable names use the internal CA", func(t *testing.T) {
		internal := x509.NewCertPool()
		if !internal.AppendCertsFromPEM([]byte(st.InternalCA)) {
			t.Fatalf("internal_ca is not PEM: %q", st.InternalCA)
		}
		var url string
		for _, s := range st.Services {
			if s.Name == "wiki" {
				url = s.URL
			}
		}
		host := strings.TrimPrefix(strings.TrimPrefix(url, "http://"), "https://")
		resp, body, err := e.GetTLS(internal, host, "/")
		if err != nil || resp.StatusCode != 200 || !strings.Contains(body, "The wiki") {
			t.Errorf("https %s: %v %q", host, err, body)
		}
	})

	// Restart with the CA gone: the certificates come from the store.
	serials := map[string]string{}
	for _, h := range []string{"shop.example", "wiki.example"} {
		serials[h] = e.serial(p.Roots, h)
	}
	e.StopDaemon()
	p.Stop()
	e.StartDaemonArgs(listen...)
	t.Run("restart keeps certificates", func(t *testing.T) {
		for h, want := range serials {
			if got := e.serial(p.Roots, h); got != want {
				t.Errorf("%s: serial %s after restart, want %s", h, got, want)
			}
		}
		if log := e.DaemonLog(); strings.Contains(log, "obtained") || strings.Contains(log, "will retry") {
			t.Errorf("restarted daemon went to the CA:\n%s", log)
		}
	})

	t.Run("CA unreachable", func(t *testing.T) {
		services["blog"] = e.App("blog", map[string]any{"needs": []string{"quotes"}, "domains": []string{"blog.example"}})
		e.WriteSpec(map[string]any{"acme": acmeBlock, "services": services})
		out := e.deployOutput()
		if !strings.Contains(out, "cert blog.example: failing: ") {
			t.Errorf("deploy output does not report the failure:\n%s", out)
		}
		if code, _, body := e.Get("blog.example", "/"); code != 200 || !strings.Contains(body, "Quote of the day") {
			t.Errorf("blog over http while the CA is down: %d %q", code, body)
		}
		if got := e.httpsStatus().certOf("blog.example"); !strings.HasPrefix(got, "failing: failing: ") {
			t.Errorf("blog.example: %s", got)
		}
		if text := e.MustRun("status", "blog"); !strings.Contains(text, "blog.example  blog     cert: failing: ") {
			t.Errorf("status blog:\n%s", text)
		}
		if resp, _, err := e.GetTLS(p.Roots, "shop.example", "/"); err != nil || resp.StatusCode != 200 {
			t.Errorf("shop over https while the CA is down: %v", err)
		}
	})
}
