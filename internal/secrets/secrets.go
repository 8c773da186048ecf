// Package secrets is hostel's age-encrypted secrets: the machine's identity
// (ROOT/host.key), the repository's recipients (secrets/recipients.txt) and
// secrets (secrets/NAME.age), and encrypting, decrypting, editing and
// rekeying them. Plaintext only ever lives in memory, in a private temp file
// while an admin edits it, and in a version's credentials directory.
package secrets

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hostel/internal/atomicfile"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"golang.org/x/crypto/ssh"
)

// Files and directories of a repository's secrets.
const (
	// Dir is the secrets directory, next to the spec file.
	Dir = "secrets"
	// RecipientsFile lists the public keys every secret is encrypted to.
	RecipientsFile = "recipients.txt"
	// Ext ends every secret's file name.
	Ext = ".age"
	// HostKeyFile is the machine's identity, under the daemon's root.
	HostKeyFile = "host.key"
)

// nameRE is what a secret may be called; spec validation uses the same rule.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidName reports whether name may name a secret.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// CheckName returns an error that says what a secret may be called when
// name may not name one.
func CheckName(name string) error {
	if !ValidName(name) {
		return fmt.Errorf("invalid secret name %q (want letters, digits, '_', '.', '-', starting with a letter or digit)", name)
	}
	return nil
}

// Hash is the hex SHA-256 of a ciphertext: what a version hashes for a secret.
func Hash(ciphertext []byte) string {
	sum := sha256.Sum256(ciphertext)
	return hex.EncodeToString(sum[:])
}

// Recipient is one line of recipients.txt.
type Recipient struct {
	// Key is the public key as written ("age1…" or "ssh-ed25519 AAAA…").
	Key string
	// Comment is the text after '#' on the line (or an ssh key's comment), if any.
	Comment string
	// Line is the line number in the file, from 1.
	Line int
	age.Recipient
}

// ParseRecipients reads a recipients file: one public key a line (age
// X25519 "age1…", or an SSH "ssh-ed25519"/"ssh-rsa" key), '#' starting a
// comment, blank lines ignored. file names the source in errors.
func ParseRecipients(file string, r io.Reader) ([]Recipient, error) {
	var out []Recipient
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line, comment, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		comment = strings.TrimSpace(comment)
		if line == "" {
			continue
		}
		rec, key, sshComment, err := parseRecipient(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", file, n, err)
		}
		if prev, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s:%d: the same key as line %d", file, n, prev)
		}
		seen[key] = n
		if comment == "" {
			comment = sshComment
		}
		out = append(out, Recipient{Key: key, Comment: comment, Line: n, Recipient: rec})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return out, nil
}

func parseRecipient(line string) (r age.Recipient, key, comment string, err error) {
	switch {
	case strings.HasPrefix(line, "age1"):
		f := strings.Fields(line)
		if len(f) != 1 {
			return nil, "", "", fmt.Errorf("unexpected text after the key %q (start comments with #)", f[0])
		}
		rs, err := age.ParseRecipients(strings.NewReader(f[0]))
		if err != nil || len(rs) != 1 {
			return nil, "", "", fmt.Errorf("invalid age public key %q", abbrev(f[0]))
		}
		return rs[0], f[0], "", nil
	case strings.HasPrefix(line, "ssh-"):
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, "", "", fmt.Errorf("invalid SSH public key %q", abbrev(line))
		}
		key = f[0] + " " + f[1]
		r, err := agessh.ParseRecipient(key)
		if err != nil {
			return nil, "", "", fmt.Errorf("SSH key %q: %v (want ssh-ed25519 or ssh-rsa)", abbrev(key), err)
		}
		return r, key, strings.Join(f[2:], " "), nil
	}
	return nil, "", "", fmt.Errorf("%q is not a public key (want \"age1…\" or \"ssh-ed25519 …\")", abbrev(line))
}

func abbrev(s string) string {
	if len(s) > 40 {
		return s[:37] + "…"
	}
	return s
}

