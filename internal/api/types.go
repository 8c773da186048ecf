// Package api is the daemon's HTTP API, served on the unix socket
// ROOT/hostel.sock, and the client the CLI uses to reach it. The wire types
// here are the contract's JSON output: fields are only ever added.
package api

import (
	"encoding/json"
	"time"

	"hostel/internal/spec"
)

// PlanRequest carries a spec in canonical JSON with its inputs.
type PlanRequest struct {
	// Source names the file the spec came from, for messages.
	Source string          `json:"source"`
	Spec   json.RawMessage `json:"spec"`
	Inputs spec.Inputs     `json:"inputs"`
	// Secrets are the age ciphertexts (never plaintext) of the secrets the
	// services list, by name; nil when none does.
	Secrets map[string][]byte `json:"secrets,omitempty"`
}

// DeployRequest is a PlanRequest to apply.
type DeployRequest struct {
	PlanRequest
	// Confirm is the confirm window as a Go duration; "" means the default
	// (30s) and "0s" skips it.
	Confirm string `json:"confirm,omitempty"`
}

// RollbackRequest names the generation to return to; 0 means the previous one.
type RollbackRequest struct {
	To uint64 `json:"to"`
}

// RestartRequest names the service to restart.
type RestartRequest struct {
	Service string `json:"service"`
}

// GCRequest keeps the newest Keep generations.
type GCRequest struct {
	Keep int `json:"keep"`
}

// GCResult says what gc removed.
type GCResult struct {
	Removed []uint64 `json:"removed"`
	Kept    []uint64 `json:"kept"`
	// Unpinned are the versions ("service-version") whose Nix GC roots gc removed.
	Unpinned []string `json:"unpinned"`
	// FreedPaths and FreedBytes are what the Nix garbage collector deleted;
	// zero without Nix.
	FreedPaths int   `json:"freed_paths"`
	FreedBytes int64 `json:"freed_bytes"`
}

// Listen holds the addresses the daemon actually bound.
type Listen struct {
	HTTP  string `json:"http"`
	HTTPS string `json:"https"`
}

// Status is `hostel status --json`.
type Status struct {
	Generation uint64          `json:"generation"`
	Listen     Listen          `json:"listen"`
	Services   []ServiceStatus `json:"services"`
	// InternalCA is the PEM of the root of hostel's internal CA, which
	// signs the certificates of immutable version names; "" when HTTPS is
	// off.
	InternalCA string `json:"internal_ca,omitempty"`
	// Certificates is the certificate state of each public host served
	// over HTTPS, by host; nil when HTTPS is off.
	Certificates []CertStatus `json:"certificates,omitempty"`
}

// CertStatus is the certificate of one public host.
type CertStatus struct {
	Host    string `json:"host"`
	Service string `json:"service"`
	// State is "valid", "failing", "pending" or "none" (no acme block).
	State string `json:"state"`
	// Status is the line users see: "valid until …", "failing: …".
	Status string `json:"status"`
	// NotAfter is when the served certificate expires; nil if none is served.
	NotAfter *time.Time `json:"not_after,omitempty"`
	// Error is the last failure to obtain or renew, if any since the last success.
	Error string `json:"error,omitempty"`
}

// ServiceStatus is one version of a service in Status.
type ServiceStatus struct {
	Name     string   `json:"name"`
	Version  string   `json:"version"`
	State    string   `json:"state"`
	PID      int      `json:"pid"`
	URL      string   `json:"url"`
	Domains  []string `json:"domains"`
	Ready    bool     `json:"ready"`
	Restarts int      `json:"restarts"`
	InFlight int64    `json:"in_flight"`
	Error    string   `json:"error,omitempty"`
	// LastExit is how the last process ended: "exit 1", "signal 9", or
	// "oom" when the kernel killed it for exceeding its memory limit;
	// empty while none has ended.
	LastExit string `json:"last_exit,omitempty"`
	// MemoryBytes is the memory its processes use now, CPUSeconds the CPU
	// time they used since it started; both 0 where limits are not
	// enforced (no cgroups).
	MemoryBytes int64   `json:"memory_bytes"`
	CPUSeconds  float64 `json:"cpu_seconds"`
	// Package is the version's package (a Nix store path or a directory); empty if it has none.
	Package string `json:"package,omitempty"`
	// Database is the service's PostgreSQL database; nil when it has none.
	Database *DatabaseStatus `json:"database,omitempty"`
}

// Generation is one row of `hostel generations --json`.
type Generation struct {
	Number   uint64            `json:"number"`
	Time     time.Time         `json:"time"`
	SpecHash string            `json:"spec_hash"`
	Source   string            `json:"source,omitempty"`
	Current  bool              `json:"current"`
	Versions map[string]string `json:"versions"`
	// ClosureSize is the size in bytes of the Nix closures of the
	// generation's store paths (0 when none are in this machine's store).
	ClosureSize int64 `json:"closure_size"`
}

// Generations is `hostel generations --json`.
type Generations struct {
	Current     uint64       `json:"current"`
	Generations []Generation `json:"generations"`
}

// Event is one line of a streamed response: progress, then a result or an error.
type Event struct {
	Progress string          `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *Error          `json:"error,omitempty"`
}

// Error kinds, which the CLI maps to exit codes.
const (
	KindInvalid = "invalid" // the input is wrong; nothing changed (exit 2)
	KindFailed  = "failed"  // the operation failed (exit 1)
)

// Error is an error as the API reports it.
type Error struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }
