package api

import (
	"context"
	"net/http"
	"time"
)

// Nodes is `hostel nodes --json`: the nodes of the deployment, as they
// report themselves to the store, and what is placed on each.
type Nodes struct {
	Nodes []Node `json:"nodes"`
}

// Node is one node in Nodes.
type Node struct {
	Name string `json:"name"`
	// Address is where other nodes reach it (hostel serve --advertise);
	// "" when it advertises none.
	Address string            `json:"address,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	// Capacity is what the node gives instances' requests; Use what the
	// instances placed on it request.
	Capacity Resources `json:"capacity"`
	Use      Resources `json:"use"`
	// Drained is set on a node that takes no instance.
	Drained bool `json:"drained,omitempty"`
	// Up is when the node's daemon took its lease; LeaseAgeSeconds how
	// long ago.
	Up              time.Time `json:"up"`
	LeaseAgeSeconds float64   `json:"lease_age_seconds"`
	// Leader is set on the node whose daemon leads the engine.
	Leader bool `json:"leader,omitempty"`
	// Instances are the instances placed on it.
	Instances []string `json:"instances"`
}

// Resources are cpu (cores) and memory (bytes).
type Resources struct {
	CPU    float64 `json:"cpu"`
	Memory int64   `json:"memory_bytes"`
}

// NodesDaemon is a daemon that lists the deployment's nodes.
type NodesDaemon interface {
	Nodes(ctx context.Context) (*Nodes, error)
}

// handleNodes adds GET /v1/nodes when d lists nodes.
func handleNodes(mux *http.ServeMux, d Daemon) {
	nd, ok := d.(NodesDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		n, err := nd.Nodes(r.Context())
		reply(w, n, err)
	})
}

// Nodes lists the deployment's nodes.
func (c *Client) Nodes(ctx context.Context) (*Nodes, error) {
	var n Nodes
	return &n, c.call(ctx, http.MethodGet, "/v1/nodes", nil, &n)
}
