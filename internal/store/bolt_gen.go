package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"

	"hostel/internal/failpoint"
	"hostel/internal/spec"
)

// Commit implements Store.
func (s *Bolt) Commit(ctx context.Context, g *spec.Generation, from uint64, also ...Write) (uint64, error) {
	if err := CheckWrites(also); err != nil {
		return 0, fmt.Errorf("commit generation: %w", err)
	}
	if err := failpoint.Inject("store-before-commit"); err != nil {
		return 0, fmt.Errorf("commit generation: %w", err)
	}
	var c spec.Generation
	_, err := s.update(ctx, func(t *btx) error {
		meta := t.Bucket(bucketMeta)
		env := g.EnvOrDefault()
		if cur := btoi(meta.Get(currentKey(env))); cur != from {
			return fmt.Errorf("commit on generation %d, but %d is current in %s: %w", from, cur, env, ErrConflict)
		}
		b := t.Bucket(bucketGenerations)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		c = *g
		c.Env = c.EnvOrDefault()
		c.Number = seq
		c.Time = s.b.now().UTC()
		if err := putGeneration(t.Tx, &c); err != nil {
			return err
		}
		if err := meta.Put(currentKey(env), itob(seq)); err != nil {
			return err
		}
		t.emit(Event{Type: EventAdded, Generation: seq, Env: env}, Event{Type: EventCurrent, Generation: seq, From: from, Env: env})
		return applyWrites(t, also)
	})
	if err != nil {
		return 0, fmt.Errorf("commit generation: %w", err)
	}
	if err := failpoint.Inject("store-after-commit"); err != nil {
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

// Read implements Store.
func (s *Bolt) Read(ctx context.Context, kinds ...string) (*Snapshot, error) {
	for _, k := range kinds {
		if err := CheckName("record kind", k); err != nil {
			return nil, err
		}
	}
	snap := &Snapshot{Currents: map[string]*spec.Generation{}, Records: map[string][]Record{}}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		snap.Revision = btoi(tx.Bucket(bucketMeta).Get(keyRevision))
		byNumber := map[uint64]*spec.Generation{}
		err := tx.Bucket(bucketGenerations).ForEach(func(k, v []byte) error {
			g, err := getGeneration(tx, v)
			if err != nil {
				return err
			}
			snap.Generations = append(snap.Generations, g)
			byNumber[btoi(k)] = g
			return nil
		})
		if err != nil {
			return err
		}
		for env, n := range currents(tx) {
			g := byNumber[n]
			if g == nil {
				return fmt.Errorf("current generation %d of %s: %w", n, env, ErrNotFound)
			}
			snap.Currents[env] = g
		}
		for _, kind := range kinds {
			snap.Records[kind] = records(tx, kind)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return snap, nil
}

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
	return GenerationEnv(data)
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
func (s *Bolt) SetCurrent(ctx context.Context, from, to uint64, also ...Write) error {
	if err := CheckWrites(also); err != nil {
		return err
	}
	if err := failpoint.Inject("store-before-set-current"); err != nil {
		return err
	}
	_, err := s.update(ctx, func(t *btx) error {
		meta := t.Bucket(bucketMeta)
		env, err := envOf(t.Tx, to)
		if err != nil {
			return err
		}
		if cur := btoi(meta.Get(currentKey(env))); cur != from {
			return fmt.Errorf("switch from generation %d, but %d is current in %s: %w", from, cur, env, ErrConflict)
		}
		if from != to {
			if err := meta.Put(currentKey(env), itob(to)); err != nil {
				return err
			}
			t.emit(Event{Type: EventCurrent, Generation: to, From: from, Env: env})
		}
		return applyWrites(t, also)
	})
	if err == nil {
		err = failpoint.Inject("store-after-set-current")
	}
	return err
}

// SetConfirm implements Store.
func (s *Bolt) SetConfirm(ctx context.Context, n uint64, c *spec.Confirm, from, to uint64, also ...Write) error {
	if to == 0 && from != 0 {
		return fmt.Errorf("confirm of generation %d: a switch from generation %d names no generation to switch to", n, from)
	}
	if err := CheckWrites(also); err != nil {
		return err
	}
	if err := failpoint.Inject("store-before-set-confirm"); err != nil {
		return err
	}
	_, err := s.update(ctx, func(t *btx) error {
		meta, b := t.Bucket(bucketMeta), t.Bucket(bucketGenerations)
		var env string
		if to != 0 {
			var err error
			if env, err = envOf(t.Tx, to); err != nil {
				return err
			}
			if cur := btoi(meta.Get(currentKey(env))); cur != from {
				return fmt.Errorf("switch from generation %d, but %d is current in %s: %w", from, cur, env, ErrConflict)
			}
		}
		data := b.Get(itob(n))
		if data == nil {
			return fmt.Errorf("generation %d: %w", n, ErrNotFound)
		}
		genEnv, err := GenerationEnv(data)
		if err != nil {
			return err
		}
		if data, err = WithConfirm(data, c); err != nil {
			return err
		}
		if err := b.Put(itob(n), data); err != nil {
			return err
		}
		t.emit(Event{Type: EventConfirm, Generation: n, Env: genEnv})
		if to != 0 && to != from {
			if err := meta.Put(currentKey(env), itob(to)); err != nil {
				return err
			}
			t.emit(Event{Type: EventCurrent, Generation: to, From: from, Env: env})
		}
		return applyWrites(t, also)
	})
	if err == nil {
		err = failpoint.Inject("store-after-set-confirm")
	}
	return err
}

// DropEnv implements Store.
func (s *Bolt) DropEnv(ctx context.Context, env string, from uint64, also ...Write) error {
	if env == spec.DefaultEnv {
		return fmt.Errorf("environment %s: %w", env, ErrDefaultEnv)
	}
	if err := CheckWrites(also); err != nil {
		return err
	}
	if err := failpoint.Inject("store-before-drop-env"); err != nil {
		return err
	}
	_, err := s.update(ctx, func(t *btx) error {
		meta, b := t.Bucket(bucketMeta), t.Bucket(bucketGenerations)
		if cur := btoi(meta.Get(currentKey(env))); cur != from {
			return fmt.Errorf("drop environment %s from generation %d, but %d is current: %w", env, from, cur, ErrConflict)
		}
		if from == 0 {
			return fmt.Errorf("environment %s: %w", env, ErrNotFound)
		}
		if err := meta.Delete(currentKey(env)); err != nil {
			return err
		}
		t.emit(Event{Type: EventCurrent, From: from, Env: env})
		var drop [][]byte
		err := b.ForEach(func(k, v []byte) error {
			genEnv, err := GenerationEnv(v)
			if genEnv == env {
				drop = append(drop, bytes.Clone(k))
			}
			return err
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return err
			}
			t.emit(Event{Type: EventRemoved, Generation: btoi(k), Env: env})
		}
		if err := collectSecrets(t.Tx); err != nil {
			return err
		}
		return applyWrites(t, also)
	})
	if err == nil {
		err = failpoint.Inject("store-after-drop-env")
	}
	return err
}

// Delete implements Store. On bbolt it is one transaction, however many
// generations it deletes.
func (s *Bolt) Delete(ctx context.Context, ns ...uint64) error {
	if err := failpoint.Inject("store-before-delete"); err != nil {
		return err
	}
	_, err := s.update(ctx, func(t *btx) error {
		current := map[uint64]string{}
		for env, n := range currents(t.Tx) {
			current[n] = env
		}
		for _, n := range ns {
			if env, ok := current[n]; ok {
				return fmt.Errorf("generation %d (current in %s): %w", n, env, ErrCurrent)
			}
		}
		b := t.Bucket(bucketGenerations)
		deleted := false
		for _, n := range ns {
			env, err := envOf(t.Tx, n)
			if errors.Is(err, ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if err := b.Delete(itob(n)); err != nil {
				return err
			}
			t.emit(Event{Type: EventRemoved, Generation: n, Env: env})
			deleted = true
		}
		if !deleted {
			return nil
		}
		return collectSecrets(t.Tx)
	})
	if err == nil {
		err = failpoint.Inject("store-after-delete")
	}
	return err
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

// putGeneration stores g, its secret ciphertexts by digest.
func putGeneration(tx *bolt.Tx, g *spec.Generation) error {
	data, secrets, err := EncodeGeneration(g)
	if err != nil {
		return err
	}
	b := tx.Bucket(bucketSecrets)
	for d, ct := range secrets {
		if b.Get([]byte(d)) == nil {
			if err := b.Put([]byte(d), ct); err != nil {
				return err
			}
		}
	}
	return tx.Bucket(bucketGenerations).Put(itob(g.Number), data)
}

// getGeneration decodes a stored generation and fills in its secrets.
func getGeneration(tx *bolt.Tx, data []byte) (*spec.Generation, error) {
	secrets := tx.Bucket(bucketSecrets)
	return DecodeGeneration(data, func(d string) ([]byte, bool) {
		ct := secrets.Get([]byte(d))
		return bytes.Clone(ct), ct != nil
	})
}

// collectSecrets removes the ciphertexts no generation refers to.
func collectSecrets(tx *bolt.Tx) error {
	used := map[string]bool{}
	err := tx.Bucket(bucketGenerations).ForEach(func(_, v []byte) error {
		ds, err := GenerationDigests(v)
		for _, d := range ds {
			used[d] = true
		}
		return err
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
