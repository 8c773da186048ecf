package etcd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"hostel/internal/failpoint"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// Commit implements store.Store. The generation, its secret ciphertexts,
// the sequence, the current generation and the writes in also are one
// transaction: at most store.MaxTxnOps keys.
func (s *Store) Commit(ctx context.Context, g *spec.Generation, from uint64, also ...store.Write) (uint64, error) {
	env := g.EnvOrDefault()
	if err := failpoint.Inject("store-before-commit"); err != nil {
		return 0, fmt.Errorf("commit generation: %w", err)
	}
	var c spec.Generation
	_, err := s.write(ctx, func(ctx context.Context) (*attempt, error) {
		got, _, err := s.get(ctx, clientv3.OpGet(s.kSeq()), clientv3.OpGet(s.kCurrent(env)))
		if err != nil {
			return nil, err
		}
		seqKV, curKV := first(got[0]), first(got[1])
		cur, err := number(curKV)
		if err != nil {
			return nil, err
		}
		if cur != from {
			return nil, fmt.Errorf("commit on generation %d, but %d is current in %s: %w", from, cur, env, store.ErrConflict)
		}
		seq, err := number(seqKV)
		if err != nil {
			return nil, err
		}
		c = *g
		c.Env, c.Number, c.Time = env, seq+1, time.Now().UTC()
		data, secrets, err := store.EncodeGeneration(&c)
		if err != nil {
			return nil, err
		}
		a := &attempt{cmps: []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(s.kSeq()), "=", modRev(seqKV)),
			clientv3.Compare(clientv3.ModRevision(s.kCurrent(env)), "=", modRev(curKV)),
		}}
		for _, d := range slices.Sorted(maps.Keys(secrets)) {
			a.ops = append(a.ops, clientv3.OpPut(s.kSecret(d), string(secrets[d])))
		}
		a.ops = append(a.ops,
			clientv3.OpPut(s.kGen(c.Number), string(data)),
			clientv3.OpPut(s.kSeq(), itoa(c.Number)),
			clientv3.OpPut(s.kCurrent(env), itoa(c.Number)))
		return a, nil
	}, also)
	if err != nil {
		return 0, fmt.Errorf("commit generation: %w", err)
	}
	if err := failpoint.Inject("store-after-commit"); err != nil {
		return 0, fmt.Errorf("commit generation: %w", err)
	}
	g.Number, g.Time = c.Number, c.Time
	return c.Number, nil
}

// secretsOf returns a lookup of the ciphertexts in kvs (keys under
// secret/), by digest.
func (s *Store) secretsOf(kvs []*mvccpb.KeyValue) func(string) ([]byte, bool) {
	m := make(map[string][]byte, len(kvs))
	for _, kv := range kvs {
		m[strings.TrimPrefix(string(kv.Key), s.kSecrets())] = kv.Value
	}
	return func(d string) ([]byte, bool) {
		ct, ok := m[d]
		return ct, ok
	}
}

