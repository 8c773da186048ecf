package etcd

import (
	"context"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"hostel/internal/failpoint"
	"hostel/internal/store"
)

func (s *Store) record(kind string, kv *mvccpb.KeyValue) store.Record {
	return store.Record{Kind: kind, Key: strings.TrimPrefix(string(kv.Key), s.kRecords(kind)), Value: kv.Value,
		Revision: uint64(kv.ModRevision), Lease: store.LeaseID(kv.Lease)}
}

// records decodes the records of kind in r.
func (s *Store) records(kind string, r *clientv3.GetResponse) []store.Record {
	var out []store.Record
	for _, kv := range r.Kvs {
		out = append(out, s.record(kind, kv))
	}
	return out
}

// Record implements store.Store.
func (s *Store) Record(ctx context.Context, kind, key string) (store.Record, error) {
	if err := s.usable(ctx); err != nil {
		return store.Record{}, err
	}
	if err := store.CheckName("record kind", kind); err != nil {
		return store.Record{}, err
	}
	got, err := s.cli.Get(ctx, s.kRecord(kind, key))
	if err != nil {
		return store.Record{}, wrap(err)
	}
	kv := first(got)
	if kv == nil {
		return store.Record{}, fmt.Errorf("record %s %s: %w", kind, key, store.ErrNotFound)
	}
	return s.record(kind, kv), nil
}

// Records implements store.Store.
func (s *Store) Records(ctx context.Context, kind string) ([]store.Record, error) {
	if err := store.CheckName("record kind", kind); err != nil {
		return nil, err
	}
	got, _, err := s.get(ctx, clientv3.OpGet(s.kRecords(kind), clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	return s.records(kind, got[0]), nil
}

// PutRecord implements store.Store.
func (s *Store) PutRecord(ctx context.Context, kind, key string, value []byte, rev uint64) (uint64, error) {
	return s.Txn(ctx, store.Write{Kind: kind, Key: key, Value: value, Rev: rev})
}

// DeleteRecord implements store.Store.
func (s *Store) DeleteRecord(ctx context.Context, kind, key string, rev uint64) error {
	_, err := s.Txn(ctx, store.Write{Kind: kind, Key: key, Rev: rev, Delete: true})
	return err
}

// Txn implements store.Store.
func (s *Store) Txn(ctx context.Context, writes ...store.Write) (uint64, error) {
	if err := failpoint.Inject("store-before-txn"); err != nil {
		return 0, err
	}
	rev, err := s.write(ctx, func(context.Context) (*attempt, error) { return &attempt{}, nil }, writes)
	if err == nil {
		if err := failpoint.Inject("store-after-txn"); err != nil {
			return 0, err
		}
	}
	return rev, err
}
