package daemon

import (
	"context"

	"hostel/internal/api"
	"hostel/internal/spec"
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
