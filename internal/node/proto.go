// Package node is the follow half of hostel on one machine: a Follower
// watches what the store asks this node to run (Desired), has the agent
// run it, and reports what runs (Info, one Instance per instance) under
// the node's lease. The engine (internal/deploy, the decide half) talks
// to nodes only through these records, so that it neither knows nor cares
// whether a node is this process or another machine.
//
// The records, all in the store:
//
//	desired/NODE        Desired: written by the engine (fenced on its leadership)
//	node/NODE           Info: the node, and what its last reconcile did (under its lease)
//	instance/NODE/KEY   Instance: one instance as it runs (under its lease)
//	routes/NODE         Routes: the revision its router's table follows (under its lease)
//	unschedulable/NODE  the node is drained (hostel nodes drain): written by the engine, kept until undrain
package node

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// Record kinds of the protocol between the engine and the nodes.
const (
	KindDesired  = "desired"
	KindNode     = "node"
	KindInstance = "instance"
	KindRoutes   = "routes"
	// KindUnschedulable marks a node drained by hand (hostel nodes
	// drain): it takes no instance until undrained. The engine writes it
	// (fenced on its leadership) and deletes it at undrain; no lease, so
	// that it outlives every daemon's restart. Its value is a Drained.
	KindUnschedulable = "unschedulable"
)

// Drained is the value of a KindUnschedulable record.
type Drained struct {
	// Since is when the node was drained.
	Since time.Time `json:"since"`
}

// Desired is what the engine asks one node to run beyond what every
// node runs anyway: every environment's current generation, production
// first. Plain data, kept in the store (KindDesired, keyed by the node's
// name); the zero value asks for the currents alone.
type Desired struct {
	// Node is the node asked.
	Node string `json:"node"`
	// Keep are generations, by number, whose instances keep running
	// beside the currents: the previous generation an open confirm
	// window may switch back to.
	Keep []uint64 `json:"keep,omitempty"`
	// Staged is a generation about to go live: its instances that do
	// not run start (prepared, health-checked) beside what runs. A
	// deploy's is not committed yet (Number 0); a rollback's is. The
	// instances it alone started are stopped again, their preparation
	// undone, if it is withdrawn before a current generation holds them.
	Staged *spec.Generation `json:"staged,omitempty"`
	// Asleep are kept versions that stay callable without running
	// (old_versions "callable"), needs first.
	Asleep []Callable `json:"asleep,omitempty"`
	// Stopped are instances that must not run for now though a
	// generation holds them: stopped once their requests are done, and
	// started again (same configuration) when they leave the list — a
	// database restore runs meanwhile.
	Stopped []spec.VersionKey `json:"stopped,omitempty"`
	// Placed says that Instances are the instances this node runs of the
	// generations above — the placement, decided by the engine with the
	// generation — and no other; without it (a store written before
	// placement) the node runs every one.
	Placed    bool              `json:"placed,omitempty"`
	Instances []spec.VersionKey `json:"instances,omitempty"`
	// Restarts asks for instances to be restarted in place: each time an
	// instance's count goes up, it is restarted once (a sleeping one is
	// woken instead). The engine takes a request back once every node
	// carried it out; those a node finds at its start are done (what runs
	// was started or adopted just then).
	Restarts map[spec.VersionKey]int `json:"restarts,omitempty"`
}

// Callable is one kept version to keep callable: Generation's instance of
// Service, started as planned there.
type Callable struct {
	Generation uint64 `json:"generation"`
	Service    string `json:"service"`
}

// Info is a node as it reports itself (KindNode), and what its last
// reconciles did.
type Info struct {
	Name string `json:"name"`
	// Addr is where other nodes reach it (hostel serve --advertise); ""
	// when it advertises none.
	Addr string `json:"addr,omitempty"`
	// Labels, CPU (cores) and Memory (bytes) are what it offers
	// placement (--labels, --capacity). Unschedulable marks it drained:
	// not reported by the node but read from its KindUnschedulable record
	// (Nodes), which the engine writes.
	Labels        map[string]string `json:"labels,omitempty"`
	CPU           float64           `json:"cpu,omitempty"`
	Memory        int64             `json:"memory,omitempty"`
	Unschedulable bool              `json:"unschedulable,omitempty"`
	// Up is when the node took its lease: its daemon's start.
	Up time.Time `json:"up"`
	// Applied is the store revision of the last state the node made run:
	// everything desired then runs (or failed), and what was no longer
	// desired was drained and stopped.
	Applied uint64 `json:"applied"`
	// Results are what the node's last reconciles did, oldest first (the
	// last KeepResults): one that waits for a revision reads every result
	// at or after it, which a later reconcile does not hide.
	Results []Result `json:"results,omitempty"`
}

