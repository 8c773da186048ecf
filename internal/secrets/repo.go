package secrets

import (
	"bytes"
	"errors"
	"fmt"
	"hostel/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"golang.org/x/sys/unix"
)

// Repo is a repository's secrets directory.
type Repo struct {
	// Dir is the secrets directory, usually SPECDIR/secrets.
	Dir string
}

// Path is the file of secret name.
func (r Repo) Path(name string) string { return filepath.Join(r.Dir, name+Ext) }

// RecipientsPath is the recipients file.
func (r Repo) RecipientsPath() string { return filepath.Join(r.Dir, RecipientsFile) }

// Recipients reads the recipients file; a missing or empty one is an error
// that says how to start one.
func (r Repo) Recipients() ([]Recipient, error) {
	p := r.RecipientsPath()
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist; start it with this machine's key: hostel secrets recipients >> %s", p, p)
	} else if err != nil {
		return nil, err
	}
	rs, err := ParseRecipients(p, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("%s lists no recipients; add this machine's key: hostel secrets recipients >> %s", p, p)
	}
	return rs, nil
}

// Names lists the secrets in the directory, sorted.
func (r Repo) Names() ([]string, error) {
	ents, err := os.ReadDir(r.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), Ext)
		if ok && e.Type().IsRegular() && ValidName(name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// Read returns a secret's ciphertext.
func (r Repo) Read(name string) ([]byte, error) { return os.ReadFile(r.Path(name)) }

// Write encrypts plaintext to the recipients and writes it as secret name.
func (r Repo) Write(name string, plaintext []byte, rs []Recipient) error {
	ct, err := Encrypt(plaintext, rs)
	if err != nil {
		return fmt.Errorf("%s: %w", r.Path(name), err)
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(r.Path(name), ct, 0o644)
}

// Open decrypts secret name with ids; an error names the file and, when
// none of ids is a recipient, says so.
func (r Repo) Open(name string, ids []age.Identity) ([]byte, error) {
	ct, err := r.Read(name)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: no identity to decrypt it with; pass --identity FILE or set HOSTEL_IDENTITY", r.Path(name))
	}
	pt, err := Decrypt(ct, ids...)
	if errors.Is(err, ErrNotRecipient) {
		return nil, fmt.Errorf("%s: cannot decrypt: your identity is not one of its recipients (%w)", r.Path(name), err)
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", r.Path(name), err)
	}
	return pt, nil
}

// Editor edits the file at path in place.
type Editor func(path string) error

// Edit decrypts secret name (a missing one starts empty) into a private temp
// file, lets edit change it, re-encrypts it to the recipients and shreds the
// temp file. It reports whether the secret changed; an unchanged secret is
// not rewritten, so versions that use it keep running.
func (r Repo) Edit(name string, ids []age.Identity, edit Editor) (changed bool, err error) {
	if err := CheckName(name); err != nil {
		return false, err
	}
	rs, err := r.Recipients()
	if err != nil {
		return false, err
	}
	var old []byte
	exists := false
	if _, err := os.Stat(r.Path(name)); err == nil {
		exists = true
		if old, err = r.Open(name, ids); err != nil {
			return false, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	defer wipe(old)

	dir, err := os.MkdirTemp(PrivateTempBase(), "hostel-secret-")
	if err != nil {
		return false, err
	}
	defer ShredDir(dir)
	if err := os.Chmod(dir, 0o700); err != nil {
		return false, err
	}
	tmp := filepath.Join(dir, name)
	if err := os.WriteFile(tmp, old, 0o600); err != nil {
		return false, err
	}
	if err := edit(tmp); err != nil {
		return false, err
	}
	neu, err := os.ReadFile(tmp)
	if err != nil {
		return false, err
	}
	defer wipe(neu)
	switch {
	case exists && bytes.Equal(old, neu):
		return false, nil
	case !exists && len(neu) == 0:
		return false, fmt.Errorf("%s: nothing was written; the secret was not created", r.Path(name))
	}
	if err := r.Write(name, neu, rs); err != nil {
		return false, err
	}
	return true, nil
}

// Rekey re-encrypts every secret to the current recipients. It decrypts all
// of them first, so that nothing is rewritten unless every one can be.
func (r Repo) Rekey(ids []age.Identity) ([]string, error) {
	rs, err := r.Recipients()
	if err != nil {
		return nil, err
	}
	names, err := r.Names()
	if err != nil {
		return nil, err
	}
	plain := make(map[string][]byte, len(names))
	defer func() {
		for _, p := range plain {
			wipe(p)
		}
	}()
	for _, n := range names {
		pt, err := r.Open(n, ids)
		if err != nil {
			return nil, err
		}
		plain[n] = pt
	}
	for _, n := range names {
		if err := r.Write(n, plain[n], rs); err != nil {
			return nil, err
		}
	}
	return names, nil
}

// PrivateTempBase is where plaintext being edited is put: /dev/shm when it
// is memory-backed, else the system's temp directory.
func PrivateTempBase() string {
	if MemoryBacked("/dev/shm") {
		return "/dev/shm"
	}
	return os.TempDir()
}

// MemoryBacked reports whether path is on tmpfs or ramfs.
func MemoryBacked(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}

// ShredDir overwrites every regular file under dir with zeros, syncs, and
// removes dir. Editors leave swap and backup files beside the one they edit;
// they are shredded too.
func ShredDir(dir string) error {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			shredFile(p)
		}
		return nil
	})
	return os.RemoveAll(dir)
}

func shredFile(p string) {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return
	}
	zero := make([]byte, 32<<10)
	for left := fi.Size(); left > 0; {
		n := min(left, int64(len(zero)))
		if _, err := f.Write(zero[:n]); err != nil {
			return
		}
		left -= n
	}
	f.Sync()
}

// wipe zeroes a plaintext buffer once it is no longer needed.
func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
