package store

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"hostel/internal/failpoint"
)

func recordKey(kind, key string) []byte { return []byte(kind + "\x00" + key) }

func decodeRecord(tx *bolt.Tx, k, v []byte) Record {
	kind, key, _ := bytes.Cut(k, []byte{0})
	return Record{Kind: string(kind), Key: string(key), Revision: btoi(v[:8]), Value: bytes.Clone(v[8:]),
		Lease: LeaseID(btoi(tx.Bucket(bucketRecordLease).Get(k)))}
}

// records returns every record of kind, by key.
func records(tx *bolt.Tx, kind string) []Record {
	var out []Record
	prefix := recordKey(kind, "")
	c := tx.Bucket(bucketRecords).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		out = append(out, decodeRecord(tx, k, v))
	}
	return out
}

// Record implements Store.
func (s *Bolt) Record(ctx context.Context, kind, key string) (Record, error) {
	if err := CheckName("record kind", kind); err != nil {
		return Record{}, err
	}
	var r Record
	err := s.view(ctx, func(tx *bolt.Tx) error {
		k := recordKey(kind, key)
		v := tx.Bucket(bucketRecords).Get(k)
		if v == nil {
			return fmt.Errorf("record %s %s: %w", kind, key, ErrNotFound)
		}
		r = decodeRecord(tx, k, v)
		return nil
	})
	return r, err
}

// Records implements Store.
func (s *Bolt) Records(ctx context.Context, kind string) ([]Record, error) {
	if err := CheckName("record kind", kind); err != nil {
		return nil, err
	}
	var out []Record
	err := s.view(ctx, func(tx *bolt.Tx) error {
		out = records(tx, kind)
		return nil
	})
	return out, err
}

// PutRecord implements Store.
func (s *Bolt) PutRecord(ctx context.Context, kind, key string, value []byte, rev uint64) (uint64, error) {
	return s.Txn(ctx, Write{Kind: kind, Key: key, Value: value, Rev: rev})
}

// DeleteRecord implements Store.
func (s *Bolt) DeleteRecord(ctx context.Context, kind, key string, rev uint64) error {
	_, err := s.Txn(ctx, Write{Kind: kind, Key: key, Rev: rev, Delete: true})
	return err
}

// Txn implements Store.
func (s *Bolt) Txn(ctx context.Context, writes ...Write) (uint64, error) {
	if err := CheckWrites(writes); err != nil {
		return 0, err
	}
	if err := failpoint.Inject("store-before-txn"); err != nil {
		return 0, err
	}
	rev, err := s.update(ctx, func(t *btx) error { return applyWrites(t, writes) })
	if err == nil {
		if err := failpoint.Inject("store-after-txn"); err != nil {
			return 0, err
		}
	}
	return rev, err
}

// applyWrites makes writes in t, or returns why the first that cannot be
// made cannot (and t is undone).
func applyWrites(t *btx, writes []Write) error {
	records := t.Bucket(bucketRecords)
	for _, w := range writes {
		k := recordKey(w.Kind, w.Key)
		v := records.Get(k)
		var rev uint64
		if v != nil {
			rev = btoi(v[:8])
		}
		if err := w.Check(v != nil, rev); err != nil {
			return err
		}
		if w.Delete {
			if v != nil {
				if err := deleteRecord(t, k); err != nil {
					return err
				}
			}
			continue
		}
		if err := unbindLease(t.Tx, k); err != nil {
			return err
		}
		if w.Lease != 0 {
			if t.Bucket(bucketLeases).Get(itob(uint64(w.Lease))) == nil {
				return fmt.Errorf("record %s %s: lease %x: %w", w.Kind, w.Key, w.Lease, ErrNotFound)
			}
			if err := bindLease(t.Tx, k, w.Lease); err != nil {
				return err
			}
		}
		if err := records.Put(k, append(itob(t.rev), w.Value...)); err != nil {
			return err
		}
		t.emit(Event{Type: EventRecord, Kind: w.Kind, Key: w.Key})
	}
	return nil
}

// deleteRecord deletes the record under k (which exists) and its
// binding to a lease.
func deleteRecord(t *btx, k []byte) error {
	if err := t.Bucket(bucketRecords).Delete(k); err != nil {
		return err
	}
	if err := unbindLease(t.Tx, k); err != nil {
		return err
	}
	kind, key, _ := bytes.Cut(k, []byte{0})
	t.emit(Event{Type: EventRecordDeleted, Kind: string(kind), Key: string(key)})
	return nil
}

func bindLease(tx *bolt.Tx, k []byte, id LeaseID) error {
	if err := tx.Bucket(bucketRecordLease).Put(k, itob(uint64(id))); err != nil {
		return err
	}
	return tx.Bucket(bucketLeaseRecord).Put(append(itob(uint64(id)), k...), nil)
}

// unbindLease undoes the binding of the record under k to a lease, if
// there is one.
func unbindLease(tx *bolt.Tx, k []byte) error {
	rl := tx.Bucket(bucketRecordLease)
	id := rl.Get(k)
	if id == nil {
		return nil
	}
	if err := tx.Bucket(bucketLeaseRecord).Delete(append(bytes.Clone(id), k...)); err != nil {
		return err
	}
	return rl.Delete(k)
}
