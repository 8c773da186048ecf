package store

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"hostel/internal/spec"
)

// What follows is shared by the implementations (Bolt here, store/etcd):
// how a generation is kept, and the rules of writes, each in one place.

// storedGeneration is a generation as the store keeps it: its secrets by
// digest, their ciphertexts once, elsewhere.
type storedGeneration struct {
	spec.Generation
	SecretDigests map[string]string `json:"secret_digests,omitempty"`
}

// EncodeGeneration returns g as a store keeps it — JSON, with its secrets
// by digest — and the ciphertexts by digest, to keep once. It refuses a
// generation over MaxGenerationSize.
func EncodeGeneration(g *spec.Generation) (data []byte, secrets map[string][]byte, err error) {
	sg := storedGeneration{Generation: *g}
	sg.Secrets = nil
	if len(g.Secrets) > 0 {
		sg.SecretDigests = make(map[string]string, len(g.Secrets))
		secrets = make(map[string][]byte, len(g.Secrets))
		for name, ct := range g.Secrets {
			d := SecretDigest(ct)
			sg.SecretDigests[name] = d
			secrets[d] = ct
		}
	}
	if data, err = json.Marshal(&sg); err != nil {
		return nil, nil, err
	}
	if len(data) > MaxGenerationSize {
		return nil, nil, fmt.Errorf("generation %d is %d bytes as stored, more than the store's limit of %d", g.Number, len(data), MaxGenerationSize)
	}
	return data, secrets, nil
}

// DecodeGeneration decodes a stored generation and fills in its secrets
// from secret, which returns the ciphertext of a digest if it is kept.
func DecodeGeneration(data []byte, secret func(digest string) ([]byte, bool)) (*spec.Generation, error) {
	var sg storedGeneration
	if err := json.Unmarshal(data, &sg); err != nil {
		return nil, fmt.Errorf("decode generation: %w", err)
	}
	g := sg.Generation
	g.Env = g.EnvOrDefault()
	if len(sg.SecretDigests) > 0 {
		g.Secrets = make(map[string][]byte, len(sg.SecretDigests))
		for name, d := range sg.SecretDigests {
			ct, ok := secret(d)
			if !ok {
				return nil, fmt.Errorf("generation %d: secret %q (%s): %w", g.Number, name, d, ErrNotFound)
			}
			g.Secrets[name] = ct
		}
	}
	return &g, nil
}

// GenerationEnv returns the environment of a stored generation.
func GenerationEnv(data []byte) (string, error) {
	var g struct {
		Env string `json:"env"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		return "", fmt.Errorf("decode generation: %w", err)
	}
	return (&spec.Generation{Env: g.Env}).EnvOrDefault(), nil
}

// GenerationDigests returns the digests of the secret ciphertexts a
// stored generation refers to.
func GenerationDigests(data []byte) ([]string, error) {
	var g struct {
		SecretDigests map[string]string `json:"secret_digests"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, fmt.Errorf("decode generation: %w", err)
	}
	return slices.Collect(maps.Values(g.SecretDigests)), nil
}

// WithConfirm returns a stored generation with its confirm window set
// to c: only that changes, secret digests included.
func WithConfirm(data []byte, c *spec.Confirm) ([]byte, error) {
	var sg storedGeneration
	if err := json.Unmarshal(data, &sg); err != nil {
		return nil, fmt.Errorf("decode generation: %w", err)
	}
	sg.Confirm = c
	return json.Marshal(&sg)
}

// CheckName checks the name of a record kind or an election (what):
// not empty, and without "/" or NUL, which separate it from what follows
// in a key.
func CheckName(what, name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%s %q: must be a non-empty name without / or NUL", what, name)
	}
	return nil
}

// CheckWrites checks writes before a store makes them: valid kinds, and
// each record written once.
func CheckWrites(writes []Write) error {
	seen := make(map[[2]string]bool, len(writes))
	for _, w := range writes {
		if err := CheckName("record kind", w.Kind); err != nil {
			return err
		}
		k := [2]string{w.Kind, w.Key}
		if seen[k] {
			return fmt.Errorf("record %s %s: written twice in one change", w.Kind, w.Key)
		}
		seen[k] = true
	}
	return nil
}

// Check returns why w cannot be made to a record that exists (or not) at
// revision rev — ErrConflict, or ErrNotFound for the delete of a missing
// record — or nil if it can.
func (w Write) Check(exists bool, rev uint64) error {
	if !exists {
		rev = 0
	}
	switch {
	case w.Delete && !exists && w.Rev != AnyRevision:
		return fmt.Errorf("record %s %s: %w", w.Kind, w.Key, ErrNotFound)
	case w.Rev == AnyRevision || w.Rev == rev:
		return nil
	case w.Rev == 0:
		return fmt.Errorf("record %s %s exists (revision %d): %w", w.Kind, w.Key, rev, ErrConflict)
	default:
		return fmt.Errorf("record %s %s at revision %d, not %d: %w", w.Kind, w.Key, rev, w.Rev, ErrConflict)
	}
}

// Dump is a store's content as it is kept, to move it to another store
// (Bolt.Dump, then etcd's Load): every generation under its own number,
// the sequence numbers continue from, each environment's current
// generation, the secret ciphertexts and the records. Revisions and
// leases are the store's own and do not move: the new store numbers its
// revisions afresh, and a record bound to a lease stays behind.
type Dump struct {
	// Sequence is the number of the last generation ever committed
	// (deleted ones too): the next commit gets Sequence+1.
	Sequence uint64
	// Currents are the current generations' numbers, by environment.
	Currents map[string]uint64
	// Generations are the stored generations, oldest first.
	Generations []DumpedGeneration
	// Secrets are the secret ciphertexts, by digest.
	Secrets map[string][]byte
	// Records are the records without a lease.
	Records []Record
}

// DumpedGeneration is one generation of a Dump, as the store keeps it
// (EncodeGeneration).
type DumpedGeneration struct {
	Number uint64
	Data   []byte
}

// LeaseSeconds is the TTL a lease of ttl is granted: whole seconds, as
// etcd grants them, at least one.
func LeaseSeconds(ttl time.Duration) int64 {
	s := int64((ttl + time.Second - 1) / time.Second)
	return max(s, 1)
}
