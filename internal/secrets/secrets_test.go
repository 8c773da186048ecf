package secrets

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// newAge returns a fresh X25519 identity.
func newAge(t testing.TB) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// newSSH writes an unencrypted ed25519 private key to a file and returns
// the file and the authorized_keys line of its public key.
func newSSH(t testing.TB) (keyFile, pubLine string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "admin@laptop")
	if err != nil {
		t.Fatal(err)
	}
	keyFile = filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	return keyFile, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " admin@laptop"
}

func TestParseRecipients(t *testing.T) {
	a, b := newAge(t).Recipient().String(), newAge(t).Recipient().String()
	_, sshLine := newSSH(t)
	tests := []struct {
		name     string
		in       string
		keys     int
		comments []string
		err      string
	}{
		{name: "empty", in: "", keys: 0},
		{name: "comments and blanks", in: "# machines\n\n" + a + "  # web1\n   \n" + b + "\n", keys: 2, comments: []string{"web1", ""}},
		{name: "ssh key with its comment", in: sshLine + "\n", keys: 1, comments: []string{"admin@laptop"}},
		{name: "ssh key with a hash comment", in: sshLine + " # alice\n", keys: 1, comments: []string{"alice"}},
		{name: "age and ssh", in: a + "\n" + sshLine + "\n", keys: 2},
		{name: "not a key", in: a + "\nhello world\n", err: "recipients.txt:2: \"hello world\" is not a public key"},
		{name: "bad age key", in: "age1notakey\n", err: "recipients.txt:1: invalid age public key"},
		{name: "text after an age key", in: a + " web1\n", err: "recipients.txt:1: unexpected text after the key"},
		{name: "bad ssh key", in: "ssh-ed25519 AAAAnope\n", err: "recipients.txt:1: SSH key"},
		{name: "duplicate", in: a + "\n# again\n" + a + " # dup\n", err: "recipients.txt:3: the same key as line 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRecipients("recipients.txt", strings.NewReader(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.keys {
				t.Fatalf("got %d recipients, want %d", len(got), tc.keys)
			}
			for i, c := range tc.comments {
				if got[i].Comment != c {
					t.Errorf("recipient %d comment = %q, want %q", i, got[i].Comment, c)
				}
			}
		})
	}
}

func TestEncryptDecrypt(t *testing.T) {
	machine, other := newAge(t), newAge(t)
	keyFile, sshLine := newSSH(t)
	rs, err := ParseRecipients("r", strings.NewReader(machine.Recipient().String()+"\n"+sshLine+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("sk_live_123\n")
	ct, err := Encrypt(plain, rs)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, plain[:7]) {
		t.Fatal("ciphertext contains the plaintext")
	}
	sshIDs, err := ReadIdentity(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Stanzas(ct)
	if err != nil {
		t.Fatal(err)
	}
	if st["X25519"] != 1 || st["ssh-ed25519"] != 1 {
		t.Errorf("stanzas = %v, want one X25519 and one ssh-ed25519", st)
	}
	tests := []struct {
		name string
		ids  []age.Identity
		err  error
	}{
		{"machine key", []age.Identity{machine}, nil},
		{"ssh key", sshIDs, nil},
		{"not a recipient", []age.Identity{other}, ErrNotRecipient},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decrypt(ct, tc.ids...)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if tc.err == nil && !bytes.Equal(got, plain) {
				t.Errorf("got %q, want %q", got, plain)
			}
		})
	}
	if _, err := Decrypt([]byte("not age"), machine); err == nil || errors.Is(err, ErrNotRecipient) {
		t.Errorf("garbage: err = %v, want a format error", err)
	}
	if Check([]byte("not age")) == nil || Check(ct) != nil {
		t.Error("Check does not tell age files from garbage")
	}
}

