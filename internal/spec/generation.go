package spec

import (
	"fmt"
	"regexp"
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
	// Confirm is the confirm window of the deploy that made the generation:
	// committed as pending with the generation, then settled. Nil for a
	// generation committed before hostel recorded it.
	Confirm *Confirm `json:"confirm,omitempty"`
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
