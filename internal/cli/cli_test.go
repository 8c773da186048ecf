package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeps: the CLI is a client; it reaches the daemon's parts only through
// the API (serve goes through package daemon).
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"hostel/internal/supervisor", "hostel/internal/router", "hostel/internal/deploy", "hostel/internal/store"} {
		for _, imp := range strings.Fields(string(out)) {
			if imp == bad {
				t.Errorf("package cli imports %s", bad)
			}
		}
	}
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "hostel.json")
	os.WriteFile(bad, []byte(`{"services":{"api":{"exec":["/a"],"needs":["db2"]}}}`), 0o644)
	tests := []struct {
		name     string
		args     []string
		code     int
		stderrRE string
	}{
		{"unknown flag", []string{"status", "--bogus"}, 2, "unknown flag"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"too many args", []string{"logs", "a", "b"}, 2, "accepts 1 arg"},
		{"bad spec", []string{"plan", bad}, 2, `hostel.json: service "api": needs "db2", which is not defined`},
		{"missing spec", []string{"plan", filepath.Join(dir, "nope.json")}, 2, "nope.json: "},
		{"no daemon", []string{"--root", dir, "status"}, 1, "cannot reach the hostel daemon"},
		{"version", []string{"version"}, 0, ""},
		{"dashboard: bad listen", []string{"--root", dir, "dashboard", "--listen", "nope"}, 2, `--listen: "nope": want HOST:PORT`},
		{"dashboard: no daemon", []string{"--root", dir, "dashboard"}, 1, "cannot reach the hostel daemon"},
		{"serve on two etcds", []string{"--root", dir, "serve", "--etcd", "http://127.0.0.1:1", "--etcd-embed"}, 2, "--etcd and --etcd-embed: choose one"},
		{"serve etcd TLS without etcd", []string{"--root", dir, "serve", "--etcd-cert", "c.pem", "--etcd-key", "k.pem"}, 2, "--etcd-cert is for the TLS of --etcd URLS, or of https:// --etcd-peers"},
		{"serve etcd cert without key", []string{"--root", dir, "serve", "--etcd", "https://127.0.0.1:1", "--etcd-cert", "c.pem"}, 2, "--etcd-cert needs --etcd-key"},
		{"serve etcd CA for http", []string{"--root", dir, "serve", "--etcd", "http://127.0.0.1:1", "--etcd-ca", "ca.pem"}, 2, "--etcd-cert and --etcd-ca are for https:// URLs"},
		{"serve etcd URL without scheme", []string{"--root", dir, "serve", "--etcd", "etcd.example:2379"}, 2, `--etcd "etcd.example:2379": want http://HOST:PORT`},
		{"serve etcd peers without a member", []string{"--root", dir, "serve", "--etcd-peers", "a=http://127.0.0.1:2380"}, 2, "--etcd-peers needs --etcd-embed"},
		{"serve etcd peers with --etcd", []string{"--root", dir, "serve", "--etcd", "http://127.0.0.1:1", "--etcd-peers", "a=http://127.0.0.1:2380"}, 2, "--etcd-peers needs --etcd-embed"},
		{"serve etcd peers, not a URL", []string{"--root", dir, "serve", "--etcd-embed", "--etcd-peers", "a=127.0.0.1:2380"}, 2, `--etcd-peers: "a=127.0.0.1:2380": want https://IP:PORT`},
		{"serve etcd peers, http between machines", []string{"--root", dir, "serve", "--etcd-embed", "--node", "a", "--etcd-peers", "a=http://10.0.0.1:2380"}, 2, "not a loopback address"},
		{"serve etcd peers without the node", []string{"--root", dir, "serve", "--etcd-embed", "--node", "c", "--etcd-peers", "a=http://127.0.0.1:2380,b=http://127.0.0.1:3380"}, 2, "--etcd-peers, as node c: this node, c, is not one of the members (a, b)"},
		{"serve etcd https peers without certificates", []string{"--root", dir, "serve", "--etcd-embed", "--node", "a", "--etcd-peers", "a=https://10.0.0.1:2380"}, 2, "https:// peer URLs need this member's certificate, its key and the cluster's CA"},
		{"serve etcd https peers, missing certificate", []string{"--root", dir, "serve", "--etcd-embed", "--node", "a", "--etcd-peers", "a=https://10.0.0.1:2380",
			"--etcd-cert", filepath.Join(dir, "c.pem"), "--etcd-key", filepath.Join(dir, "k.pem"), "--etcd-ca", filepath.Join(dir, "ca.pem")}, 2, "c.pem: no such file"},
		{"serve etcd http peers with certificates", []string{"--root", dir, "serve", "--etcd-embed", "--node", "a", "--etcd-peers", "a=http://127.0.0.1:2380", "--etcd-ca", "ca.pem"}, 2, "certificates are for https:// peer URLs"},
		{"serve etcd peers, bad node name", []string{"--root", dir, "serve", "--etcd-embed", "--node", "a/b", "--etcd-peers", "a=http://127.0.0.1:2380"}, 2, `--node: "a/b" is not a node name`},
		{"serve bad node name", []string{"--root", dir, "serve", "--node", "a/b"}, 2, `--node: "a/b" is not a node name`},
		{"serve: bad held size", []string{"--root", dir, "serve", "--max-held-body", "lots"}, 2, `--max-held-body: "lots" is not a size`},
		{"serve: negative held size", []string{"--root", dir, "serve", "--max-held-disk", "-1G"}, 2, `--max-held-disk: "-1G" is not a size`},
		{"serve: negative connections", []string{"--root", dir, "serve", "--max-connections", "-1"}, 2, "--max-connections: -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			first := strings.SplitN(stderr.String(), "\n", 2)[0]
			if !strings.Contains(first, tt.stderrRE) {
				t.Errorf("first stderr line %q, want %q", first, tt.stderrRE)
			}
		})
	}
}
