package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"hostel/internal/failpoint"
	"hostel/internal/store"
)

// Migration is what Load moved in, kept under PREFIX migrated.
type Migration struct {
	// Source names where the content came from (a bbolt file).
	Source string `json:"source"`
	// Time is when the move finished.
	Time time.Time `json:"time"`
	// Generations is how many generations were moved.
	Generations int `json:"generations"`
}

// Deployed reports whether a generation was ever committed here (or
// moved in by Load): then the keys hold a deployment.
func (s *Store) Deployed(ctx context.Context) (bool, error) {
	if err := s.usable(ctx); err != nil {
		return false, err
	}
	got, err := s.cli.Get(ctx, s.kSeq(), clientv3.WithCountOnly())
	if err != nil {
		return false, wrap(err)
	}
	return got.Count > 0, nil
}

// Migrated returns what Load moved in, or nil if it never did.
func (s *Store) Migrated(ctx context.Context) (*Migration, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	got, err := s.cli.Get(ctx, s.kMigrated())
	if err != nil {
		return nil, wrap(err)
	}
	kv := first(got)
	if kv == nil {
		return nil, nil
	}
	var m Migration
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		return nil, fmt.Errorf("etcd key %s: %w", kv.Key, err)
	}
	return &m, nil
}

// loadBatchBytes bounds the values of one transaction of Load, under
// etcd's 1.5 MiB request limit.
const loadBatchBytes = 1 << 20

// Load moves a store's content in (see store.Dump), exactly: generations
// under their numbers, the sequence, the current generations, secret
// ciphertexts and records. It refuses keys that hold a deployment
// (Deployed), and first clears what a Load cut short left: the
// generations, currents and ciphertexts (nothing else writes any before a
// deployment) and the records it listed under PREFIX migrating as it
// began — not the records other daemons of a cluster starting beside
// this one write meanwhile (their machine keys, the cluster's CA, their
// nodes). It writes in batches, each atomic and under etcd's limits, the
// sequence last: until then the keys hold no deployment, and a Load again
// starts over. source, with the time, is kept under PREFIX migrated.
func (s *Store) Load(ctx context.Context, d *store.Dump, source string) error {
	deployed, err := s.Deployed(ctx)
	if err != nil {
		return err
	}
	if deployed {
		return fmt.Errorf("etcd under %s already holds a deployment", s.p)
	}
	empty := clientv3.Compare(clientv3.CreateRevision(s.kSeq()), "=", 0)
	commit := func(ops []clientv3.Op) error {
		if err := failpoint.Inject("store-before-load-batch"); err != nil {
			return err
		}
		resp, err := s.cli.Txn(ctx).If(empty).Then(ops...).Commit()
		if err != nil {
			return wrap(err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("etcd under %s: a deployment was committed while loading: %w", s.p, store.ErrConflict)
		}
		return nil
	}
	if err := s.clearLoad(ctx, commit); err != nil {
		return fmt.Errorf("clear %s: %w", s.p, err)
	}
	var keys []string // the records this Load writes
	for _, r := range d.Records {
		if err := store.CheckName("record kind", r.Kind); err != nil {
			return err
		}
		keys = append(keys, s.kRecord(r.Kind, r.Key))
	}
	listed, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	if err := commit([]clientv3.Op{clientv3.OpPut(s.kMigrating(), string(listed))}); err != nil {
		return err
	}
	var (
		batch []clientv3.Op
		bytes int
	)
	add := func(key string, value []byte) error {
		if len(batch) > 0 && (len(batch) == store.DeleteBatch || bytes+len(key)+len(value) > loadBatchBytes) {
			if err := commit(batch); err != nil {
				return err
			}
			batch, bytes = nil, 0
		}
		batch = append(batch, clientv3.OpPut(key, string(value)))
		bytes += len(key) + len(value)
		return nil
	}
	for _, digest := range slices.Sorted(maps.Keys(d.Secrets)) {
		if err := add(s.kSecret(digest), d.Secrets[digest]); err != nil {
			return err
		}
	}
	for _, g := range d.Generations {
		if err := add(s.kGen(g.Number), g.Data); err != nil {
			return err
		}
	}
	for _, r := range d.Records {
		if err := add(s.kRecord(r.Kind, r.Key), r.Value); err != nil {
			return err
		}
	}
	for _, env := range slices.Sorted(maps.Keys(d.Currents)) {
		if err := add(s.kCurrent(env), []byte(itoa(d.Currents[env]))); err != nil {
			return err
		}
	}
	if len(batch) > 0 {
		if err := commit(batch); err != nil {
			return err
		}
	}
	m, err := json.Marshal(Migration{Source: source, Time: time.Now().UTC(), Generations: len(d.Generations)})
	if err != nil {
		return err
	}
	return commit([]clientv3.Op{clientv3.OpPut(s.kMigrated(), string(m)), clientv3.OpDelete(s.kMigrating()), clientv3.OpPut(s.kSeq(), itoa(d.Sequence))})
}

// clearLoad clears what a Load cut short wrote (see Load), in
// transactions of at most store.DeleteBatch operations.
func (s *Store) clearLoad(ctx context.Context, commit func([]clientv3.Op) error) error {
	ops := []clientv3.Op{
		clientv3.OpDelete(s.kGens(), clientv3.WithPrefix()),
		clientv3.OpDelete(s.kCurrents(), clientv3.WithPrefix()),
		clientv3.OpDelete(s.kSecrets(), clientv3.WithPrefix()),
	}
	got, err := s.cli.Get(ctx, s.kMigrating())
	if err != nil {
		return wrap(err)
	}
	if kv := first(got); kv != nil {
		var keys []string
		if err := json.Unmarshal(kv.Value, &keys); err != nil {
			return fmt.Errorf("etcd key %s: %w", kv.Key, err)
		}
		for _, k := range keys {
			ops = append(ops, clientv3.OpDelete(k))
		}
	}
	for len(ops) > 0 {
		n := min(len(ops), store.DeleteBatch)
		if err := commit(ops[:n]); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}
