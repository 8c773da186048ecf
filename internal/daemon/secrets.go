package daemon

import (
	"context"

	"hostel/internal/api"
	"hostel/internal/keyring"
	"hostel/internal/peer"
	"hostel/internal/spec"
	"hostel/internal/store"
)

var _ api.SecretsDaemon = (*Daemon)(nil)

// checkSecrets makes sure, before a deploy changes anything, that this
// machine can decrypt every secret the spec's services list; it returns the
// ciphertexts the new generation keeps.
func (d *Daemon) checkSecrets(s *spec.Spec, req api.PlanRequest) (map[string][]byte, error) {
	secs, err := d.hostKey.Check(sourceName(req), s, req.Inputs, req.Secrets)
	if err != nil {
		return nil, api.Invalid(err)
	}
	return secs, nil
}

// SecretsRecipient implements api.SecretsDaemon: this machine's public key.
func (d *Daemon) SecretsRecipient(ctx context.Context) (*api.SecretsRecipient, error) {
	return &api.SecretsRecipient{PublicKey: d.hostKey.PublicKey()}, nil
}

// sealedKinds are the kinds of records whose values are sealed to the
// deployment's machine keys: what the keyring reseals when one joins.
var sealedKinds = []string{store.KindPassword, store.KindCertKey, peer.KindCAKey}

// startKeyring makes this machine one of the deployment's (its key in the
// store), moves the role passwords older daemons kept in files into the
// store, sealed, and keeps sealing what this machine can open to every
// machine that joins (keyring.Follow) until the daemon closes.
func (d *Daemon) startKeyring(ctx context.Context) error {
	d.keys = keyring.New(d.store, d.hostKey)
	if err := d.keys.Join(ctx); err != nil {
		return err
	}
	if err := migratePasswords(ctx, d.opts.Root, d.store, d.keys); err != nil {
		return err
	}
	fctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.keys.Follow(fctx, d.logf, sealedKinds...)
	}()
	d.stopKeys = func() { cancel(); <-done }
	return nil
}
