// Package store keeps hostel's state: the generations, which one is
// current in each environment, and the records that must hold once per
// deployment rather than once per machine (a release that ran, a database
// that was provisioned, later the instances each node is asked to run).
//
// Store is shaped after etcd, and two implementations pass one
// conformance suite (storetest.Run): Bolt, a local bbolt file (the
// default), and store/etcd. Every change is atomic and has a revision;
// the current generation moves by compare-and-swap so that a stale writer
// fails instead of overwriting; Read returns one consistent snapshot with
// the revision it saw, and Watch replays every change after a revision;
// leases keep records alive only while their owner does; a writer fenced
// by a leadership (Campaign, Fenced) fails once it no longer leads. Values
// stay small: secret ciphertexts are kept once, by digest, and a
// generation may hold at most MaxGenerationSize bytes.
package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"hostel/internal/spec"
)

var (
	// ErrNotFound is returned for a generation, record, secret or lease
	// the store does not hold.
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
	// ErrNotLeader is returned by every write through a view fenced by a
	// leadership (Store.Fenced) once that leadership is lost. Nothing was
	// changed.
	ErrNotLeader = errors.New("no longer the leader")
	// ErrCompacted ends a watch whose next revision is no longer in the
	// store's history (see CompactedError).
	ErrCompacted = errors.New("compacted")
	// ErrClosed is returned by a handle once it is closed.
	ErrClosed = errors.New("the store is closed")
)

// CompactedError is the error of the last event of a watch whose history
// was compacted away: the changes after From can no longer be replayed.
// The watcher reads the state again (Read) and watches from there.
type CompactedError struct {
	// From is the last revision the watch delivered, or the one it was
	// asked to start after.
	From uint64
	// Compacted is the store's compaction revision: history before it is
	// gone.
	Compacted uint64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("watch from revision %d: compacted at %d: re-read and watch again", e.From, e.Compacted)
}

// Is makes errors.Is(err, ErrCompacted) hold.
func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

// MaxGenerationSize is how large a generation may be as the store keeps
// it (its JSON, secret ciphertexts apart): etcd refuses a request over
// 1.5 MiB, and a commit carries its generation, its new secret
// ciphertexts and its records in one request. Both stores enforce it, so
// that a bbolt store can always move to etcd.
const MaxGenerationSize = 1 << 20

// MaxTxnOps is how many keys one transaction may change on etcd
// (its --max-txn-ops, 128 by default). A commit changes its generation,
// the sequence, the current generation, each secret ciphertext and each
// record it writes, so a commit's secrets and writes together must stay
// under MaxTxnOps-3; Delete and DropEnv split their work to stay under
// it (see Store.Delete).
const MaxTxnOps = 128

// DeleteBatch is how many generations one transaction of Delete (and
// DropEnv) removes on etcd: with their compare-and-swaps it stays under
// MaxTxnOps.
const DeleteBatch = 100

// LogRevisions is how many revisions of history a store keeps by itself
// for Watch to replay: Bolt trims its log to it at every change, and an
// embedded etcd member compacts to it.
const LogRevisions = 10000

// AnyRevision, as a Write's Rev, writes whatever revision the record has,
// and whether or not it exists.
const AnyRevision uint64 = math.MaxUint64

