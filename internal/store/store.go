// Package store keeps hostel's state: the generations, which one is
// current, and the records that must hold once per deployment rather than
// once per machine (a release that ran, a database that was provisioned).
//
// Store is an interface that a local transactional store (bbolt, here) and
// a distributed one (etcd, for cluster mode) can both implement: every
// change is atomic, the current generation moves by compare-and-swap so
// that a stale writer fails instead of overwriting, values stay small
// (secret ciphertexts are kept once, by digest), and changes can be
// watched. storetest.Run is the conformance suite every implementation
// must pass.
package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"hostel/internal/spec"
)

var (
	// ErrNotFound is returned for a generation, record or secret the store
	// does not hold.
	ErrNotFound = errors.New("not found")
	// ErrCurrent is returned when deleting the current generation.
	ErrCurrent = errors.New("the current generation cannot be deleted")
	// ErrDefaultEnv is returned when dropping the default environment,
	// production: it is there as long as the deployment is.
	ErrDefaultEnv = errors.New("the default environment cannot be dropped")
	// ErrConflict is returned by a compare-and-swap whose expectation no
	// longer holds: another writer changed the value since it was read.
	// Nothing was changed; read again and decide again.
	ErrConflict = errors.New("changed by another writer")
)

// Store holds a deployment's state. Every method is atomic: after a crash a
// change is either wholly there or not at all. Every method may be called
// concurrently.
//
// Generations belong to environments (spec.Generation.Env, production by
// default), and each environment has its own current generation, moved by
// compare-and-swap on its own: a preview's deploy never conflicts with
// production's. Numbers count across environments.
type Store interface {
	// Commit assigns g the next number and the time, stores it and makes it
	// current in its environment (g.Env; "" is production) — if that
	// environment's current generation is still from (0: it has none). Otherwise it fails with ErrConflict and stores nothing.
	// Numbers are never reused, not even those of deleted generations.
	// g.Secrets are kept by digest, once however many generations hold them.
	Commit(ctx context.Context, g *spec.Generation, from uint64) (uint64, error)
	// Current returns environment env's current generation, or nil if it
	// has none.
	Current(ctx context.Context, env string) (*spec.Generation, error)
	// Currents returns the current generation of every environment that
	// has one, by environment.
	Currents(ctx context.Context) (map[string]*spec.Generation, error)
	// Get returns generation n, or ErrNotFound.
	Get(ctx context.Context, n uint64) (*spec.Generation, error)
	// List returns every generation, oldest first.
	List(ctx context.Context) ([]*spec.Generation, error)
	// SetCurrent makes generation to current in its environment if from
	// still is (a rollback, a switch back): ErrConflict if it is not,
	// ErrNotFound if to is not held.
	SetCurrent(ctx context.Context, from, to uint64) error
	// SetConfirm records how generation n's confirm window stands (c) and,
	// when to is not 0, makes generation to current (in its environment)
	// in the same change if from still is: a switch back is recorded whole or not at all. A
	// stale switch fails with ErrConflict, a missing n or to with
	// ErrNotFound, and then nothing changes. With to 0 the current
	// generation stays as it is, and from must be 0 too.
	SetConfirm(ctx context.Context, n uint64, c *spec.Confirm, from, to uint64) error
	// Delete removes generations, and the secret ciphertexts no remaining
	// generation refers to. It refuses any environment's current one
	// (ErrCurrent) and then deletes nothing; numbers it does not hold are
	// ignored.
	Delete(ctx context.Context, ns ...uint64) error
	// DropEnv removes environment env — its current generation, if that is
	// still from (else ErrConflict), and every generation of it, with the
	// secret ciphertexts no remaining generation refers to — in one change.
	// It refuses production (ErrDefaultEnv) and an environment with no
	// current generation (ErrNotFound).
	DropEnv(ctx context.Context, env string, from uint64) error
	// Secret returns the ciphertext kept under digest (SecretDigest), or
	// ErrNotFound once no generation refers to it.
	Secret(ctx context.Context, digest string) ([]byte, error)

	// Record returns the record of kind and key, or ErrNotFound.
	Record(ctx context.Context, kind, key string) (Record, error)
	// Records returns every record of kind, by key.
	Records(ctx context.Context, kind string) ([]Record, error)
	// PutRecord sets the record of kind and key to value if its revision is
	// still rev — 0 meaning that it must not exist — and returns its new
	// revision. Otherwise it fails with ErrConflict and changes nothing.
	PutRecord(ctx context.Context, kind, key string, value []byte, rev uint64) (uint64, error)
	// DeleteRecord removes the record of kind and key if its revision is
	// still rev: ErrConflict if it is not, ErrNotFound if there is none.
	DeleteRecord(ctx context.Context, kind, key string, rev uint64) error

	// Watch delivers every change made after it returns, in order, until
	// ctx is done; then the channel is closed. A watcher that does not
	// keep up delays no writer: its events queue.
	Watch(ctx context.Context) (<-chan Event, error)
	// Close releases the store; watches end.
	Close() error
}

// Record is a small value of some kind under a key, with the revision of
// its last change. Revisions grow with every change to the store, so a
// record's revision changes whenever it does.
type Record struct {
	Kind, Key string
	Value     []byte
	Revision  uint64
}

// Record kinds hostel keeps.
const (
	// KindRelease: key SERVICE/VERSION, the release step of that version
	// ran and succeeded.
	KindRelease = "release"
	// KindDatabase: key SERVICE, the server, database and role provisioned
	// for the service (the daemon's postgres record).
	KindDatabase = "database"
	// KindPause: key SERVICE, production's service paused by hand (hostel
	// pause) until hostel resume, across deploys and daemon restarts.
	KindPause = "pause"
)

// EventType says what changed.
type EventType string

// Kinds of events.
const (
	// EventCurrent: environment Env's current generation moved to
	// Generation (from From); Generation 0 when the environment was
	// dropped.
	EventCurrent EventType = "current"
	// EventAdded: generation Generation was committed.
	EventAdded EventType = "added"
	// EventRemoved: generation Generation was deleted.
	EventRemoved EventType = "removed"
	// EventConfirm: generation Generation's confirm window was recorded
	// (SetConfirm). A switch back comes with an EventCurrent of the same
	// revision, after it.
	EventConfirm EventType = "confirm"
	// EventRecord: the record Kind/Key was set (at Revision).
	EventRecord EventType = "record"
	// EventRecordDeleted: the record Kind/Key was deleted.
	EventRecordDeleted EventType = "record-deleted"
)

// Event is one change to the store.
type Event struct {
	Type EventType
	// Generation is the generation added, removed, made current or whose
	// confirm window was recorded.
	Generation uint64
	// From is the generation that was current before an EventCurrent; 0
	// when there was none.
	From uint64
	// Env is the environment of the generation of a generation event.
	Env string
	// Kind and Key name the record of a record event.
	Kind, Key string
	// Revision is the store's revision after the change.
	Revision uint64
}

// SecretDigest is the key a secret's ciphertext is kept under: the
// hex-encoded SHA-256 of the ciphertext.
func SecretDigest(ciphertext []byte) string {
	sum := sha256.Sum256(ciphertext)
	return hex.EncodeToString(sum[:])
}