// KeepResults is how many of its last reconciles' results a node reports.
const KeepResults = 16

// Result is what one reconcile of a node did.
type Result struct {
	// Applied is the revision of the state it made run.
	Applied uint64 `json:"applied"`
	// Started and Stopped are the versions it started (or adopted) and
	// stopped; Aborted the requests it ended with 504 at a stop grace.
	Started []string `json:"started,omitempty"`
	Stopped []string `json:"stopped,omitempty"`
	Aborted int64    `json:"aborted,omitempty"`
	// Failures are the versions it could not start (or restart).
	Failures []Failure `json:"failures,omitempty"`
}

// Since is what the node's reconciles at revision rev or later did,
// together: their started and stopped versions (sorted, each once), the
// requests they aborted and their failures.
func (i Info) Since(rev uint64) Result {
	out := Result{Applied: i.Applied}
	for _, r := range i.Results {
		if r.Applied < rev {
			continue
		}
		out.Started = append(out.Started, r.Started...)
		out.Stopped = append(out.Stopped, r.Stopped...)
		out.Aborted += r.Aborted
		out.Failures = append(out.Failures, r.Failures...)
	}
	slices.Sort(out.Started)
	slices.Sort(out.Stopped)
	out.Started, out.Stopped = slices.Compact(out.Started), slices.Compact(out.Stopped)
	return out
}

// Failure is one version a node could not start (or restart).
type Failure struct {
	Service string       `json:"service"`
	Version spec.Version `json:"version"`
	Reason  string       `json:"reason"`
	// Refused is set when what was asked cannot be done as things stand
	// (a restart of a version asleep and paused): the asker's input
	// error, not a failure of the version.
	Refused bool `json:"refused,omitempty"`
}

// Instance is one instance as its node reports it (KindInstance).
type Instance struct {
	Node string          `json:"node"`
	Key  spec.VersionKey `json:"key"`
	// Addr is where it serves ("127.0.0.1:PORT"); "" while asleep.
	Addr string `json:"addr,omitempty"`
	// State is the supervisor's (starting, running, unhealthy, failed,
	// stopped), or "idle" while asleep.
	State    supervisor.State `json:"state"`
	Ready    bool             `json:"ready"`
	Restarts int              `json:"restarts"`
	LastExit string           `json:"last_exit,omitempty"`
	Error    string           `json:"error,omitempty"`
	// Health is the last check of its health path; nil without one.
	Health   *HealthCheck `json:"health,omitempty"`
	Draining bool         `json:"draining,omitempty"`
	// PID is its process's; 0 while asleep.
	PID int `json:"pid,omitempty"`
}

// HealthCheck is the result of one health check.
type HealthCheck struct {
	OK    bool      `json:"ok"`
	At    time.Time `json:"at"`
	Error string    `json:"error,omitempty"`
}

// StateIdle is an Instance's State while it sleeps.
const StateIdle supervisor.State = "idle"

// Routes is what a node's router follows (KindRoutes).
type Routes struct {
	// Applied is the store revision the router's table was built from.
	Applied uint64 `json:"applied"`
}

// InstanceKey is the record key of node's report of instance key.
func InstanceKey(node string, key spec.VersionKey) string { return node + "/" + string(key) }

// SplitInstanceKey is InstanceKey's inverse.
func SplitInstanceKey(k string) (node string, key spec.VersionKey, ok bool) {
	n, v, ok := strings.Cut(k, "/")
	return n, spec.VersionKey(v), ok
}

// decode reads a record's value into v, naming the record in an error.
func decode(kind, key string, data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s record %s: %w", kind, key, err)
	}
	return nil
}

// DecodeDesired reads a KindDesired record.
func DecodeDesired(key string, data []byte) (Desired, error) {
	var d Desired
	err := decode(KindDesired, key, data, &d)
	return d, err
}

// DecodeInfo reads a KindNode record.
func DecodeInfo(key string, data []byte) (Info, error) {
	var i Info
	err := decode(KindNode, key, data, &i)
	return i, err
}

// DecodeInstance reads a KindInstance record.
func DecodeInstance(key string, data []byte) (Instance, error) {
	var i Instance
	err := decode(KindInstance, key, data, &i)
	return i, err
}

// DecodeRoutes reads a KindRoutes record.
func DecodeRoutes(key string, data []byte) (Routes, error) {
	var r Routes
	err := decode(KindRoutes, key, data, &r)
	return r, err
}