// decodeAll decodes the generations in gens, their secrets from secrets.
func (s *Store) decodeAll(gens, secrets *clientv3.GetResponse) ([]*spec.Generation, error) {
	lookup := s.secretsOf(secrets.Kvs)
	out := make([]*spec.Generation, 0, len(gens.Kvs))
	for _, kv := range gens.Kvs {
		g, err := store.DecodeGeneration(kv.Value, lookup)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// currents decodes the current generations' numbers, by environment.
func (s *Store) currents(r *clientv3.GetResponse) (map[string]uint64, error) {
	out := make(map[string]uint64, len(r.Kvs))
	for _, kv := range r.Kvs {
		n, err := number(kv)
		if err != nil {
			return nil, err
		}
		out[strings.TrimPrefix(string(kv.Key), s.kCurrents())] = n
	}
	return out, nil
}

// Read implements store.Store: one transaction of ranges.
func (s *Store) Read(ctx context.Context, kinds ...string) (*store.Snapshot, error) {
	ops := []clientv3.Op{
		clientv3.OpGet(s.kCurrents(), clientv3.WithPrefix()),
		clientv3.OpGet(s.kGens(), clientv3.WithPrefix()),
		clientv3.OpGet(s.kSecrets(), clientv3.WithPrefix()),
	}
	for _, k := range kinds {
		if err := store.CheckName("record kind", k); err != nil {
			return nil, err
		}
		ops = append(ops, clientv3.OpGet(s.kRecords(k), clientv3.WithPrefix()))
	}
	got, rev, err := s.get(ctx, ops...)
	if err != nil {
		return nil, err
	}
	snap := &store.Snapshot{Revision: uint64(rev), Currents: map[string]*spec.Generation{}, Records: map[string][]store.Record{}}
	if snap.Generations, err = s.decodeAll(got[1], got[2]); err != nil {
		return nil, err
	}
	cur, err := s.currents(got[0])
	if err != nil {
		return nil, err
	}
	for env, n := range cur {
		i := slices.IndexFunc(snap.Generations, func(g *spec.Generation) bool { return g.Number == n })
		if i < 0 {
			return nil, fmt.Errorf("current generation %d of %s: %w", n, env, store.ErrNotFound)
		}
		snap.Currents[env] = snap.Generations[i]
	}
	for i, k := range kinds {
		snap.Records[k] = s.records(k, got[3+i])
	}
	return snap, nil
}

// generationAt returns generation n as of revision rev (0: now), with its
// secrets as of the same revision.
func (s *Store) generationAt(ctx context.Context, n uint64, rev int64) (*spec.Generation, error) {
	opts := []clientv3.OpOption{}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	got, err := s.cli.Get(ctx, s.kGen(n), opts...)
	if err != nil {
		return nil, wrap(err)
	}
	kv := first(got)
	if kv == nil {
		return nil, fmt.Errorf("generation %d: %w", n, store.ErrNotFound)
	}
	digests, err := store.GenerationDigests(kv.Value)
	if err != nil {
		return nil, err
	}
	var secrets []*mvccpb.KeyValue
	for _, d := range digests {
		r, err := s.cli.Get(ctx, s.kSecret(d), clientv3.WithRev(got.Header.Revision))
		if err != nil {
			return nil, wrap(err)
		}
		secrets = append(secrets, r.Kvs...)
	}
	return store.DecodeGeneration(kv.Value, s.secretsOf(secrets))
}

// Current implements store.Store.
func (s *Store) Current(ctx context.Context, env string) (*spec.Generation, error) {
	for {
		if err := s.usable(ctx); err != nil {
			return nil, err
		}
		got, err := s.cli.Get(ctx, s.kCurrent(env))
		if err != nil {
			return nil, wrap(err)
		}
		n, err := number(first(got))
		if err != nil || n == 0 {
			return nil, err
		}
		g, err := s.generationAt(ctx, n, got.Header.Revision)
		if errors.Is(err, rpctypes.ErrCompacted) {
			continue // compacted between the two reads: read again
		}
		return g, err
	}
}

// Currents implements store.Store.
func (s *Store) Currents(ctx context.Context) (map[string]*spec.Generation, error) {
	snap, err := s.Read(ctx)
	if err != nil {
		return nil, err
	}
	return snap.Currents, nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, n uint64) (*spec.Generation, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	return s.generationAt(ctx, n, 0)
}

// List implements store.Store.
func (s *Store) List(ctx context.Context) ([]*spec.Generation, error) {
	got, _, err := s.get(ctx, clientv3.OpGet(s.kGens(), clientv3.WithPrefix()), clientv3.OpGet(s.kSecrets(), clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	return s.decodeAll(got[0], got[1])
}

// switchTo reads what a switch to generation to decides from: its
// environment, the current generation there, and the compares that keep
// both as read. It fails with ErrNotFound if to is not held, ErrConflict
// if from is not current.
func (s *Store) switchTo(ctx context.Context, from, to uint64) (env string, cmps []clientv3.Cmp, err error) {
	got, err := s.cli.Get(ctx, s.kGen(to))
	if err != nil {
		return "", nil, wrap(err)
	}
	kv := first(got)
	if kv == nil {
		return "", nil, fmt.Errorf("generation %d: %w", to, store.ErrNotFound)
	}
	if env, err = store.GenerationEnv(kv.Value); err != nil {
		return "", nil, err
	}
	cur, err := s.cli.Get(ctx, s.kCurrent(env))
	if err != nil {
		return "", nil, wrap(err)
	}
	n, err := number(first(cur))
	if err != nil {
		return "", nil, err
	}
	if n != from {
		return "", nil, fmt.Errorf("switch from generation %d, but %d is current in %s: %w", from, n, env, store.ErrConflict)
	}
	return env, []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(s.kGen(to)), "=", kv.CreateRevision),
		clientv3.Compare(clientv3.ModRevision(s.kCurrent(env)), "=", modRev(first(cur))),
	}, nil
}

// SetCurrent implements store.Store.
func (s *Store) SetCurrent(ctx context.Context, from, to uint64, also ...store.Write) error {
	if err := failpoint.Inject("store-before-set-current"); err != nil {
		return err
	}
	_, err := s.write(ctx, func(ctx context.Context) (*attempt, error) {
		env, cmps, err := s.switchTo(ctx, from, to)
		if err != nil {
			return nil, err
		}
		a := &attempt{cmps: cmps}
		if from != to {
			a.ops = append(a.ops, clientv3.OpPut(s.kCurrent(env), itoa(to)))
		}
		return a, nil
	}, also)
	if err == nil {
		err = failpoint.Inject("store-after-set-current")
	}
	return err
}

// SetConfirm implements store.Store.
func (s *Store) SetConfirm(ctx context.Context, n uint64, c *spec.Confirm, from, to uint64, also ...store.Write) error {
	if to == 0 && from != 0 {
		return fmt.Errorf("confirm of generation %d: a switch from generation %d names no generation to switch to", n, from)
	}
	if err := failpoint.Inject("store-before-set-confirm"); err != nil {
		return err
	}
	_, err := s.write(ctx, func(ctx context.Context) (*attempt, error) {
		a := &attempt{}
		var env string
		if to != 0 {
			var err error
			if env, a.cmps, err = s.switchTo(ctx, from, to); err != nil {
				return nil, err
			}
		}
		got, err := s.cli.Get(ctx, s.kGen(n))
		if err != nil {
			return nil, wrap(err)
		}
		kv := first(got)
		if kv == nil {
			return nil, fmt.Errorf("generation %d: %w", n, store.ErrNotFound)
		}
		data, err := store.WithConfirm(kv.Value, c)
		if err != nil {
			return nil, err
		}
		a.cmps = append(a.cmps, clientv3.Compare(clientv3.ModRevision(s.kGen(n)), "=", kv.ModRevision))
		a.ops = append(a.ops, clientv3.OpPut(s.kGen(n), string(data)))
		if to != 0 && to != from {
			a.ops = append(a.ops, clientv3.OpPut(s.kCurrent(env), itoa(to)))
		}
		return a, nil
	}, also)
	if err == nil {
		err = failpoint.Inject("store-after-set-confirm")
	}
	return err
}

// generations reads every generation's environment, by number, and the
// current generations, by environment, with their keys as read.
func (s *Store) generations(ctx context.Context) (envs map[uint64]string, cur map[string]*mvccpb.KeyValue, err error) {
	got, _, err := s.get(ctx, clientv3.OpGet(s.kCurrents(), clientv3.WithPrefix()), clientv3.OpGet(s.kGens(), clientv3.WithPrefix()))
	if err != nil {
		return nil, nil, err
	}
	cur = map[string]*mvccpb.KeyValue{}
	for _, kv := range got[0].Kvs {
		cur[strings.TrimPrefix(string(kv.Key), s.kCurrents())] = kv
	}
	envs = map[uint64]string{}
	for _, kv := range got[1].Kvs {
		n, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), s.kGens()), 10, 64)
		if err != nil {
			return nil, nil, fmt.Errorf("etcd key %s: not a generation's", kv.Key)
		}
		if envs[n], err = store.GenerationEnv(kv.Value); err != nil {
			return nil, nil, err
		}
	}
	return envs, cur, nil
}