// Encrypt encrypts plaintext to every recipient, in age's binary format.
func Encrypt(plaintext []byte, rs []Recipient) ([]byte, error) {
	if len(rs) == 0 {
		return nil, errors.New("no recipients")
	}
	ars := make([]age.Recipient, len(rs))
	for i, r := range rs {
		ars[i] = r.Recipient
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, ars...)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(plaintext); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ErrNotRecipient means none of the identities can decrypt a secret.
var ErrNotRecipient = errors.New("not a recipient")

// Decrypt decrypts an age ciphertext with the first identity that can.
// It returns an error wrapping ErrNotRecipient when none can.
func Decrypt(ciphertext []byte, ids ...age.Identity) ([]byte, error) {
	r, err := age.Decrypt(bytes.NewReader(ciphertext), ids...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, ErrNotRecipient
		}
		return nil, fmt.Errorf("not a valid age file: %w", err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("not a valid age file: %w", err)
	}
	return b, nil
}

// Stanzas counts the recipients a ciphertext was encrypted to, from its
// header, by type ("X25519", "ssh-ed25519", …).
func Stanzas(ciphertext []byte) (map[string]int, error) {
	hdr, err := age.ExtractHeader(bytes.NewReader(ciphertext))
	if err != nil {
		return nil, fmt.Errorf("not a valid age file: %w", err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(hdr), "\n") {
		if rest, ok := strings.CutPrefix(line, "-> "); ok {
			typ, _, _ := strings.Cut(rest, " ")
			out[typ]++
		}
	}
	return out, nil
}

// Check reports whether b looks like an age file, without decrypting it.
func Check(b []byte) error {
	_, err := Stanzas(b)
	return err
}

// HostKey is the machine's identity.
type HostKey struct {
	*age.X25519Identity
	// Path is the file it was read from.
	Path string
}

// PublicKey is the key to add to recipients.txt for this machine.
func (h *HostKey) PublicKey() string { return h.Recipient().String() }

// EnsureHostKey reads ROOT/host.key, creating it (0600) with a new X25519
// identity when it does not exist. A key readable by others is tightened.
func EnsureHostKey(root string) (*HostKey, error) {
	path := filepath.Join(root, HostKeyFile)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			return nil, fmt.Errorf("host key: %w", err)
		}
		content := fmt.Sprintf("# hostel machine identity; keep it secret.\n# created: %s\n# public key: %s\n%s\n",
			time.Now().UTC().Format(time.RFC3339), id.Recipient(), id)
		if err := atomicfile.WriteFile(path, []byte(content), 0o600); err != nil {
			return nil, fmt.Errorf("host key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("host key %s: not a regular file", path)
	}
	if fi.Mode().Perm() != 0o600 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("host key: %w", err)
		}
	}
	return ReadHostKey(path)
}

// ReadHostKey reads a host key file.
func ReadHostKey(path string) (*HostKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("host key %s: %v", path, err)
	}
	x, ok := ids[0].(*age.X25519Identity)
	if len(ids) != 1 || !ok {
		return nil, fmt.Errorf("host key %s: want exactly one age X25519 identity", path)
	}
	return &HostKey{X25519Identity: x, Path: path}, nil
}

// ReadIdentity reads an admin's identity file: an age identity file (one or
// more AGE-SECRET-KEY-1… lines) or an unencrypted SSH private key.
func ReadIdentity(path string) ([]age.Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if bytes.Contains(b, []byte("-----BEGIN")) {
		id, err := agessh.ParseIdentity(b)
		if err != nil {
			var pm *ssh.PassphraseMissingError
			if errors.As(err, &pm) {
				return nil, fmt.Errorf("identity %s: the SSH key is protected by a passphrase; use an unencrypted key or an age identity", path)
			}
			return nil, fmt.Errorf("identity %s: %v", path, err)
		}
		return []age.Identity{id}, nil
	}
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("identity %s: %v", path, err)
	}
	return ids, nil
}
