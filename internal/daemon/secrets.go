package daemon

import (
	"context"

	"hostel/internal/api"
	"hostel/internal/keyring"
	"hostel/internal/node"
	"hostel/internal/peer"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
)

var _ api.SecretsDaemon = (*Daemon)(nil)

// checkSecrets checks, before a deploy changes anything, the secrets the
// spec's services list, and returns the ciphertexts the new generation
// keeps. A secret is decrypted only by the node that runs a service that
// lists it — the agent's secrets.Preparer, as it prepares the instance
// placed there — and by no other. A daemon whose node is the
// deployment's only one runs every service, so it decrypts every secret
// now: one it cannot decrypt is refused before anything starts (exit 2).
// Among several nodes, the one a deploy reaches checks the ciphertexts
// without decrypting them; a node that cannot decrypt a secret of a
// service placed on it fails the deploy before the commit, naming the
// service, the secret and the node.
func (d *Daemon) checkSecrets(ctx context.Context, s *spec.Spec, req api.PlanRequest) (map[string][]byte, error) {
	alone, err := d.alone(ctx)
	if err != nil {
		return nil, err
	}
	var secs map[string][]byte
	if alone {
		secs, err = d.hostKey.Check(sourceName(req), s, req.Inputs, req.Secrets)
	} else {
		secs, err = secrets.Ciphertexts(sourceName(req), s, req.Inputs, req.Secrets)
	}
	if err != nil {
		return nil, api.Invalid(err)
	}
	return secs, nil
}

// alone reports whether this daemon's node is the only node that reports
// itself: placement puts every instance on it.
func (d *Daemon) alone(ctx context.Context) (bool, error) {
	recs, err := d.store.Records(ctx, node.KindNode)
	if err != nil {
		return false, err
	}
	for _, r := range recs {
		if r.Key != d.nodeName() {
			return false, nil
		}
	}
	return true, nil
}

// SecretsRecipient implements api.SecretsDaemon: this machine's public
// key, and in a cluster (the state in etcd) every node's.
func (d *Daemon) SecretsRecipient(ctx context.Context) (*api.SecretsRecipient, error) {
	out := &api.SecretsRecipient{PublicKey: d.hostKey.PublicKey()}
	if !d.opts.Store.etcd() {
		return out, nil
	}
	ms, err := d.keys.Members(ctx)
	if err != nil {
		return nil, err
	}
	out.Nodes = []api.NodeKey{}
	for _, m := range ms {
		out.Nodes = append(out.Nodes, api.NodeKey{Node: m.Node, Host: m.Host, PublicKey: m.Key, Self: m.Self})
	}
	return out, nil
}

// sealedKinds are the kinds of records whose values are sealed to the
// deployment's machine keys: what the keyring reseals when one joins.
var sealedKinds = []string{store.KindPassword, store.KindCertKey, peer.KindCAKey, kindNixSecretKey}

// startKeyring makes this machine one of the deployment's (its key in the
// store), moves the role passwords older daemons kept in files into the
// store, sealed, and keeps sealing what this machine can open to every
// machine that joins (keyring.Follow) until the daemon closes.
func (d *Daemon) startKeyring(ctx context.Context) error {
	d.keys = keyring.New(d.store, d.hostKey)
	if err := d.keys.JoinNode(ctx, d.nodeName()); err != nil {
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