// Delete implements store.Store: in batches of store.DeleteBatch
// generations, each one transaction that holds while none of its
// generations' environments moved its current generation; then the
// unreferenced ciphertexts.
func (s *Store) Delete(ctx context.Context, ns ...uint64) error {
	if err := s.usable(ctx); err != nil {
		return err
	}
	if err := failpoint.Inject("store-before-delete"); err != nil {
		return err
	}
	envs, cur, err := s.generations(ctx)
	if err != nil {
		return err
	}
	held := map[uint64]bool{}
	for _, n := range ns {
		if _, ok := envs[n]; ok {
			held[n] = true
		}
	}
	for env, kv := range cur {
		if n, err := number(kv); err != nil {
			return err
		} else if held[n] {
			return fmt.Errorf("generation %d (current in %s): %w", n, env, store.ErrCurrent)
		}
	}
	if len(held) == 0 {
		err = s.checkFence(ctx)
	} else if err = s.deleteGenerations(ctx, slices.Sorted(maps.Keys(held))); err == nil {
		err = s.collectSecrets(ctx)
	}
	if err == nil {
		err = failpoint.Inject("store-after-delete")
	}
	return err
}

// deleteGenerations deletes generations ns, none current when read, in
// batches.
func (s *Store) deleteGenerations(ctx context.Context, ns []uint64) error {
	for batch := range slices.Chunk(ns, store.DeleteBatch) {
		_, err := s.write(ctx, func(ctx context.Context) (*attempt, error) {
			envs, cur, err := s.generations(ctx)
			if err != nil {
				return nil, err
			}
			a := &attempt{}
			moved := map[string]bool{}
			for _, n := range batch {
				env, ok := envs[n]
				if !ok {
					continue // deleted meanwhile
				}
				kv := cur[env]
				if c, err := number(kv); err != nil {
					return nil, err
				} else if c == n {
					return nil, fmt.Errorf("generation %d (current in %s): %w", n, env, store.ErrCurrent)
				}
				if !moved[env] {
					moved[env] = true
					a.cmps = append(a.cmps, clientv3.Compare(clientv3.ModRevision(s.kCurrent(env)), "=", modRev(kv)))
				}
				a.ops = append(a.ops, clientv3.OpDelete(s.kGen(n)))
			}
			return a, nil
		}, nil)
		if err != nil {
			return err
		}
	}
	return nil
}

