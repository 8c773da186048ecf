package secrets

import (
	"context"
	"errors"
	"fmt"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// notRecipient is the message for a secret this machine cannot decrypt.
// node is the name of this machine's node in a cluster, where a deploy's
// nodes each decrypt their own services' secrets; "" on a machine alone.
func (h *HostKey) notRecipient(name, node string) string {
	if node == "" {
		return fmt.Sprintf("secret %q (%s/%s%s) cannot be decrypted here: this machine (%s) is not one of its recipients; add that key to %s/%s and run `hostel secrets rekey`",
			name, Dir, name, Ext, h.PublicKey(), Dir, RecipientsFile)
	}
	return fmt.Sprintf("secret %q (%s/%s%s) cannot be decrypted on node %q, which runs it: its key (%s) is not one of the secret's recipients; add it to %s/%s (`hostel secrets recipients` lists every node's key) and run `hostel secrets rekey`",
		name, Dir, name, Ext, node, h.PublicKey(), Dir, RecipientsFile)
}

// Ciphertexts checks, without decrypting anything, the secrets a deploy
// carries: every secret a service of s lists must come with its
// ciphertext, match the hash in in.Secrets and be an age file. It returns
// the ciphertexts the generation keeps (those some service uses). Errors
// are *spec.Error naming file, service and field.
//
// Which machine decrypts a secret is not decided here: the node that runs
// a service decrypts its secrets as it prepares the service's instance
// (Preparer), and no other does.
func Ciphertexts(file string, s *spec.Spec, in spec.Inputs, ciphertexts map[string][]byte) (map[string][]byte, error) {
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
			if err := Check(ct); err != nil {
				return nil, fail(fmt.Sprintf("secret %q: %v", name, err))
			}
			keep[name] = ct
		}
	}
	if len(keep) == 0 {
		return nil, nil
	}
	return keep, nil
}

// Check is what a machine that runs every service of s — one alone, not
// a node among others — does before a deploy changes anything: the
// checks of Ciphertexts, and every secret must decrypt with this
// machine's key, so that one it cannot decrypt is refused before anything
// starts. It returns the ciphertexts the generation keeps. Errors are
// *spec.Error naming file, service and field; they never hold plaintext.
func (h *HostKey) Check(file string, s *spec.Spec, in spec.Inputs, ciphertexts map[string][]byte) (map[string][]byte, error) {
	keep, err := Ciphertexts(file, s, in, ciphertexts)
	if err != nil {
		return nil, err
	}
	tried := map[string]bool{}
	for _, svc := range s.Names() {
		for _, name := range s.Services[svc].Secrets {
			if tried[name] {
				continue
			}
			tried[name] = true
			pt, err := Decrypt(keep[name], h)
			if errors.Is(err, ErrNotRecipient) {
				return nil, &spec.Error{File: file, Service: svc, Field: "secrets", Msg: h.notRecipient(name, "")}
			} else if err != nil {
				return nil, &spec.Error{File: file, Service: svc, Field: "secrets", Msg: fmt.Sprintf("secret %q: %v", name, err)}
			}
			wipe(pt)
		}
	}
	return keep, nil
}

// Preparer gives a new version the plaintext of the secrets its service
// lists, as supervisor credentials, decrypted from the generation's
// ciphertexts with the machine's key. The agent runs it only for the
// instances placed on its node: a node decrypts the secrets of the
// services it runs, and no others.
type Preparer struct {
	Key *HostKey
	// Node is the name of the node the agent runs, for the message when
	// Key is not one of a secret's recipients; "" on a machine alone.
	Node string
}

// Prepare implements deploy.Preparer.
func (p *Preparer) Prepare(_ context.Context, g *spec.Generation, service string, cfg *supervisor.Config) error {
	svc := g.Spec.Services[service]
	if svc == nil || len(svc.Secrets) == 0 {
		return nil
	}
	creds := make(map[string][]byte, len(svc.Secrets))
	fail := func(err error) error {
		for _, b := range creds {
			wipe(b)
		}
		return err
	}
	for _, name := range svc.Secrets {
		ct, ok := g.Secrets[name]
		if !ok {
			return fail(fmt.Errorf("secret %q: generation %d holds no ciphertext for it", name, g.Number))
		}
		pt, err := Decrypt(ct, p.Key)
		if errors.Is(err, ErrNotRecipient) {
			return fail(errors.New(p.Key.notRecipient(name, p.Node)))
		} else if err != nil {
			return fail(fmt.Errorf("secret %q: %w", name, err))
		}
		creds[name] = pt
	}
	cfg.Credentials = creds
	return nil
}
