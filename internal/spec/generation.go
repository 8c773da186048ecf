package spec

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Generation is one applied deploy. Once committed it never changes, but
// for the outcome of its confirm window (Confirm).
type Generation struct {
	// Number counts generations from 1, across environments; it is
	// assigned by the store on commit.
	Number uint64 `json:"number"`
	// Env is the environment the generation belongs to; "" (a generation
	// stored before environments existed) means DefaultEnv.
	Env string `json:"env,omitempty"`
	// Time is when the generation was committed.
	Time time.Time `json:"time"`
	// SpecHash is Hash(Spec, Inputs).
	SpecHash string `json:"spec_hash"`
	// Source names the file the spec came from, for messages.
	Source string `json:"source,omitempty"`
	// Spec is the full resolved spec.
	Spec *Spec `json:"spec"`
	// Inputs are the facts that shaped versions beyond the spec itself.
	Inputs Inputs `json:"inputs"`
	// Versions maps each service to its version.
	Versions map[string]Version `json:"versions"`
	// Secrets holds the age ciphertext of every secret a service uses, by
	// name, so that a rollback or restart can decrypt them again; never
	// plaintext. Nil means no service uses a secret.
	Secrets map[string][]byte `json:"secrets,omitempty"`
	// Shares maps each service whose version this generation does not run
	// itself to the environment whose instance of that version it uses
	// (decided once, at deploy: see Instance). A service not in Shares runs
	// the generation's own environment's instance. Nil for production,
	// which never shares.
	Shares map[string]string `json:"shares,omitempty"`
	// Confirm is the confirm window of the deploy that made the generation:
	// committed as pending with the generation, then settled. Nil for a
	// generation committed before hostel recorded it.
	Confirm *Confirm `json:"confirm,omitempty"`
	// Plan is what the deploy that made the generation planned, per
	// service of either side (plan.Make's Services): what it did to each
	// and why. Nil for a generation committed before hostel kept it.
	Plan []Change `json:"plan,omitempty"`
}

// Action is what a deploy does to one service (plan.Action; the values
// are plan's).
type Action string

// Change is the plan for one service (plan.Change): here so that a
// generation keeps the plan that made it.
type Change struct {
	Name    string   `json:"name"`
	Action  Action   `json:"action"`
	From    Version  `json:"from,omitempty"`
	To      Version  `json:"to,omitempty"`
	Reasons []string `json:"reasons"`
}

// ConfirmState is where a generation's confirm window stands.
type ConfirmState string

// The states of a confirm window.
const (
	// ConfirmPending: the window is open (or was, when the daemon died).
	ConfirmPending ConfirmState = "pending"
	// ConfirmConfirmed: every new version stayed healthy through the window.
	ConfirmConfirmed ConfirmState = "confirmed"
	// ConfirmFailed: a new version failed, in the window or later, and the
	// previous generation was switched back (or could not be).
	ConfirmFailed ConfirmState = "failed"
	// ConfirmSkipped: no window ran (--no-confirm, no new version, or no
	// previous generation to switch back to).
	ConfirmSkipped ConfirmState = "skipped"
	// ConfirmSuperseded: a later deploy or a rollback ended the window.
	ConfirmSuperseded ConfirmState = "superseded"
)

// Confirm records a generation's confirm window.
type Confirm struct {
	State ConfirmState `json:"state"`
	// Deadline is when a pending window ends.
	Deadline time.Time `json:"deadline,omitzero"`
	// Previous is the generation that was current before this one, which a
	// failed confirmation switches back to; 0 when there was none.
	Previous uint64 `json:"previous,omitempty"`
	// Reason says why a confirmation failed or was superseded.
	Reason string `json:"reason,omitempty"`
}

// DefaultEnv is the environment a deploy without --env goes to.
const DefaultEnv = "production"

// envRE is what an environment's name may be.
var envRE = regexp.MustCompile(`^[a-z0-9-]{1,20}$`)

// CheckEnv checks the name of an environment.
func CheckEnv(name string) error {
	if !envRE.MatchString(name) {
		return fmt.Errorf("environment %q: a name is 1 to 20 of a-z, 0-9 and -", name)
	}
	return nil
}

// EnvOrDefault returns g's environment, DefaultEnv for a generation stored
// before environments existed.
func (g *Generation) EnvOrDefault() string {
	if g.Env == "" {
		return DefaultEnv
	}
	return g.Env
}

// VersionKey names one version of one service, as "service-version".
type VersionKey string

// Key returns the VersionKey of service at version v.
func Key(service string, v Version) VersionKey { return VersionKey(service + "-" + string(v)) }

// Instance returns the key of the running instance g's version of service
// uses: the instance owned by the environment in g.Shares, else g's own.
func (g *Generation) Instance(service string) VersionKey {
	return InstanceKey(service, g.Versions[service], g.Owner(service))
}

// Owner returns the environment whose instance of service's version g
// uses: the one whose database and state directory it writes to.
func (g *Generation) Owner(service string) string {
	if env, ok := g.Shares[service]; ok && env != "" {
		return env
	}
	return g.EnvOrDefault()
}

// InstanceKey names the running instance of service at version v that
// environment owner owns. Production's instance is the version's key
// (SERVICE-VERSION, its immutable name); a preview's own instance is
// SERVICE-VERSION@ENV: the same version can run once for production and
// once for a preview, each with its own data.
func InstanceKey(service string, v Version, owner string) VersionKey {
	if owner == "" || owner == DefaultEnv {
		return Key(service, v)
	}
	return VersionKey(string(Key(service, v)) + "@" + owner)
}

// Owner returns the environment that owns the instance k names:
// production for a plain SERVICE-VERSION.
func (k VersionKey) Owner() string {
	if i := strings.LastIndexByte(string(k), '@'); i >= 0 {
		return string(k[i+1:])
	}
	return DefaultEnv
}

// Version returns the version key k is an instance of (k without its
// owner).
func (k VersionKey) Version() VersionKey {
	if i := strings.LastIndexByte(string(k), '@'); i >= 0 {
		return k[:i]
	}
	return k
}

// Service returns the service k is an instance of.
func (k VersionKey) Service() string {
	v := string(k.Version())
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		return v[:i]
	}
	return v
}
