package e2e

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"hostel/internal/acme/pebbletest"
	"hostel/internal/store"
	"hostel/internal/store/etcd"
)

// TestPreviewDomain: with previews.domain, a preview's services answer on
// SERVICE.ENV.DOMAIN over HTTPS with a certificate from the CA, beside
// production's domains, which do not change; env rm removes the route and
// the certificate, from the store too, but not the certificate of a
// production domain that is also one of the preview's names.
func TestPreviewDomain(t *testing.T) {
	e, p, _, spec := startPreviewDomain(t)
	e.WriteSpec(spec("Production Shop"))
	e.deployOutput()
	e.WriteSpec(spec("Preview Shop"))
	out, errOut, code := e.Run("deploy", "--env", "pr-1", "--no-confirm")
	if code != 0 {
		t.Fatalf("deploy --env pr-1: exit %d\n%s%s", code, out, errOut)
	}
	host := "shop.pr-1.preview.example"
	if !strings.Contains(errOut, "cert "+host+": valid until") {
		t.Errorf("deploy --env pr-1 output lacks a valid certificate for %s:\n%s", host, errOut)
	}
	resp, body, err := e.GetTLS(p.Roots, host, "/")
	if err != nil {
		t.Fatalf("https://%s: %v", host, err)
	}
	if resp.StatusCode != 200 || !strings.Contains(body, "Preview Shop") {
		t.Errorf("https://%s: %d %q, want the preview's shop", host, resp.StatusCode, body)
	}
	if resp, body, err := e.GetTLS(p.Roots, "shop.example", "/"); err != nil || resp.StatusCode != 200 || !strings.Contains(body, "Production Shop") {
		t.Errorf("production's https://shop.example after the preview: %v %q", err, body)
	} else if resp.Header.Get("Strict-Transport-Security") == "" {
		t.Errorf("production's https://shop.example (hsts) has no Strict-Transport-Security")
	}
	// The preview's name is served over HTTPS: HTTP redirects there, and
	// no HSTS is promised for it, though its service asks for it.
	_, port, _ := net.SplitHostPort(e.HTTPS)
	if code, h, _ := e.Get(host, "/p?q=1"); code != 301 || h.Get("Location") != "https://"+host+":"+port+"/p?q=1" {
		t.Errorf("http://%s/p?q=1: %d Location %q, want 301 to https", host, code, h.Get("Location"))
	}
	if hsts := resp.Header.Get("Strict-Transport-Security"); hsts != "" {
		t.Errorf("https://%s: Strict-Transport-Security %q, want none", host, hsts)
	}
	stored := func() []string { return storedCerts(t, e, host) }
	if list := e.MustRun("env", "list", "--json"); !strings.Contains(list, `"https://`+host+`"`) {
		t.Errorf("env list lacks https://%s:\n%s", host, list)
	}
	if len(stored()) == 0 {
		t.Fatalf("no certificate of %s stored under %s/certs", host, e.Root)
	}

	e.MustRun("env", "rm", "pr-1")
	if left := stored(); len(left) != 0 {
		t.Errorf("certificate: %v left after env rm", left)
	}
	if st := e.httpsStatus(); st.certOf(host) != "absent" {
		t.Errorf("status still lists %s's certificate: %s", host, st.certOf(host))
	}
	if code, _, _ := e.Get(host, "/"); code != 404 {
		t.Errorf("route: http://%s answers %d after env rm, want 404", host, code)
	}
	if resp, body, err := e.GetTLS(p.Roots, "shop.example", "/"); err != nil || resp.StatusCode != 200 || !strings.Contains(body, "Production Shop") {
		t.Errorf("production's https://shop.example after env rm: %v %q", err, body)
	}
	if len(storedCerts(t, e, "wiki.pr-1.preview.example")) == 0 {
		t.Error("env rm removed production's certificate of wiki.pr-1.preview.example, a preview name too")
	}
}