func TestEnsureHostKey(t *testing.T) {
	root := t.TempDir()
	k1, err := EnsureHostKey(root)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, HostKeyFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("host.key mode = %o, want 600", fi.Mode().Perm())
	}
	if !strings.HasPrefix(k1.PublicKey(), "age1") {
		t.Errorf("public key = %q", k1.PublicKey())
	}
	// A second start keeps the key, and tightens loose permissions.
	os.Chmod(path, 0o644)
	k2, err := EnsureHostKey(root)
	if err != nil {
		t.Fatal(err)
	}
	if k2.PublicKey() != k1.PublicKey() {
		t.Errorf("key changed across starts: %s → %s", k1.PublicKey(), k2.PublicKey())
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("host.key mode after restart = %o, want 600", fi.Mode().Perm())
	}
	// The admin side reads the same file as an identity.
	ids, err := ReadIdentity(path)
	if err != nil || len(ids) != 1 {
		t.Fatalf("ReadIdentity(host.key) = %v, %v", ids, err)
	}
}

// newRepo returns a repository whose recipients are the given public keys.
func newRepo(t testing.TB, keys ...string) Repo {
	t.Helper()
	r := Repo{Dir: filepath.Join(t.TempDir(), Dir)}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.RecipientsPath(), []byte("# test\n"+strings.Join(keys, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

// writeEditor returns an Editor that checks the temp file and replaces its
// content with value; seen receives what the file held and its path.
func writeEditor(t *testing.T, value string, seen *string, path *string) Editor {
	return func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("temp file mode = %o, want 600", fi.Mode().Perm())
		}
		if di, _ := os.Stat(filepath.Dir(p)); di.Mode().Perm() != 0o700 {
			t.Errorf("temp dir mode = %o, want 700", di.Mode().Perm())
		}
		b, _ := os.ReadFile(p)
		*seen, *path = string(b), p
		// An editor's swap file is shredded too.
		os.WriteFile(p+".swp", []byte(value), 0o600)
		return os.WriteFile(p, []byte(value), 0o600)
	}
}

func TestEdit(t *testing.T) {
	me := newAge(t)
	repo := newRepo(t, me.Recipient().String())
	ids := []age.Identity{me}
	var seen, tmp string

	changed, err := repo.Edit("stripe_key", ids, writeEditor(t, "v1", &seen, &tmp))
	if err != nil || !changed {
		t.Fatalf("first edit: changed=%v err=%v", changed, err)
	}
	if seen != "" {
		t.Errorf("a new secret starts as %q, want empty", seen)
	}
	if _, err := os.Stat(filepath.Dir(tmp)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s survives the edit: %v", filepath.Dir(tmp), err)
	}
	got, err := repo.Open("stripe_key", ids)
	if err != nil || string(got) != "v1" {
		t.Fatalf("after edit: %q, %v", got, err)
	}
	ct1, _ := repo.Read("stripe_key")

	changed, err = repo.Edit("stripe_key", ids, writeEditor(t, "v1", &seen, &tmp))
	if err != nil || changed || seen != "v1" {
		t.Fatalf("unchanged edit: changed=%v err=%v seen=%q", changed, err, seen)
	}
	if ct, _ := repo.Read("stripe_key"); !bytes.Equal(ct, ct1) {
		t.Error("an unchanged secret was re-encrypted (its users would restart)")
	}

	if _, err := repo.Edit("stripe_key", ids, writeEditor(t, "v2", &seen, &tmp)); err != nil {
		t.Fatal(err)
	}
	if got, _ := repo.Open("stripe_key", ids); string(got) != "v2" {
		t.Errorf("after second edit: %q", got)
	}

	t.Run("errors", func(t *testing.T) {
		tests := []struct {
			name, secret string
			ids          []age.Identity
			value, err   string
		}{
			{"bad name", "../x", ids, "v", "invalid secret name"},
			{"not a recipient", "stripe_key", []age.Identity{newAge(t)}, "v", "not one of its recipients"},
			{"no identity", "stripe_key", nil, "v", "no identity"},
			{"new and empty", "nothing", ids, "", "nothing was written"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := repo.Edit(tc.secret, tc.ids, writeEditor(t, tc.value, &seen, &tmp))
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
			})
		}
		if _, err := os.Stat(repo.Path("nothing")); !errors.Is(err, os.ErrNotExist) {
			t.Error("an empty new secret was created")
		}
	})
	t.Run("no recipients file", func(t *testing.T) {
		r := Repo{Dir: t.TempDir()}
		if _, err := r.Edit("x", ids, writeEditor(t, "v", &seen, &tmp)); err == nil || !strings.Contains(err.Error(), "hostel secrets recipients >>") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestRekey(t *testing.T) {
	me, newcomer := newAge(t), newAge(t)
	repo := newRepo(t, me.Recipient().String())
	rs, _ := repo.Recipients()
	for _, n := range []string{"a", "b"} {
		if err := repo.Write(n, []byte("value-"+n), rs); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := repo.Open("a", []age.Identity{newcomer}); !errors.Is(err, ErrNotRecipient) {
		t.Fatalf("newcomer can decrypt before rekey: %v", err)
	}
	os.WriteFile(repo.RecipientsPath(), []byte(me.Recipient().String()+"\n"+newcomer.Recipient().String()+"\n"), 0o644)
	names, err := repo.Rekey([]age.Identity{me})
	if err != nil || len(names) != 2 {
		t.Fatalf("rekey: %v %v", names, err)
	}
	for _, n := range names {
		got, err := repo.Open(n, []age.Identity{newcomer})
		if err != nil || string(got) != "value-"+n {
			t.Errorf("%s after rekey: %q %v", n, got, err)
		}
		if st, _ := Stanzas(must(repo.Read(n))); st["X25519"] != 2 {
			t.Errorf("%s: stanzas %v, want 2 X25519", n, st)
		}
	}

	// A secret the admin cannot decrypt stops the rekey before anything is rewritten.
	stranger := newAge(t)
	ct, _ := Encrypt([]byte("x"), []Recipient{{Recipient: stranger.Recipient()}})
	os.WriteFile(repo.Path("c"), ct, 0o644)
	before := must(repo.Read("a"))
	if _, err := repo.Rekey([]age.Identity{me}); err == nil || !strings.Contains(err.Error(), "c.age") {
		t.Fatalf("rekey with an undecryptable secret: %v", err)
	}
	if !bytes.Equal(before, must(repo.Read("a"))) {
		t.Error("a was rewritten although the rekey failed")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestCheckAndPrepare(t *testing.T) {
	root := t.TempDir()
	host, err := EnsureHostKey(root)
	if err != nil {
		t.Fatal(err)
	}
	stranger := newAge(t)
	const marker = "PLAINTEXT-MARKER-4711"
	toHost, _ := Encrypt([]byte(marker), []Recipient{{Recipient: host.Recipient()}})
	toStranger, _ := Encrypt([]byte(marker), []Recipient{{Recipient: stranger.Recipient()}})
	s := &spec.Spec{Services: map[string]*spec.Service{
		"api":  {Exec: []string{"x"}, Secrets: []string{"k"}},
		"web":  {Exec: []string{"x"}},
		"shop": {Exec: []string{"x"}, Secrets: []string{"k"}},
	}}
	tests := []struct {
		name string
		cts  map[string][]byte
		in   map[string]string
		err  string
	}{
		{"ok", map[string][]byte{"k": toHost, "unused": toHost}, map[string]string{"k": Hash(toHost)}, ""},
		{"no ciphertext", nil, map[string]string{"k": Hash(toHost)}, `hostel.json: service "api": secrets: secret "k": the request carries no ciphertext`},
		{"hash mismatch", map[string][]byte{"k": toHost}, map[string]string{"k": "00"}, "does not match"},
		{"not a recipient", map[string][]byte{"k": toStranger}, map[string]string{"k": Hash(toStranger)},
			`service "api": secrets: secret "k" (secrets/k.age) cannot be decrypted here: this machine (` + host.PublicKey() + `) is not one of its recipients`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keep, err := host.Check("hostel.json", s, spec.Inputs{Secrets: tc.in}, tc.cts)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(keep) != 1 || !bytes.Equal(keep["k"], toHost) {
					t.Errorf("kept %v, want only k", keep)
				}
				return
			}
			var se *spec.Error
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want a spec error containing %q", err, tc.err)
			}
			if strings.Contains(err.Error(), marker) {
				t.Error("the error reveals the plaintext")
			}
		})
	}

	p := &Preparer{Key: host}
	g := &spec.Generation{Number: 3, Spec: s, Secrets: map[string][]byte{"k": toHost}}
	for _, tc := range []struct {
		service string
		want    map[string]string
	}{{"api", map[string]string{"k": marker}}, {"web", nil}} {
		var cfg supervisor.Config
		if err := p.Prepare(context.Background(), g, tc.service, &cfg); err != nil {
			t.Fatal(err)
		}
		if len(cfg.Credentials) != len(tc.want) {
			t.Errorf("%s: credentials %d, want %d", tc.service, len(cfg.Credentials), len(tc.want))
		}
		for k, v := range tc.want {
			if string(cfg.Credentials[k]) != v {
				t.Errorf("%s: credential %s wrong", tc.service, k)
			}
		}
	}
	g.Secrets = nil
	if err := p.Prepare(context.Background(), g, "api", &supervisor.Config{}); err == nil || !strings.Contains(err.Error(), "generation 3 holds no ciphertext") {
		t.Errorf("prepare without ciphertext: %v", err)
	}

	// A node of a cluster whose key is not a recipient says which node.
	g.Secrets = map[string][]byte{"k": toStranger}
	var cfg supervisor.Config
	err = (&Preparer{Key: host, Node: "web2"}).Prepare(context.Background(), g, "api", &cfg)
	want := `secret "k" (secrets/k.age) cannot be decrypted on node "web2", which runs it: its key (` + host.PublicKey() + `) is not one of the secret's recipients`
	if err == nil || !strings.Contains(err.Error(), want) || cfg.Credentials != nil {
		t.Errorf("prepare on a node that is not a recipient: %v, credentials %d; want %q", err, len(cfg.Credentials), want)
	}
}

// TestCiphertexts: a node that receives a deploy checks the secrets it
// carries without decrypting them: one encrypted to other nodes' keys
// alone passes, while a missing, mismatched or malformed one is refused
// naming the service.
func TestCiphertexts(t *testing.T) {
	other := newAge(t)
	toOther, _ := Encrypt([]byte("x"), []Recipient{{Recipient: other.Recipient()}})
	s := &spec.Spec{Services: map[string]*spec.Service{
		"api": {Exec: []string{"x"}, Secrets: []string{"k"}},
		"web": {Exec: []string{"x"}},
	}}
	for _, tc := range []struct {
		name string
		cts  map[string][]byte
		in   map[string]string
		err  string
	}{
		{"another node's", map[string][]byte{"k": toOther}, map[string]string{"k": Hash(toOther)}, ""},
		{"no ciphertext", nil, map[string]string{"k": Hash(toOther)}, `service "api": secrets: secret "k": the request carries no ciphertext`},
		{"hash mismatch", map[string][]byte{"k": toOther}, map[string]string{"k": "00"}, "does not match"},
		{"not age", map[string][]byte{"k": []byte("plain")}, map[string]string{"k": Hash([]byte("plain"))}, `service "api": secrets: secret "k": not a valid age file`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keep, err := Ciphertexts("hostel.json", s, spec.Inputs{Secrets: tc.in}, tc.cts)
			if tc.err == "" {
				if err != nil || len(keep) != 1 || !bytes.Equal(keep["k"], toOther) {
					t.Fatalf("kept %v, %v; want k", keep, err)
				}
				return
			}
			var se *spec.Error
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want a spec error containing %q", err, tc.err)
			}
		})
	}
}
