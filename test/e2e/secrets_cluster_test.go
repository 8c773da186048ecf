package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecretsOnNodes: two nodes (two daemons, each its own root and
// machine key) share one etcd. `hostel secrets recipients` lists both
// nodes' keys, each marking its own machine. A secret encrypted to node
// b alone deploys — through node a, which leads the engine but never
// decrypts it — for a service placed on b, which reads it. The same
// secret for a service placed on a fails that deploy before the commit,
// naming the service, the secret and the node (exit 1, nothing changed;
// both daemons and b's service run on). Once the recipients list both
// nodes and the secrets are rekeyed, it deploys.
func TestSecretsOnNodes(t *testing.T) {
	url := startEtcd(t)
	listen := []string{"--http", "127.0.0.1:0", "--https", "", "--etcd", url}
	pkg := secretApp(t)
	a, b := NewEnv(t), NewEnv(t)
	a.StartDaemonArgs(append(listen, "--node", "a")...) // first: a leads the engine
	b.StartDaemonArgs(append(listen, "--node", "b")...)
	defer a.Shutdown()
	defer b.Shutdown()

	// Every node's key, one a line, this machine's marked.
	keyOf := map[string]string{}
	for _, e := range []*Env{a, b} {
		out := e.MustRun("secrets", "recipients")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("secrets recipients:\n%s\nwant a line per node", out)
		}
		for _, l := range lines {
			key, comment, _ := strings.Cut(l, "  # ")
			node, self := strings.CutSuffix(comment, " (this machine)")
			if !strings.HasPrefix(key, "age1") || (node != "node a" && node != "node b") {
				t.Fatalf("secrets recipients line %q, want KEY  # node NAME", l)
			}
			if self != (node == map[*Env]string{a: "node a", b: "node b"}[e]) {
				t.Errorf("secrets recipients on %s marks %q", e.Root, l)
			}
			if prev := keyOf[node]; prev != "" && prev != key {
				t.Errorf("%s has key %s on one node, %s on the other", node, prev, key)
			}
			keyOf[node] = key
		}
	}
	if keyOf["node a"] == keyOf["node b"] {
		t.Fatal("both nodes have the same key")
	}
	recipients := func(lines ...string) {
		t.Helper()
		os.MkdirAll(filepath.Join(a.Dir, "secrets"), 0o755)
		if err := os.WriteFile(filepath.Join(a.Dir, "secrets", "recipients.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	recipients(keyOf["node b"] + "  # node b")

	editor := filepath.Join(t.TempDir(), "editor.sh")
	os.WriteFile(editor, []byte("#!/bin/sh\nprintf '%s' \"$SECRET_VALUE\" > \"$1\"\n"), 0o755)
	t.Setenv("EDITOR", editor)
	t.Setenv("SECRET_VALUE", "b-only-value")
	_, errOut, code := a.Run("secrets", "edit", "vault_key")
	if code != 0 || !strings.Contains(errOut, "the key of node a is not in") {
		t.Fatalf("secrets edit: exit %d %q, want 0 warning that node a's key is not a recipient", code, errOut)
	}

	vault := secretService(pkg, "vault.example", "vault_key")
	vault["placement"] = map[string]any{"node": "b"}
	a.WriteSpec(map[string]any{"services": map[string]any{"vault": vault}})
	a.MustRun("deploy", "--no-confirm")
	if code, _, body := b.Get("vault.example", "/secret/vault_key"); code != 200 || body != "b-only-value" {
		t.Fatalf("vault on b reads its secret: %d %q", code, body)
	}

	shop := secretService(pkg, "shop.example", "vault_key")
	shop["placement"] = map[string]any{"node": "a"}
	a.WriteSpec(map[string]any{"services": map[string]any{"vault": vault, "shop": shop}})
	_, errOut, code = a.Run("deploy", "--no-confirm")
	for _, want := range []string{"nothing changed", `service "shop"`, `secret "vault_key"`, `cannot be decrypted on node "a"`, keyOf["node a"]} {
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("deploy of shop on a: exit %d %q, want 1 saying %q", code, errOut, want)
		}
	}
	if gen, _ := a.Status(); gen != 1 {
		t.Errorf("generation %d after the failed deploy, want 1", gen)
	}
	if code, _, body := b.Get("vault.example", "/secret/vault_key"); code != 200 || body != "b-only-value" {
		t.Errorf("vault after the failed deploy: %d %q", code, body)
	}

	// The recipients as `secrets recipients` prints them; a rekey by
	// someone who can decrypt (node b's key as the admin's identity).
	recipients(strings.TrimSpace(a.MustRun("secrets", "recipients")))
	a.MustRun("secrets", "rekey", "--identity", filepath.Join(b.Root, "host.key"))
	a.MustRun("deploy", "--no-confirm")
	if code, _, body := a.Get("shop.example", "/secret/vault_key"); code != 200 || body != "b-only-value" {
		t.Errorf("shop on a reads the secret after the rekey: %d %q", code, body)
	}
	if code, _, body := b.Get("vault.example", "/secret/vault_key"); code != 200 || body != "b-only-value" {
		t.Errorf("vault after the rekey: %d %q", code, body)
	}
}
