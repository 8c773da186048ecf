package store

import (
	"bytes"
	"context"

	bolt "go.etcd.io/bbolt"
)

// Dump returns the store's content, to move it to another store (see
// Dump).
func (s *Bolt) Dump(ctx context.Context) (*Dump, error) {
	d := &Dump{Secrets: map[string][]byte{}}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		gens := tx.Bucket(bucketGenerations)
		d.Sequence = gens.Sequence()
		d.Currents = currents(tx)
		err := gens.ForEach(func(k, v []byte) error {
			d.Generations = append(d.Generations, DumpedGeneration{Number: btoi(k), Data: bytes.Clone(v)})
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketSecrets).ForEach(func(k, v []byte) error {
			d.Secrets[string(k)] = bytes.Clone(v)
			return nil
		})
		if err != nil {
			return err
		}
		leased := tx.Bucket(bucketRecordLease)
		return tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
			if leased.Get(k) == nil {
				d.Records = append(d.Records, decodeRecord(tx, k, v))
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}
