package secrets

import (
	"context"
	"errors"
	"fmt"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// notRecipient is the message for a secret this machine cannot decrypt.
func (h *HostKey) notRecipient(name string) string {
	return fmt.Sprintf("secret %q (%s/%s%s) cannot be decrypted here: this machine (%s) is not one of its recipients; add that key to %s/%s and run `hostel secrets rekey`",
		name, Dir, name, Ext, h.PublicKey(), Dir, RecipientsFile)
}

// Check is what the daemon does before a deploy changes anything: every
// secret a service of s lists must come with its ciphertext, match the hash
// in in.Secrets, and decrypt with this machine's key. It returns the
// ciphertexts the generation keeps (those some service uses). Errors are
// *spec.Error naming file, service and field; they never hold plaintext.
func (h *HostKey) Check(file string, s *spec.Spec, in spec.Inputs, ciphertexts map[string][]byte) (map[string][]byte, error) {
	keep := map[string][]byte{}
	for _, svc := range s.Names() {
		for _, name := range s.Services[svc].Secrets {
			fail := func(msg string) error { return &spec.Error{File: file, Service: svc, Field: "secrets", Msg: msg} }
			if _, done := keep[name]; done {
				continue
			}
			ct, ok := ciphertexts[name]
			if !ok {
				return nil, fail(fmt.Sprintf("secret %q: the request carries no ciphertext for it", name))
			}
			if in.Secrets[name] != Hash(ct) {
				return nil, fail(fmt.Sprintf("secret %q: its ciphertext does not match inputs.secrets", name))
			}
			pt, err := Decrypt(ct, h)
			if errors.Is(err, ErrNotRecipient) {
				return nil, fail(h.notRecipient(name))
			} else if err != nil {
				return nil, fail(fmt.Sprintf("secret %q: %v", name, err))
			}
			wipe(pt)
			keep[name] = ct
		}
	}
	if len(keep) == 0 {
		return nil, nil
	}
	return keep, nil
}

// Preparer gives a new version the plaintext of the secrets its service
// lists, as supervisor credentials, decrypted from the generation's
// ciphertexts with the machine's key.
type Preparer struct {
	Key *HostKey
}

// Prepare implements deploy.Preparer.
func (p *Preparer) Prepare(_ context.Context, g *spec.Generation, service string, cfg *supervisor.Config) error {
	svc := g.Spec.Services[service]
	if svc == nil || len(svc.Secrets) == 0 {
		return nil
	}
	creds := make(map[string][]byte, len(svc.Secrets))
	for _, name := range svc.Secrets {
		ct, ok := g.Secrets[name]
		if !ok {
			return fmt.Errorf("secret %q: generation %d holds no ciphertext for it", name, g.Number)
		}
		pt, err := Decrypt(ct, p.Key)
		if errors.Is(err, ErrNotRecipient) {
			return errors.New(p.Key.notRecipient(name))
		} else if err != nil {
			return fmt.Errorf("secret %q: %w", name, err)
		}
		creds[name] = pt
	}
	cfg.Credentials = creds
	return nil
}