// Store holds a deployment's state. Every method is atomic: after a crash
// a change is either wholly there or not at all (Delete and DropEnv on
// etcd: each of their batches). Every method may be called concurrently.
// A Store is one handle on a backend: several handles (several daemons,
// several nodes) may share one backend, each with its own watches and
// leases.
//
// Generations belong to environments (spec.Generation.Env, production by
// default), and each environment has its own current generation, moved by
// compare-and-swap on its own: a preview's deploy never conflicts with
// production's. Numbers count across environments.
//
// Commit, SetCurrent, SetConfirm and DropEnv take record writes (also)
// that are made in the same change, all or nothing: the engine commits a
// generation, its current move and what it asks each node to run in one
// step.
type Store interface {
	// Read returns one consistent snapshot of the state — every current
	// generation, every generation kept and the records of kinds — with
	// the revision it was taken at: what a decision is made from, and
	// where a follower's Watch starts.
	Read(ctx context.Context, kinds ...string) (*Snapshot, error)

	// Commit assigns g the next number and the time, stores it and makes it
	// current in its environment (g.Env; "" is production) — if that
	// environment's current generation is still from (0: it has none) and
	// every write in also holds. Otherwise it fails with ErrConflict and
	// stores nothing. Numbers are never reused, not even those of deleted
	// generations. g.Secrets are kept by digest, once however many
	// generations hold them.
	Commit(ctx context.Context, g *spec.Generation, from uint64, also ...Write) (uint64, error)
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
	// ErrNotFound if to is not held. The writes in also are made with it.
	SetCurrent(ctx context.Context, from, to uint64, also ...Write) error
	// SetConfirm records how generation n's confirm window stands (c) and,
	// when to is not 0, makes generation to current (in its environment)
	// in the same change if from still is: a switch back is recorded whole
	// or not at all. A stale switch fails with ErrConflict, a missing n or
	// to with ErrNotFound, and then nothing changes. With to 0 the current
	// generation stays as it is, and from must be 0 too. The writes in
	// also are made with it.
	SetConfirm(ctx context.Context, n uint64, c *spec.Confirm, from, to uint64, also ...Write) error
	// Delete removes generations, and the secret ciphertexts no remaining
	// generation refers to. It refuses any environment's current one
	// (ErrCurrent) and then deletes nothing; numbers it does not hold are
	// ignored. On etcd, whose transactions hold at most MaxTxnOps keys, it
	// deletes in batches of DeleteBatch generations, each atomic, then the
	// unreferenced ciphertexts: a crash between batches leaves the
	// generations of the batches not yet run (and ciphertexts that the
	// next Delete removes), and a generation made current while a batch
	// waits stops the rest with ErrCurrent.
	Delete(ctx context.Context, ns ...uint64) error
	// DropEnv removes environment env — its current generation, if that is
	// still from (else ErrConflict), and every generation of it, with the
	// secret ciphertexts no remaining generation refers to — in one change
	// (on etcd: the current generation and the first batch in one, the
	// rest as Delete does). It refuses production (ErrDefaultEnv) and an
	// environment with no current generation (ErrNotFound).
	DropEnv(ctx context.Context, env string, from uint64, also ...Write) error
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
	// Txn makes writes, all or none: the first one whose expectation does
	// not hold fails it (ErrConflict, or ErrNotFound for the delete of a
	// missing record) and nothing changes. It returns the store's
	// revision after it.
	Txn(ctx context.Context, writes ...Write) (uint64, error)

	// Watch delivers every change with a revision after from (0: every
	// change made after Watch returns), in order, each with its revision,
	// until ctx is done; then the channel is closed. When the changes
	// after from are no longer kept (Compact), or a watch falls that far
	// behind, the last event delivered carries Err (a *CompactedError,
	// errors.Is ErrCompacted) and the channel closes: read again and watch
	// from the snapshot's revision. A watcher that does not keep up
	// delays no writer.
	Watch(ctx context.Context, from uint64) (<-chan Event, error)
	// Compact drops the history before revision rev: a Watch from before
	// it ends with ErrCompacted. Bolt also keeps only its last
	// LogRevisions revisions of history by itself; etcd keeps what its
	// compaction settings keep (an embedded member: the last LogRevisions
	// revisions too).
	Compact(ctx context.Context, rev uint64) error

	// Grant makes a lease of ttl (rounded up to whole seconds; etcd
	// grants at least its minimum, Lease.TTL says), kept alive
	// by this handle until it is revoked or the handle is closed; then it
	// expires ttl after its last renewal and the records written with it
	// are deleted.
	Grant(ctx context.Context, ttl time.Duration) (Lease, error)
	// Revoke ends lease id now, whoever holds it — a lease a previous
	// incarnation of this node left (it died) — deleting its records and
	// ending what leads with it. ErrNotFound if no such lease lives.
	Revoke(ctx context.Context, id LeaseID) error
	// Campaign blocks until the holder of lease l leads the election
	// name, or ctx ends (and the candidacy is withdrawn). Candidates lead
	// in the order they first campaigned; a candidacy ends with its lease.
	Campaign(ctx context.Context, name string, l Lease) (Leadership, error)
	// Fenced returns a view of this handle whose every write also
	// requires leadership l to hold, in the same change: once it is lost
	// each write fails with ErrNotLeader and changes nothing. Reads,
	// watches, Compact, leases and campaigns are the handle's; closing
	// the view does nothing.
	Fenced(l Leadership) Store

	// Close releases the handle: its watches end, its leases are no
	// longer renewed (they expire after their TTL).
	Close() error
}

// Snapshot is the state as one Read saw it.
type Snapshot struct {
	// Revision is the store's revision the snapshot was taken at.
	Revision uint64
	// Currents are the current generations, by environment.
	Currents map[string]*spec.Generation
	// Generations are every generation kept, oldest first.
	Generations []*spec.Generation
	// Records are the records of the kinds asked, by kind, each kind's by
	// key; a kind without records has none.
	Records map[string][]Record
}

