package api

import (
	"context"
	"net/http"
	"net/url"
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

// Drain is what `hostel nodes drain NAME` did: the instances it moved
// off the node, each started and ready elsewhere before it stopped there.
type Drain struct {
	Node  string `json:"node"`
	Moved []Move `json:"moved"`
	// Stopped are the versions stopped on the node.
	Stopped []string `json:"stopped"`
}

// Move is one instance moved from nodes to others.
type Move struct {
	Instance string   `json:"instance"`
	From     []string `json:"from"`
	To       []string `json:"to"`
}

// Undrain is what `hostel nodes undrain NAME` did.
type Undrain struct {
	Node string `json:"node"`
	// WasDrained is false for a node that was not drained: nothing
	// changed.
	WasDrained bool `json:"was_drained"`
}

// DrainDaemon is a daemon that drains nodes: planned maintenance.
type DrainDaemon interface {
	Drain(ctx context.Context, name string) (*Drain, error)
	Undrain(ctx context.Context, name string) (*Undrain, error)
}

// handleNodes adds GET /v1/nodes when d lists nodes, and the drains when
// it drains them.
func handleNodes(mux *http.ServeMux, d Daemon) {
	if nd, ok := d.(NodesDaemon); ok {
		mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
			n, err := nd.Nodes(r.Context())
			reply(w, n, err)
		})
	}
	if dd, ok := d.(DrainDaemon); ok {
		mux.HandleFunc("POST /v1/nodes/{name}/drain", func(w http.ResponseWriter, r *http.Request) {
			res, err := dd.Drain(r.Context(), r.PathValue("name"))
			reply(w, res, err)
		})
		mux.HandleFunc("POST /v1/nodes/{name}/undrain", func(w http.ResponseWriter, r *http.Request) {
			res, err := dd.Undrain(r.Context(), r.PathValue("name"))
			reply(w, res, err)
		})
	}
}

// DrainNode moves node name's instances to the other nodes and keeps it
// unschedulable until UndrainNode.
func (c *Client) DrainNode(ctx context.Context, name string) (*Drain, error) {
	var res Drain
	return &res, c.call(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/drain", nil, &res)
}

// UndrainNode makes node name schedulable again.
func (c *Client) UndrainNode(ctx context.Context, name string) (*Undrain, error) {
	var res Undrain
	return &res, c.call(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/undrain", nil, &res)
}

// Nodes lists the deployment's nodes.
func (c *Client) Nodes(ctx context.Context) (*Nodes, error) {
	var n Nodes
	return &n, c.call(ctx, http.MethodGet, "/v1/nodes", nil, &n)
}
