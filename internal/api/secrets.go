package api

import (
	"context"
	"net/http"
)

// SecretsRecipient is `GET /v1/secrets/recipient`: the machine's public key,
// to add to a repository's secrets/recipients.txt.
type SecretsRecipient struct {
	PublicKey string `json:"public_key"`
	// Nodes are the public keys of every machine of the cluster, from the
	// store, by node name; nil for a daemon alone (its state not in etcd).
	Nodes []NodeKey `json:"nodes,omitempty"`
}

// NodeKey is one machine's public key in a cluster.
type NodeKey struct {
	// Node is its node's name; "" for a machine whose daemon has not
	// started since nodes were named with their keys.
	Node string `json:"node"`
	// Host is its host name.
	Host      string `json:"host,omitempty"`
	PublicKey string `json:"public_key"`
	// Self marks the machine of the daemon that answered.
	Self bool `json:"self,omitempty"`
}

// SecretsDaemon is what a daemon that holds a machine identity serves, in
// addition to Daemon.
type SecretsDaemon interface {
	SecretsRecipient(ctx context.Context) (*SecretsRecipient, error)
}

// handleSecrets adds the secrets endpoints when d serves them.
func handleSecrets(mux *http.ServeMux, d Daemon) {
	sd, ok := d.(SecretsDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("GET /v1/secrets/recipient", func(w http.ResponseWriter, r *http.Request) {
		rec, err := sd.SecretsRecipient(r.Context())
		reply(w, rec, err)
	})
}

// SecretsRecipient returns the daemon's machine public key.
func (c *Client) SecretsRecipient(ctx context.Context) (*SecretsRecipient, error) {
	var r SecretsRecipient
	return &r, c.call(ctx, http.MethodGet, "/v1/secrets/recipient", nil, &r)
}