// Write is a change to one record, made with others atomically (Txn, and
// the also of Commit, SetCurrent, SetConfirm).
type Write struct {
	Kind, Key string
	// Value is the record's new value (not for a Delete).
	Value []byte
	// Rev is what the record's revision must still be for the write to
	// be made: 0 that it must not exist, AnyRevision whatever it is.
	Rev uint64
	// Delete removes the record, which must exist at Rev (with
	// AnyRevision: if it exists).
	Delete bool
	// Lease, if not 0, binds the record to a lease: the record is
	// deleted when the lease ends.
	Lease LeaseID
}

// LeaseID names a lease (Lease.ID); 0 is none.
type LeaseID int64

// Lease is a lease granted by Store.Grant.
type Lease interface {
	// ID names the lease in a Write.
	ID() LeaseID
	// TTL is how long the lease outlives its last renewal.
	TTL() time.Duration
	// Renewed is when the last renewal the store confirmed was asked
	// (the grant's, before any): the lease lives at the store until
	// Renewed()+TTL() at least, whatever happens since — the bound a
	// node fences what must end with its lease on (supervisor.Fence).
	// Read on this machine's clock; zero if it was never granted.
	Renewed() time.Time
	// Done is closed once the lease is lost — expired, revoked — or can
	// no longer be renewed, because its handle was closed.
	Done() <-chan struct{}
	// Revoke ends the lease now: its records are deleted.
	Revoke(ctx context.Context) error
}

// Leadership is what Campaign wins.
type Leadership interface {
	// Name is the election's.
	Name() string
	// Lease is the lease the leadership lasts with.
	Lease() Lease
	// Done is closed once the leadership is lost: its lease's Done
	// closed, it resigned, or its candidacy is gone.
	Done() <-chan struct{}
	// Resign gives the leadership up: the next candidate leads.
	Resign(ctx context.Context) error
}

// Record is a small value of some kind under a key, with the revision of
// its last change. Revisions grow with every change to the store, so a
// record's revision changes whenever it does.
type Record struct {
	Kind, Key string
	Value     []byte
	Revision  uint64
	// Lease is the lease the record lives with; 0 for none.
	Lease LeaseID
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
	// KindReleaseClaim: key SERVICE/VERSION, the release step of that
	// version is running; bound to the runner's lease, so that it ends
	// with its runner. Written and removed with the release record.
	KindReleaseClaim = "release-claim"
	// KindPassword: key SERVICE (or SERVICE@ENV), the password of the
	// database role, sealed to the machine keys (keyring).
	KindPassword = "password"
	// KindMachineKey: key an age public key, a machine of the deployment
	// that values are sealed to (keyring).
	KindMachineKey = "machine-key"
	// KindCert: key a certmagic storage key, a certificate, its metadata,
	// an ACME account or challenge token (acme).
	KindCert = "cert"
	// KindCertKey: key a certmagic storage key, a private key (of a
	// certificate, an ACME account, the internal CA), sealed to the
	// machine keys (acme).
	KindCertKey = "cert-key"
	// KindCertLock: key a certmagic lock name, held by a daemon while it
	// orders a certificate; bound to its lease (acme).
	KindCertLock = "cert-lock"
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
	// EventRecordDeleted: the record Kind/Key was deleted, or its lease
	// ended.
	EventRecordDeleted EventType = "record-deleted"
)

// Event is one change to the store, or the end of a watch (Err).
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
	// Revision is the store's revision after the change. The events of
	// one change share it, in the order of the change.
	Revision uint64
	// Last marks the last event of its change: a follower that acts on
	// the state after a change reads it once the change's last event
	// came (Pending), not at its first.
	Last bool
	// Err, on the last event of a watch that could not go on, says why
	// (errors.Is ErrCompacted: read again, watch from there); the event
	// is no change.
	Err error
}

// SecretDigest is the key a secret's ciphertext is kept under: the
// hex-encoded SHA-256 of the ciphertext.
func SecretDigest(ciphertext []byte) string {
	sum := sha256.Sum256(ciphertext)
	return hex.EncodeToString(sum[:])
}

// ErrWatchEnded is Pending's error when a watch's channel closed without
// an event that says why (its context ended).
var ErrWatchEnded = errors.New("the watch ended")

// Pending waits for the next event of a watch and takes every event
// already behind it, up to the end of a change (an event marked Last) —
// the events of one change come one by one, and a follower that read the
// state at the first would act on half of it — so that the follower
// reads the state once for all the changes there are. It fails with the
// watch's last error (Event.Err), or ErrWatchEnded.
func Pending(events <-chan Event) ([]Event, error) {
	var batch []Event
	ev, ok := <-events
	for {
		switch {
		case !ok:
			return nil, ErrWatchEnded
		case ev.Err != nil:
			return nil, ev.Err
		}
		batch = append(batch, ev)
		if !ev.Last {
			ev, ok = <-events // the rest of its change
			continue
		}
		select {
		case ev, ok = <-events:
		default:
			return batch, nil
		}
	}
}
