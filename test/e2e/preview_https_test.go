package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hostel/internal/acme/pebbletest"
)

// TestPreviewDomain: with previews.domain, a preview's services answer on
// SERVICE.ENV.DOMAIN over HTTPS with a certificate from the CA, beside
// production's domains, which do not change; env rm removes the route and
// the certificate, on disk too.
func TestPreviewDomain(t *testing.T) {
	ports := pebbletest.FreePorts(t, 2)
	httpPort, httpsPort := ports[0], ports[1]
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: httpPort, TLSPort: httpsPort})
	e := NewEnv(t)
	e.StartDaemonArgs("--http", fmt.Sprintf("127.0.0.1:%d", httpPort), "--https", fmt.Sprintf("127.0.0.1:%d", httpsPort))
	spec := func(title string) map[string]any {
		return map[string]any{
			"acme":     map[string]any{"email": "ops@example.org", "ca": p.Directory, "ca_root": p.ServerCA},
			"previews": map[string]any{"domain": "preview.example"},
			"services": map[string]any{
				"shop": e.App("shop", map[string]any{"domains": []string{"shop.example"}, "env": map[string]string{"SHOP_TITLE": title}}),
			},
		}
	}
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
	}
	stored := func() []string {
		var found []string
		filepath.WalkDir(filepath.Join(e.Root, "certs"), func(path string, d os.DirEntry, err error) error {
			if err == nil && strings.Contains(path, host) {
				found = append(found, path)
			}
			return nil
		})
		return found
	}
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
}
