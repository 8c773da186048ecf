// Package api is the daemon's HTTP API, served on the unix socket
// ROOT/hostel.sock, and the client the CLI uses to reach it. The wire types
// here are the contract's JSON output: fields are only ever added.
package api

import (
	"encoding/json"
	"time"

	"hostel/internal/plan"
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
	// Env is the environment planned or deployed to; "" is production.
	Env string `json:"env,omitempty"`
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
	// Env is the environment rolled back; "" is production.
	Env string `json:"env,omitempty"`
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
	// Peer is the node-to-node port, as the other nodes of a cluster
	// reach it (serve --advertise); "" without.
	Peer string `json:"peer,omitempty"`
	// API is the remote API's listener (serve --api-listen); "" without.
	API string `json:"api,omitempty"`
	// Metrics is the Prometheus scraper's listener (serve --metrics); ""
	// without.
	Metrics string `json:"metrics,omitempty"`
}

// Status is `hostel status --json`.
type Status struct {
	Generation uint64          `json:"generation"`
	Listen     Listen          `json:"listen"`
	Services   []ServiceStatus `json:"services"`
	// Confirmation is where the current generation's confirm window
	// stands, as in Generation ("pending" while it is open, "failed" for
	// a version that failed after it and could not be switched back);
	// "" when nothing is deployed or it was not recorded.
	Confirmation string `json:"confirmation,omitempty"`
	// ConfirmError says why the current generation's confirmation failed
	// or was superseded.
	ConfirmError string `json:"confirm_error,omitempty"`
	// SwitchedBackFrom is the newest generation when it failed its
	// confirmation and the current one is what it was switched back to; 0
	// otherwise. SwitchBackReason says why.
	SwitchedBackFrom uint64 `json:"switched_back_from,omitempty"`
	SwitchBackReason string `json:"switch_back_reason,omitempty"`
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
	Name    string `json:"name"`
	Version string `json:"version"`
	// Env is the environment whose instance this is (whose data it
	// uses): "production", or a preview's name for its own instance.
	Env      string   `json:"env"`
	State    string   `json:"state"`
	PID      int      `json:"pid"`
	URL      string   `json:"url"`
	Domains  []string `json:"domains"`
	Ready    bool     `json:"ready"`
	Restarts int      `json:"restarts"`
	InFlight int64    `json:"in_flight"`
	Error    string   `json:"error,omitempty"`
	// LastExit is how the last process ended: "exit 1", "signal 9", "oom"
	// when the kernel killed it for exceeding its memory limit, or
	// "unhealthy" when hostel stopped it for failing its health checks (or
	// for not getting ready after a restart); empty while none has ended.
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
	// LastRequest is when its last request ended (or it was started or
	// woken, if none came since), to the second; nil when not routed.
	LastRequest *time.Time `json:"last_request,omitempty"`
	// Wakes counts the times it was woken from sleep (scale to zero);
	// LastWakeSeconds is how long the last wake took.
	Wakes           int     `json:"wakes,omitempty"`
	LastWakeSeconds float64 `json:"last_wake_seconds,omitempty"`
	// Kept is set on a version no current generation holds that stays
	// callable by its immutable name (old_versions "callable") until gc
	// drops the last generation holding it.
	Kept bool `json:"kept,omitempty"`
	// Node is the node whose instance this is (cluster mode: hostel serve
	// --node; the host name by default).
	Node string `json:"node,omitempty"`
	// Health is the last check of its health.path (its readiness probes
	// included); nil without health.path, or while no process has been
	// checked.
	Health *HealthCheck `json:"health,omitempty"`
	// Paused is set while the service is paused by hand (hostel pause):
	// its requests are held until hostel resume.
	Paused *PauseStatus `json:"paused,omitempty"`
}

// HealthCheck is the result of one health check.
type HealthCheck struct {
	OK bool      `json:"ok"`
	At time.Time `json:"at"`
	// Error says why the check failed: "GET /healthz: 500 Internal
	// Server Error", a refused connection, a timeout; "" when it passed.
	Error string `json:"error,omitempty"`
}

// PauseStatus is a pause by hand in ServiceStatus.
type PauseStatus struct {
	// Since is when the service was paused.
	Since time.Time `json:"since"`
	// MaxSeconds is how long a request is held before it gets 503.
	MaxSeconds float64 `json:"max_seconds"`
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
	// Confirmed is true once every new version of the generation stayed
	// healthy through its confirm window.
	Confirmed bool `json:"confirmed"`
	// Confirmation is where its confirm window stands: "pending",
	// "confirmed", "failed", "skipped" (no window ran), "superseded" (a
	// later deploy or a rollback ended it), or "" (not recorded: a
	// generation made by an older hostel).
	Confirmation string `json:"confirmation"`
	// ConfirmError says why the confirmation failed or was superseded.
	ConfirmError string `json:"confirm_error,omitempty"`
	// Plan is what the deploy that made the generation planned: per
	// service, as in `hostel plan --json`, its action, versions and
	// reasons. Absent for a generation made before hostel kept it.
	Plan []plan.Change `json:"plan,omitempty"`
}

// Generations is `hostel generations --json`.
type Generations struct {
	Current     uint64       `json:"current"`
	Generations []Generation `json:"generations"`
}

// DeployResult is what a deploy or a rollback did: the result of
// POST /v1/deploy and /v1/rollback and what `hostel deploy --json` prints,
// also when the operation failed (then with Failures and Error set).
type DeployResult struct {
	// Generation is the generation live when the operation ended.
	Generation uint64 `json:"generation"`
	// Plan is what the deploy planned; nil for a rollback.
	Plan *plan.Plan `json:"plan,omitempty"`
	// Started and Stopped are the versions ("service-version") started and
	// stopped.
	Started []string `json:"started"`
	Stopped []string `json:"stopped"`
	// RolledBack is true when the new generation went live and was
	// switched back, and RolledBackFrom is that generation.
	RolledBack     bool   `json:"rolled_back"`
	RolledBackFrom uint64 `json:"rolled_back_from,omitempty"`
	// Aborted counts requests still in flight to old versions when their
	// stop grace ran out; they were ended with 504.
	Aborted int64 `json:"aborted"`
	// Confirmation is how the confirm window ended, as in Generation;
	// "" for a rollback or a deploy that did not switch.
	Confirmation string `json:"confirmation,omitempty"`
	// Failures name the versions that made the operation fail; nil if it
	// did not, or if no one version is to blame.
	Failures []DeployFailure `json:"failures,omitempty"`
	// Error is why the operation failed; "" when it went through.
	Error string `json:"error,omitempty"`
}

// Steps at which a version can make a deploy fail (DeployFailure.Step).
const (
	StepStart   = "start"   // before the switch: nothing changed
	StepConfirm = "confirm" // after the switch: in the confirm window or later
)

// DeployFailure is one version that made a deploy fail.
type DeployFailure struct {
	Service string `json:"service"`
	Version string `json:"version"`
	// Step is where it failed: StepStart or StepConfirm.
	Step string `json:"step"`
	// Reason is what went wrong.
	Reason string `json:"reason"`
}

// Event is one line of a streamed response: progress, then a result, an
// error, or, for an operation that failed after it had done something,
// both.
type Event struct {
	Progress string        `json:"progress,omitempty"`
	Result   *DeployResult `json:"result,omitempty"`
	Error    *Error        `json:"error,omitempty"`
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
