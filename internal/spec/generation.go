package spec

import "time"

// Generation is one applied deploy. Once committed it never changes.
type Generation struct {
	// Number counts generations from 1; it is assigned by the store on commit.
	Number uint64 `json:"number"`
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
}

// VersionKey names one version of one service, as "service-version".
type VersionKey string

// Key returns the VersionKey of service at version v.
func Key(service string, v Version) VersionKey { return VersionKey(service + "-" + string(v)) }
