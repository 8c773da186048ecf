package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketGenerations = []byte("generations")
	bucketMeta        = []byte("meta")
	bucketSecrets     = []byte("secrets")      // digest → ciphertext
	bucketRecords     = []byte("records")      // kind NUL key → revision (8 bytes) value
	bucketLog         = []byte("log")          // revision → the events of that revision (JSON)
	bucketLeases      = []byte("leases")       // lease ID → TTL (nanoseconds)
	bucketRecordLease = []byte("record-lease") // kind NUL key → lease ID, for a record bound to one
	bucketLeaseRecord = []byte("lease-record") // lease ID, kind NUL key → nothing: the records a lease ends
	bucketElections   = []byte("elections")    // name NUL lease ID → the candidacy's create revision
	keyCurrent        = []byte("current")      // production's; others' are prefixCurrent+ENV
	keyRevision       = []byte("revision")
	// keyCompacted is the revision before which the log holds nothing:
	// a Watch from before it cannot replay.
	keyCompacted = []byte("compacted")
)

// Bolt is a Store in a local bbolt file: every write is one fsynced
// transaction. What bbolt lacks is built here, in the one process that
// holds the file: watches replay a log of the last LogRevisions
// revisions' events kept in the file; leases have deadlines in memory
// (a lease found at open gets a fresh TTL, as etcd gives on a leader
// change, and expires unless renewed — nothing can renew it, so it
// does); elections go by the lowest create revision among the candidacies
// bound to live leases, as etcd's concurrency package does.
//
// A Bolt is one handle; Handle opens more on the same file, as more
// clients of one etcd.
type Bolt struct {
	b *boltBackend
	h *boltHandle
	// fence, on a view made by Fenced, is the leadership every write
	// requires; nil on a handle.
	fence *boltLeadership
}

var _ Store = (*Bolt)(nil)

// boltHandle is what a handle and its fenced views share.
type boltHandle struct {
	closed chan struct{}
	once   sync.Once
}

// boltBackend is the opened file, shared by its handles.
type boltBackend struct {
	db  *bolt.DB
	now func() time.Time
	// logKeep is how many revisions the log keeps: LogRevisions.
	logKeep uint64

	// wmu orders the writes with what follows them in memory (watchers
	// woken, leases ended): bbolt serializes writers anyway.
	wmu sync.Mutex

	mu sync.Mutex
	// changed is closed, and replaced, after every change of revision:
	// watchers and campaigns wait on it.
	changed chan struct{}
	handles map[*boltHandle]struct{}
	// leases are the live leases (leases.go).
	leases map[LeaseID]*leaseState
	// reapWake wakes the reaper when a deadline may have moved closer.
	reapWake chan struct{}
	stop     chan struct{}
	reaped   chan struct{}
}

// OpenBolt opens (or creates) the store file at path, mode 0600. It fails
// fast if another daemon holds the file. Generations of an older layout
// that carry their secret ciphertexts inline are rewritten to refer to
// them by digest.
func OpenBolt(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	b := &boltBackend{db: db, now: time.Now, logKeep: LogRevisions, changed: make(chan struct{}), handles: map[*boltHandle]struct{}{},
		leases: map[LeaseID]*leaseState{}, reapWake: make(chan struct{}, 1), stop: make(chan struct{}), reaped: make(chan struct{})}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketGenerations, bucketMeta, bucketSecrets, bucketRecords, bucketLog,
			bucketLeases, bucketRecordLease, bucketLeaseRecord, bucketElections} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		// Revisions start at 1, so that a snapshot's revision is never
		// 0, which Watch takes as "from now".
		rev := btoi(meta.Get(keyRevision))
		if rev == 0 {
			rev = 1
			if err := meta.Put(keyRevision, itob(rev)); err != nil {
				return err
			}
		}
		// A store from before the log has no history to replay.
		if meta.Get(keyCompacted) == nil {
			if err := meta.Put(keyCompacted, itob(rev+1)); err != nil {
				return err
			}
		}
		if err := b.loadLeases(tx); err != nil {
			return err
		}
		return migrateInlineSecrets(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	go b.reap()
	return b.handle(), nil
}