// startPreviewDomain starts Pebble and a daemon whose HTTPS Pebble
// validates, on an etcd of the test's (the test reads the certificates
// there: storedCerts), and returns them, the daemon's flags and the spec
// to deploy: Pebble as CA, previews.domain "preview.example", a shop on
// shop.example titled as asked (with hsts), and a wiki whose production domain is
// also the name a preview pr-1 gives it, wiki.pr-1.preview.example.
func startPreviewDomain(t *testing.T) (e *Env, p *pebbletest.Pebble, listen []string, spec func(title string) map[string]any) {
	t.Helper()
	ports := pebbletest.FreePorts(t, 2)
	p = pebbletest.Start(t, pebbletest.Options{HTTPPort: ports[0], TLSPort: ports[1]})
	listen = []string{"--http", fmt.Sprintf("127.0.0.1:%d", ports[0]), "--https", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"--etcd", startEtcd(t)}
	e = NewEnv(t)
	e.StartDaemonArgs(listen...)
	spec = func(title string) map[string]any {
		return map[string]any{
			"acme":     map[string]any{"email": "ops@example.org", "ca": p.Directory, "ca_root": p.ServerCA},
			"previews": map[string]any{"domain": "preview.example"},
			"services": map[string]any{
				"shop": e.App("shop", map[string]any{"domains": []string{"shop.example"}, "hsts": true, "env": map[string]string{"SHOP_TITLE": title}}),
				"wiki": e.App("wiki", map[string]any{"domains": []string{"wiki.pr-1.preview.example"}}),
			},
		}
	}
	return e, p, listen, spec
}

// storedCerts lists the keys the store holds of host's certificate: the
// records of certificates and keys whose path names host. The daemon of e
// runs on the etcd its --etcd flag names.
func storedCerts(t *testing.T, e *Env, host string) []string {
	t.Helper()
	st, err := etcd.Open(t.Context(), etcd.Config{Endpoints: []string{e.etcdURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var found []string
	for _, kind := range []string{store.KindCert, store.KindCertKey} {
		recs, err := st.Records(t.Context(), kind)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if slices.Contains(strings.Split(strings.TrimSuffix(r.Key, "/"), "/"), host) {
				found = append(found, r.Key)
			}
		}
	}
	return found
}

// TestPreviewDomainRemovalCrash: a daemon killed in env rm leaves the
// certificates of the preview's public names on disk; its next start
// removes them, and only them: a production domain that is also one of
// the preview's names (wiki.pr-1.preview.example) keeps its certificate.
func TestPreviewDomainRemovalCrash(t *testing.T) {
	for _, fp := range []string{"env-rm-after-drop", "env-rm-before-certs"} {
		t.Run(fp, func(t *testing.T) {
			e, p, listen, spec := startPreviewDomain(t)
			e.WriteSpec(spec("Production Shop"))
			e.deployOutput()
			e.WriteSpec(spec("Preview Shop"))
			e.MustRun("deploy", "--env", "pr-1", "--no-confirm")
			gone, kept := "shop.pr-1.preview.example", []string{"shop.example", "wiki.pr-1.preview.example"}
			waitUntil(t, "the preview's certificate in the store", func() bool { return len(storedCerts(t, e, gone)) > 0 })
			for _, h := range kept {
				if len(storedCerts(t, e, h)) == 0 {
					t.Fatalf("no certificate of production's %s stored", h)
				}
			}

			e.StopDaemon()
			e.killedAt(fp, listen, "env", "rm", "pr-1")
			e.StartDaemonArgs(listen...)
			waitUntil(t, "the removed preview's certificate to go", func() bool { return len(storedCerts(t, e, gone)) == 0 })
			for _, h := range kept {
				if len(storedCerts(t, e, h)) == 0 {
					t.Errorf("production's certificate of %s was removed with the preview's", h)
				}
			}
			if resp, body, err := e.GetTLS(p.Roots, "wiki.pr-1.preview.example", "/"); err != nil || resp.StatusCode != 200 {
				t.Errorf("production's https://wiki.pr-1.preview.example after the restart: %v %q", err, body)
			}
		})
	}
}
