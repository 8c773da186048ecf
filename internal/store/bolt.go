package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"hostel/internal/spec"
)

var (
	bucketGenerations = []byte("generations")
	bucketMeta        = []byte("meta")
	keyCurrent        = []byte("current")
)

// Bolt is a Store in a local bbolt file: every write is one fsynced transaction.
type Bolt struct {
	db  *bolt.DB
	now func() time.Time
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens (or creates) the store file at path, mode 0600. It fails
// fast if another daemon holds the file.
func OpenBolt(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketGenerations, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	return &Bolt{db: db, now: time.Now}, nil
}

func itob(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

// Commit implements Store.
func (s *Bolt) Commit(g *spec.Generation) (uint64, error) {
	var n uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGenerations)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		c := *g
		c.Number = seq
		c.Time = s.now().UTC()
		data, err := json.Marshal(&c)
		if err != nil {
			return err
		}
		if err := b.Put(itob(seq), data); err != nil {
			return err
		}
		n = seq
		return tx.Bucket(bucketMeta).Put(keyCurrent, itob(seq))
	})
	if err != nil {
		return 0, fmt.Errorf("commit generation: %w", err)
	}
	g.Number = n
	return n, nil
}

// Current implements Store.
func (s *Bolt) Current() (*spec.Generation, error) {
	var g *spec.Generation
	err := s.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketMeta).Get(keyCurrent)
		if cur == nil {
			return nil
		}
		var err error
		g, err = decode(tx.Bucket(bucketGenerations).Get(cur))
		return err
	})
	return g, err
}

// Get implements Store.
func (s *Bolt) Get(n uint64) (*spec.Generation, error) {
	var g *spec.Generation
	err := s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketGenerations).Get(itob(n))
		if data == nil {
			return fmt.Errorf("generation %d: %w", n, ErrNotFound)
		}
		var err error
		g, err = decode(data)
		return err
	})
	return g, err
}

// List implements Store.
func (s *Bolt) List() ([]*spec.Generation, error) {
	var out []*spec.Generation
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketGenerations).ForEach(func(_, v []byte) error {
			g, err := decode(v)
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
func (s *Bolt) SetCurrent(n uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketGenerations).Get(itob(n)) == nil {
			return fmt.Errorf("generation %d: %w", n, ErrNotFound)
		}
		return tx.Bucket(bucketMeta).Put(keyCurrent, itob(n))
	})
}

// SetConfirm implements Store.
func (s *Bolt) SetConfirm(n uint64, c *spec.Confirm, current uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGenerations)
		if current != 0 {
			if b.Get(itob(current)) == nil {
				return fmt.Errorf("generation %d: %w", current, ErrNotFound)
			}
			if err := tx.Bucket(bucketMeta).Put(keyCurrent, itob(current)); err != nil {
				return err
			}
		}
		data := b.Get(itob(n))
		if data == nil {
			return fmt.Errorf("generation %d: %w", n, ErrNotFound)
		}
		g, err := decode(data)
		if err != nil {
			return err
		}
		g.Confirm = c
		data, err = json.Marshal(g)
		if err != nil {
			return err
		}
		return b.Put(itob(n), data)
	})
}

// Delete implements Store.
func (s *Bolt) Delete(ns ...uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketMeta).Get(keyCurrent)
		b := tx.Bucket(bucketGenerations)
		for _, n := range ns {
			if cur != nil && binary.BigEndian.Uint64(cur) == n {
				return fmt.Errorf("generation %d: %w", n, ErrCurrent)
			}
			if err := b.Delete(itob(n)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }

func decode(data []byte) (*spec.Generation, error) {
	var g spec.Generation
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, fmt.Errorf("decode generation: %w", err)
	}
	return &g, nil
}
