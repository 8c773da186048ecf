package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"hostel/internal/spec"
)

var (
	bucketGenerations = []byte("generations")
	bucketMeta        = []byte("meta")
	bucketSecrets     = []byte("secrets") // digest → ciphertext
	bucketRecords     = []byte("records") // kind NUL key → revision (8 bytes) value
	keyCurrent        = []byte("current") // production's; others' are prefixCurrent+ENV
	keyRevision       = []byte("revision")
)

// Bolt is a Store in a local bbolt file: every write is one fsynced
// transaction. Watches are served from this process: bbolt has none.
type Bolt struct {
	db  *bolt.DB
	now func() time.Time

	// wmu orders the writes and the delivery of their events: bbolt
	// serializes writers anyway, and a watcher must see them in order.
	wmu      sync.Mutex
	watchers map[*watcher]struct{}
	closed   chan struct{}
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens (or creates) the store file at path, mode 0600. It fails
// fast if another daemon holds the file. Generations of an older layout
// that carry their secret ciphertexts inline are rewritten to refer to
// them by digest.
func OpenBolt(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketGenerations, bucketMeta, bucketSecrets, bucketRecords} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return migrateInlineSecrets(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	return &Bolt{db: db, now: time.Now, watchers: map[*watcher]struct{}{}, closed: make(chan struct{})}, nil
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

// update runs fn in one write transaction and, once it is durable,
// delivers the events fn returns, stamped with the new revision. A
// transaction that returns no events changes no revision.
func (s *Bolt) update(ctx context.Context, fn func(tx *bolt.Tx) ([]Event, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var events []Event
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if events, err = fn(tx); err != nil || len(events) == 0 {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		rev := btoi(meta.Get(keyRevision)) + 1
		for i := range events {
			events[i].Revision = rev
		}
		return meta.Put(keyRevision, itob(rev))
	})
	if err != nil {
		return err
	}
	for w := range s.watchers {
		w.push(events)
	}
	return nil
}

// view runs fn in one read transaction.
func (s *Bolt) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}

// Commit implements Store.
func (s *Bolt) Commit(ctx context.Context, g *spec.Generation, from uint64) (uint64, error) {
	var c spec.Generation
	err := s.update(ctx, func(tx *bolt.Tx) ([]Event, error) {
		meta := tx.Bucket(bucketMeta)
		env := g.EnvOrDefault()
		if cur := btoi(meta.Get(currentKey(env))); cur != from {
			return nil, fmt.Errorf("commit on generation %d, but %d is current in %s: %w", from, cur, env, ErrConflict)
		}
		b := tx.Bucket(bucketGenerations)
		seq, err := b.NextSequence()
		if err != nil {
			return nil, err
		}
		c = *g
		c.Env = c.EnvOrDefault()
		c.Number = seq
		c.Time = s.now().UTC()
		if err := putGeneration(tx, &c); err != nil {
			return nil, err
		}
		if err := meta.Put(currentKey(env), itob(seq)); err != nil {
			return nil, err
		}
		return []Event{{Type: EventAdded, Generation: seq, Env: env}, {Type: EventCurrent, Generation: seq, From: from, Env: env}}, nil
	})
	if err != nil {
		return 0, fmt.Errorf("commit generation: %w", err)
	}
	g.Number, g.Time = c.Number, c.Time
	return c.Number, nil
}

// currentKey is the key of env's current generation in bucketMeta.
// Production's is the one older stores kept their only current generation
// under: their generations become production's without a rewrite.
func currentKey(env string) []byte {
	if env == spec.DefaultEnv {
		return keyCurrent
	}
	return []byte(prefixCurrent + env)
}

// currents returns the current generation's number of every environment.
func currents(tx *bolt.Tx) map[string]uint64 {
	out := map[string]uint64{}
	c := tx.Bucket(bucketMeta).Cursor()
	if v := tx.Bucket(bucketMeta).Get(keyCurrent); v != nil {
		out[spec.DefaultEnv] = btoi(v)
	}
	for k, v := c.Seek([]byte(prefixCurrent)); k != nil && bytes.HasPrefix(k, []byte(prefixCurrent)); k, v = c.Next() {
		out[strings.TrimPrefix(string(k), prefixCurrent)] = btoi(v)
	}
	return out
}

// prefixCurrent starts the key of a current generation of an environment
// other than production.
const prefixCurrent = "current/"

// Current implements Store.
func (s *Bolt) Current(ctx context.Context, env string) (*spec.Generation, error) {
	var g *spec.Generation
	err := s.view(ctx, func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketMeta).Get(currentKey(env))
		if cur == nil {
			return nil
		}
		var err error
		g, err = getGeneration(tx, tx.Bucket(bucketGenerations).Get(cur))
		return err
	})
	return g, err
}