// Handle opens another handle on s's file: its own watches, leases and
// campaigns, as a second client of one etcd has. The file is closed with
// its last handle.
func (s *Bolt) Handle() (*Bolt, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if len(s.b.handles) == 0 {
		return nil, ErrClosed
	}
	h := &boltHandle{closed: make(chan struct{})}
	s.b.handles[h] = struct{}{}
	return &Bolt{b: s.b, h: h}, nil
}

func (b *boltBackend) handle() *Bolt {
	h := &boltHandle{closed: make(chan struct{})}
	b.mu.Lock()
	b.handles[h] = struct{}{}
	b.mu.Unlock()
	return &Bolt{b: b, h: h}
}

func itob(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

func btoi(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// btx is one write transaction: the revision it gives what it changes,
// and the events it makes.
type btx struct {
	*bolt.Tx
	// rev is the store's revision after this change, if it changes
	// anything.
	rev     uint64
	events  []Event
	touched bool
	// ended are the leases this change ended (revoked, expired).
	ended []LeaseID
}

// emit records events of this change (which then changes the revision).
func (t *btx) emit(events ...Event) {
	t.events = append(t.events, events...)
	t.touched = true
}

// touch makes this change change the revision, though it has no events
// (a candidacy).
func (t *btx) touch() { t.touched = true }

// usable returns why s cannot be used now: ctx ended, or s is closed.
func (s *Bolt) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.h.closed:
		return ErrClosed
	default:
		return nil
	}
}

// update runs fn in one write transaction — after checking the fence of
// a fenced view — and returns the store's revision after it.
func (s *Bolt) update(ctx context.Context, fn func(t *btx) error) (uint64, error) {
	if err := s.usable(ctx); err != nil {
		return 0, err
	}
	return s.b.update(func(t *btx) error {
		if s.fence != nil {
			if err := s.fence.check(t.Tx); err != nil {
				return err
			}
		}
		return fn(t)
	})
}

// update runs fn in one write transaction; once it is durable, wakes
// the watchers of a change and ends the leases it ended.
func (b *boltBackend) update(fn func(t *btx) error) (uint64, error) {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	var t *btx
	err := b.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		t = &btx{Tx: tx, rev: btoi(meta.Get(keyRevision)) + 1}
		if err := fn(t); err != nil {
			return err
		}
		if !t.touched {
			t.rev--
			return nil
		}
		if err := meta.Put(keyRevision, itob(t.rev)); err != nil {
			return err
		}
		return appendLog(t, b.logKeep)
	})
	if err != nil {
		return 0, err
	}
	b.endLeases(t.ended)
	if t.touched {
		b.broadcast()
	}
	return t.rev, nil
}

// view runs fn in one read transaction.
func (s *Bolt) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := s.usable(ctx); err != nil {
		return err
	}
	return s.b.db.View(fn)
}

// changes returns a channel closed at the next change of revision.
func (b *boltBackend) changes() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changed
}

func (b *boltBackend) broadcast() {
	b.mu.Lock()
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// Close implements Store: the handle's watches end and its leases are
// no longer renewed. The file is closed with the last handle. Closing a
// fenced view does nothing.
func (s *Bolt) Close() error {
	if s.fence != nil {
		return nil
	}
	var err error
	s.h.once.Do(func() {
		close(s.h.closed)
		s.b.release(s.h)
		s.b.mu.Lock()
		delete(s.b.handles, s.h)
		last := len(s.b.handles) == 0
		s.b.mu.Unlock()
		if last {
			close(s.b.stop)
			<-s.b.reaped
			// bbolt waits for the transactions under way; later ones
			// fail.
			err = s.b.db.Close()
		}
	})
	return err
}