// collectSecrets deletes the ciphertexts no generation refers to, in
// batches that hold while no generation was committed (the one way a
// ciphertext gains a reference).
func (s *Store) collectSecrets(ctx context.Context) error {
	for {
		var more bool
		_, err := s.write(ctx, func(ctx context.Context) (*attempt, error) {
			got, _, err := s.get(ctx, clientv3.OpGet(s.kSeq()), clientv3.OpGet(s.kGens(), clientv3.WithPrefix()),
				clientv3.OpGet(s.kSecrets(), clientv3.WithPrefix(), clientv3.WithKeysOnly()))
			if err != nil {
				return nil, err
			}
			used := map[string]bool{}
			for _, kv := range got[1].Kvs {
				ds, err := store.GenerationDigests(kv.Value)
				if err != nil {
					return nil, err
				}
				for _, d := range ds {
					used[d] = true
				}
			}
			a := &attempt{cmps: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.kSeq()), "=", modRev(first(got[0])))}}
			more = false
			for _, kv := range got[2].Kvs {
				if used[strings.TrimPrefix(string(kv.Key), s.kSecrets())] {
					continue
				}
				if len(a.ops) == store.DeleteBatch {
					more = true
					break
				}
				a.ops = append(a.ops, clientv3.OpDelete(string(kv.Key)))
			}
			return a, nil
		}, nil)
		if err != nil || !more {
			return err
		}
	}
}

// DropEnv implements store.Store: the current generation and the first
// generations of env in one transaction, the rest as Delete deletes.
func (s *Store) DropEnv(ctx context.Context, env string, from uint64, also ...store.Write) error {
	if env == spec.DefaultEnv {
		return fmt.Errorf("environment %s: %w", env, store.ErrDefaultEnv)
	}
	if err := failpoint.Inject("store-before-drop-env"); err != nil {
		return err
	}
	var rest []uint64
	_, err := s.write(ctx, func(ctx context.Context) (*attempt, error) {
		envs, cur, err := s.generations(ctx)
		if err != nil {
			return nil, err
		}
		kv := cur[env]
		c, err := number(kv)
		if err != nil {
			return nil, err
		}
		if c != from {
			return nil, fmt.Errorf("drop environment %s from generation %d, but %d is current: %w", env, from, c, store.ErrConflict)
		}
		if from == 0 {
			return nil, fmt.Errorf("environment %s: %w", env, store.ErrNotFound)
		}
		var ns []uint64
		for n, e := range envs {
			if e == env {
				ns = append(ns, n)
			}
		}
		slices.Sort(ns)
		firstBatch := ns[:min(len(ns), store.DeleteBatch-1-len(also))]
		rest = ns[len(firstBatch):]
		a := &attempt{
			cmps: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.kCurrent(env)), "=", kv.ModRevision)},
			ops:  []clientv3.Op{clientv3.OpDelete(s.kCurrent(env))},
		}
		for _, n := range firstBatch {
			a.ops = append(a.ops, clientv3.OpDelete(s.kGen(n)))
		}
		return a, nil
	}, also)
	if err != nil {
		return err
	}
	if err := s.deleteGenerations(ctx, rest); err != nil {
		return fmt.Errorf("environment %s dropped, but not all its generations: %w", env, err)
	}
	err = s.collectSecrets(ctx)
	if err == nil {
		err = failpoint.Inject("store-after-drop-env")
	}
	return err
}

// Secret implements store.Store.
func (s *Store) Secret(ctx context.Context, digest string) ([]byte, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	got, err := s.cli.Get(ctx, s.kSecret(digest))
	if err != nil {
		return nil, wrap(err)
	}
	kv := first(got)
	if kv == nil {
		return nil, fmt.Errorf("secret %s: %w", digest, store.ErrNotFound)
	}
	return kv.Value, nil
}
