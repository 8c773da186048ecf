package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"hostel/internal/secrets"
	"hostel/internal/spec"
)

// GatherSecrets reads the ciphertext of every secret a service of s lists
// from the secrets directory next to file, records each one's hash in
// in.Secrets (so that a changed secret gives its users new versions) and
// returns the ciphertexts by name. A missing or malformed one is a
// *spec.Error naming the file, the service and the field "secrets".
func GatherSecrets(file string, s *spec.Spec, in *spec.Inputs) (map[string][]byte, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	repo := secrets.Repo{Dir: filepath.Join(filepath.Dir(abs), secrets.Dir)}
	out := map[string][]byte{}
	for _, name := range s.Names() {
		for _, sec := range s.Services[name].Secrets {
			if _, done := out[sec]; done {
				continue
			}
			rel := filepath.Join(secrets.Dir, sec+secrets.Ext)
			fail := func(msg string) error {
				return &spec.Error{File: file, Service: name, Field: "secrets", Msg: msg}
			}
			ct, err := os.ReadFile(repo.Path(sec))
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fail(fmt.Sprintf("secret %q: %s does not exist; create it with: hostel secrets edit %s", sec, rel, sec))
			} else if err != nil {
				return nil, fail(fmt.Sprintf("secret %q: %s", sec, describe(err)))
			}
			if err := secrets.Check(ct); err != nil {
				return nil, fail(fmt.Sprintf("secret %q: %s: %v", sec, rel, err))
			}
			out[sec] = ct
			if in.Secrets == nil {
				in.Secrets = map[string]string{}
			}
			in.Secrets[sec] = secrets.Hash(ct)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}