// Currents implements Store.
func (s *Bolt) Currents(ctx context.Context) (map[string]*spec.Generation, error) {
	out := map[string]*spec.Generation{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		for env, n := range currents(tx) {
			g, err := getGeneration(tx, tx.Bucket(bucketGenerations).Get(itob(n)))
			if err != nil {
				return err
			}
			out[env] = g
		}
		return nil
	})
	return out, err
}

// envOf returns the environment of stored generation n, or ErrNotFound.
func envOf(tx *bolt.Tx, n uint64) (string, error) {
	data := tx.Bucket(bucketGenerations).Get(itob(n))
	if data == nil {
		return "", fmt.Errorf("generation %d: %w", n, ErrNotFound)
	}
	var g struct {
		Env string `json:"env"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		return "", fmt.Errorf("decode generation: %w", err)
	}
	return (&spec.Generation{Env: g.Env}).EnvOrDefault(), nil
}

// Get implements Store.
func (s *Bolt) Get(ctx context.Context, n uint64) (*spec.Generation, error) {
	var g *spec.Generation
	err := s.view(ctx, func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketGenerations).Get(itob(n))
		if data == nil {
			return fmt.Errorf("generation %d: %w", n, ErrNotFound)
		}
		var err error
		g, err = getGeneration(tx, data)
		return err
	})
	return g, err
}

// List implements Store.
func (s *Bolt) List(ctx context.Context) ([]*spec.Generation, error) {
	var out []*spec.Generation
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketGenerations).ForEach(func(_, v []byte) error {
			g, err := getGeneration(tx, v)
			if err != nil {
				return err
			}
			out = append(out, g)
			return nil
		})
	})
	return out, err
}

// SetCurrent implements Store.
func (s *Bolt) SetCurrent(ctx context.Context, from, to uint64) error {
	return s.update(ctx, func(tx *bolt.Tx) ([]Event, error) {
		meta := tx.Bucket(bucketMeta)
		env, err := envOf(tx, to)
		if err != nil {
			return nil, err
		}
		if cur := btoi(meta.Get(currentKey(env))); cur != from {
			return nil, fmt.Errorf("switch from generation %d, but %d is current in %s: %w", from, cur, env, ErrConflict)
		}
		if from == to {
			return nil, nil
		}
		return []Event{{Type: EventCurrent, Generation: to, From: from, Env: env}}, meta.Put(currentKey(env), itob(to))
	})
}

// SetConfirm implements Store.
func (s *Bolt) SetConfirm(ctx context.Context, n uint64, c *spec.Confirm, from, to uint64) error {
	if to == 0 && from != 0 {
		return fmt.Errorf("confirm of generation %d: a switch from generation %d names no generation to switch to", n, from)
	}
	return s.update(ctx, func(tx *bolt.Tx) ([]Event, error) {
		meta, b := tx.Bucket(bucketMeta), tx.Bucket(bucketGenerations)
		var env string
		if to != 0 {
			var err error
			if env, err = envOf(tx, to); err != nil {
				return nil, err
			}
			if cur := btoi(meta.Get(currentKey(env))); cur != from {
				return nil, fmt.Errorf("switch from generation %d, but %d is current in %s: %w", from, cur, env, ErrConflict)
			}
		}
		data := b.Get(itob(n))
		if data == nil {
			return nil, fmt.Errorf("generation %d: %w", n, ErrNotFound)
		}
		// Only the confirmation changes: the rest, secret digests
		// included, is written back as it was.
		var sg storedGeneration
		if err := json.Unmarshal(data, &sg); err != nil {
			return nil, fmt.Errorf("decode generation: %w", err)
		}
		sg.Confirm = c
		data, err := json.Marshal(&sg)
		if err != nil {
			return nil, err
		}
		if err := b.Put(itob(n), data); err != nil {
			return nil, err
		}
		events := []Event{{Type: EventConfirm, Generation: n, Env: sg.EnvOrDefault()}}
		if to != 0 && to != from {
			if err := meta.Put(currentKey(env), itob(to)); err != nil {
				return nil, err
			}
			events = append(events, Event{Type: EventCurrent, Generation: to, From: from, Env: env})
		}
		return events, nil
	})
}

// DropEnv implements Store.
func (s *Bolt) DropEnv(ctx context.Context, env string, from uint64) error {
	if env == spec.DefaultEnv {
		return fmt.Errorf("environment %s: %w", env, ErrDefaultEnv)
	}
	return s.update(ctx, func(tx *bolt.Tx) ([]Event, error) {
		meta, b := tx.Bucket(bucketMeta), tx.Bucket(bucketGenerations)
		if cur := btoi(meta.Get(currentKey(env))); cur != from {
			return nil, fmt.Errorf("drop environment %s from generation %d, but %d is current: %w", env, from, cur, ErrConflict)
		}
		if from == 0 {
			return nil, fmt.Errorf("environment %s: %w", env, ErrNotFound)
		}
		if err := meta.Delete(currentKey(env)); err != nil {
			return nil, err
		}
		events := []Event{{Type: EventCurrent, From: from, Env: env}}
		var drop [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var g struct {
				Env string `json:"env"`
			}
			if err := json.Unmarshal(v, &g); err != nil {
				return fmt.Errorf("decode generation: %w", err)
			}
			if g.Env == env {
				drop = append(drop, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return nil, err
			}
			events = append(events, Event{Type: EventRemoved, Generation: btoi(k), Env: env})
		}
		return events, collectSecrets(tx)
	})
}

// Delete implements Store.
func (s *Bolt) Delete(ctx context.Context, ns ...uint64) error {
	return s.update(ctx, func(tx *bolt.Tx) ([]Event, error) {
		current := map[uint64]string{}
		for env, n := range currents(tx) {
			current[n] = env
		}
		for _, n := range ns {
			if env, ok := current[n]; ok {
				return nil, fmt.Errorf("generation %d (current in %s): %w", n, env, ErrCurrent)
			}
		}
		b := tx.Bucket(bucketGenerations)
		var events []Event
		for _, n := range ns {
			env, err := envOf(tx, n)
			if errors.Is(err, ErrNotFound) {
				continue
			} else if err != nil {
				return nil, err
			}
			if err := b.Delete(itob(n)); err != nil {
				return nil, err
			}
			events = append(events, Event{Type: EventRemoved, Generation: n, Env: env})
		}
		if len(events) == 0 {
			return nil, nil
		}
		return events, collectSecrets(tx)
	})
}

// Secret implements Store.
func (s *Bolt) Secret(ctx context.Context, digest string) ([]byte, error) {
	var out []byte
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketSecrets).Get([]byte(digest))
		if v == nil {
			return fmt.Errorf("secret %s: %w", digest, ErrNotFound)
		}
		out = bytes.Clone(v)
		return nil
	})
	return out, err
}

func recordKey(kind, key string) []byte { return []byte(kind + "\x00" + key) }

func decodeRecord(k, v []byte) Record {
	kind, key, _ := bytes.Cut(k, []byte{0})
	return Record{Kind: string(kind), Key: string(key), Revision: btoi(v[:8]), Value: bytes.Clone(v[8:])}
}

// Record implements Store.
func (s *Bolt) Record(ctx context.Context, kind, key string) (Record, error) {
	var r Record
	err := s.view(ctx, func(tx *bolt.Tx) error {
		k := recordKey(kind, key)
		v := tx.Bucket(bucketRecords).Get(k)
		if v == nil {
			return fmt.Errorf("record %s %s: %w", kind, key, ErrNotFound)
		}
		r = decodeRecord(k, v)
		return nil
	})
	return r, err
}

// Records implements Store.
func (s *Bolt) Records(ctx context.Context, kind string) ([]Record, error) {
	var out []Record
	err := s.view(ctx, func(tx *bolt.Tx) error {
		prefix := recordKey(kind, "")
		c := tx.Bucket(bucketRecords).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			out = append(out, decodeRecord(k, v))
		}
		return nil
	})
	return out, err
}

// PutRecord implements Store.
func (s *Bolt) PutRecord(ctx context.Context, kind, key string, value []byte, rev uint64) (uint64, error) {
	var next uint64
	err := s.update(ctx, func(tx *bolt.Tx) ([]Event, error) {
		b := tx.Bucket(bucketRecords)
		k := recordKey(kind, key)
		var have uint64
		if v := b.Get(k); v != nil {
			have = btoi(v[:8])
		}
		if have != rev {
			return nil, fmt.Errorf("record %s %s at revision %d, not %d: %w", kind, key, have, rev, ErrConflict)
		}
		next = btoi(tx.Bucket(bucketMeta).Get(keyRevision)) + 1
		return []Event{{Type: EventRecord, Kind: kind, Key: key}}, b.Put(k, append(itob(next), value...))
	})
	if err != nil {
		return 0, err
	}
	return next, nil
}

// DeleteRecord implements Store.
func (s *Bolt) DeleteRecord(ctx context.Context, kind, key string, rev uint64) error {
	return s.update(ctx, func(tx *bolt.Tx) ([]Event, error) {
		b := tx.Bucket(bucketRecords)
		k := recordKey(kind, key)
		v := b.Get(k)
		if v == nil {
			return nil, fmt.Errorf("record %s %s: %w", kind, key, ErrNotFound)
		}
		if have := btoi(v[:8]); have != rev {
			return nil, fmt.Errorf("record %s %s at revision %d, not %d: %w", kind, key, have, rev, ErrConflict)
		}
		return []Event{{Type: EventRecordDeleted, Kind: kind, Key: key}}, b.Delete(k)
	})
}

// Watch implements Store.
func (s *Bolt) Watch(ctx context.Context) (<-chan Event, error) {
	w := &watcher{wake: make(chan struct{}, 1), out: make(chan Event)}
	s.wmu.Lock()
	select {
	case <-s.closed:
		s.wmu.Unlock()
		return nil, fmt.Errorf("watch: the store is closed")
	default:
	}
	s.watchers[w] = struct{}{}
	s.wmu.Unlock()
	go func() {
		defer close(w.out)
		defer func() {
			s.wmu.Lock()
			delete(s.watchers, w)
			s.wmu.Unlock()
		}()
		for {
			ev, ok := w.pop()
			if !ok {
				select {
				case <-w.wake:
					continue
				case <-ctx.Done():
					return
				case <-s.closed:
					return
				}
			}
			select {
			case w.out <- ev:
			case <-ctx.Done():
				return
			case <-s.closed:
				return
			}
		}
	}()
	return w.out, nil
}

// watcher queues the events of one Watch, so that a slow reader delays
// no writer.
type watcher struct {
	mu    sync.Mutex
	queue []Event
	wake  chan struct{}
	out   chan Event
}

func (w *watcher) push(events []Event) {
	w.mu.Lock()
	w.queue = append(w.queue, events...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *watcher) pop() (Event, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		return Event{}, false
	}
	ev := w.queue[0]
	w.queue = w.queue[1:]
	return ev, true
}

// Close implements Store.
func (s *Bolt) Close() error {
	s.wmu.Lock()
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	s.wmu.Unlock()
	return s.db.Close()
}

// storedGeneration is a generation as the store keeps it: its secrets by
// digest, their ciphertexts once in bucketSecrets.
type storedGeneration struct {
	spec.Generation
	SecretDigests map[string]string `json:"secret_digests,omitempty"`
}

// putGeneration stores g, its secret ciphertexts by digest.
func putGeneration(tx *bolt.Tx, g *spec.Generation) error {
	sg := storedGeneration{Generation: *g}
	sg.Secrets = nil
	if len(g.Secrets) > 0 {
		sg.SecretDigests = make(map[string]string, len(g.Secrets))
		secrets := tx.Bucket(bucketSecrets)
		for name, ct := range g.Secrets {
			d := SecretDigest(ct)
			if secrets.Get([]byte(d)) == nil {
				if err := secrets.Put([]byte(d), ct); err != nil {
					return err
				}
			}
			sg.SecretDigests[name] = d
		}
	}
	data, err := json.Marshal(&sg)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketGenerations).Put(itob(g.Number), data)
}

// getGeneration decodes a stored generation and fills in its secrets.
func getGeneration(tx *bolt.Tx, data []byte) (*spec.Generation, error) {
	var sg storedGeneration
	if err := json.Unmarshal(data, &sg); err != nil {
		return nil, fmt.Errorf("decode generation: %w", err)
	}
	g := sg.Generation
	g.Env = g.EnvOrDefault()
	if len(sg.SecretDigests) > 0 {
		g.Secrets = make(map[string][]byte, len(sg.SecretDigests))
		secrets := tx.Bucket(bucketSecrets)
		for name, d := range sg.SecretDigests {
			ct := secrets.Get([]byte(d))
			if ct == nil {
				return nil, fmt.Errorf("generation %d: secret %q (%s): %w", g.Number, name, d, ErrNotFound)
			}
			g.Secrets[name] = bytes.Clone(ct)
		}
	}
	return &g, nil
}

// collectSecrets removes the ciphertexts no generation refers to.
func collectSecrets(tx *bolt.Tx) error {
	used := map[string]bool{}
	err := tx.Bucket(bucketGenerations).ForEach(func(_, v []byte) error {
		var sg storedGeneration
		if err := json.Unmarshal(v, &sg); err != nil {
			return fmt.Errorf("decode generation: %w", err)
		}
		for _, d := range sg.SecretDigests {
			used[d] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	var unused [][]byte
	secrets := tx.Bucket(bucketSecrets)
	err = secrets.ForEach(func(k, _ []byte) error {
		if !used[string(k)] {
			unused = append(unused, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range unused {
		if err := secrets.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// migrateInlineSecrets rewrites generations that carry their secret
// ciphertexts inline (the layout before secrets were kept by digest).
func migrateInlineSecrets(tx *bolt.Tx) error {
	b := tx.Bucket(bucketGenerations)
	var old []*spec.Generation
	err := b.ForEach(func(_, v []byte) error {
		var sg storedGeneration
		if err := json.Unmarshal(v, &sg); err != nil {
			return fmt.Errorf("decode generation: %w", err)
		}
		if len(sg.Generation.Secrets) > 0 {
			g := sg.Generation
			old = append(old, &g)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, g := range old {
		if err := putGeneration(tx, g); err != nil {
			return err
		}
	}
	return nil
}
