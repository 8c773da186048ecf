package acme

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"

	"hostel/internal/failpoint"
	"hostel/internal/keyring"
	"hostel/internal/store"
)

// storage is certmagic's Storage on hostel's store, shared by every daemon
// of the deployment: any serves a certificate another obtained, answers a
// challenge another started (its token is a record), and two never order
// the same certificate at once (Lock).
//
// A file is a record of kind cert under its certmagic key (value: file),
// or of kind cert-key for a private key (a key ending in ".key"), sealed.
// A directory is a record of kind cert under its key and a "/" (value:
// dirMark), written with every file under it: files and directories are
// told apart without reading the whole kind. Only List, and Delete of a
// directory, read every record of the two kinds: certmagic lists at its
// daily storage cleaning, and when it looks for an account.
type storage struct {
	st    store.Store
	keys  *keyring.Keyring
	lease func(context.Context) (store.Lease, error)
	// owner names this daemon in the locks it holds, for people.
	owner string
}

var (
	_ certmagic.Storage = (*storage)(nil)
	_ certmagic.Locker  = (*storage)(nil)
)

// maxValue bounds what one key holds: an etcd request is at most 1.5 MiB,
// and a certificate chain is a few KiB.
const maxValue = 512 << 10

// file is the value of a cert record.
type file struct {
	Modified time.Time `json:"modified"`
	Data     []byte    `json:"data"`
}

// dirMark is the value of a directory's record: when a file under it was
// last stored.
type dirMark struct {
	Modified time.Time `json:"modified"`
}

// kindOf is the kind of the record of file key.
func kindOf(key string) string {
	if strings.HasSuffix(key, ".key") {
		return store.KindCertKey
	}
	return store.KindCert
}

// dirKey is the key of directory dir's record.
func dirKey(dir string) string { return dir + "/" }

func checkKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") || strings.Contains(key, "//") {
		return fmt.Errorf("certificate storage: bad key %q", key)
	}
	return nil
}

// encode is the record write that stores value under key, with the
// records of its directories.
func (s *storage) encode(ctx context.Context, key string, value []byte, rev uint64) ([]store.Write, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	if len(value) > maxValue {
		return nil, fmt.Errorf("certificate storage: %s is %d bytes, more than %d", key, len(value), maxValue)
	}
	now := time.Now().UTC()
	var v []byte
	var err error
	if kindOf(key) == store.KindCertKey {
		v, err = s.keys.Seal(ctx, value)
	} else {
		v, err = json.Marshal(file{Modified: now, Data: value})
	}
	if err != nil {
		return nil, fmt.Errorf("certificate storage: %s: %w", key, err)
	}
	writes := []store.Write{{Kind: kindOf(key), Key: key, Value: v, Rev: rev}}
	mark, _ := json.Marshal(dirMark{Modified: now})
	for dir := path.Dir(key); dir != "."; dir = path.Dir(dir) {
		writes = append(writes, store.Write{Kind: store.KindCert, Key: dirKey(dir), Value: mark, Rev: store.AnyRevision})
	}
	return writes, nil
}

// Store implements certmagic.Storage.
func (s *storage) Store(ctx context.Context, key string, value []byte) error {
	writes, err := s.encode(ctx, key, value, store.AnyRevision)
	if err != nil {
		return err
	}
	if err := failpoint.Inject("acme-before-store"); err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	_, err = s.st.Txn(ctx, writes...)
	return err
}

// storeNew stores each value under its key, all at once, unless one of
// the keys holds a value already: then it stores nothing and returns
// store.ErrConflict.
func (s *storage) storeNew(ctx context.Context, values map[string][]byte) error {
	var writes []store.Write
	seen := map[string]bool{}
	for _, key := range slices.Sorted(maps.Keys(values)) {
		ws, err := s.encode(ctx, key, values[key], 0)
		if err != nil {
			return err
		}
		for _, w := range ws {
			if !seen[w.Kind+"\x00"+w.Key] {
				seen[w.Kind+"\x00"+w.Key] = true
				writes = append(writes, w)
			}
		}
	}
	_, err := s.st.Txn(ctx, writes...)
	return err
}

// Load implements certmagic.Storage.
func (s *storage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	if kindOf(key) == store.KindCertKey {
		// Sealed before this machine joined, it is waited for a while.
		b, err := s.keys.Load(ctx, store.KindCertKey, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
		} else if err != nil {
			return nil, fmt.Errorf("certificate storage: %s: %w", key, err)
		}
		return b, nil
	}
	r, err := s.st.Record(ctx, store.KindCert, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	} else if err != nil {
		return nil, err
	}
	var f file
	if err := json.Unmarshal(r.Value, &f); err != nil {
		return nil, fmt.Errorf("certificate storage: %s: %w", r.Key, err)
	}
	return f.Data, nil
}

// Delete implements certmagic.Storage: a file, or a directory and
// everything under it.
func (s *storage) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	writes := []store.Write{{Kind: kindOf(key), Key: key, Rev: store.AnyRevision, Delete: true}}
	if _, err := s.st.Record(ctx, store.KindCert, dirKey(key)); err == nil {
		under, err := s.under(ctx, key)
		if err != nil {
			return err
		}
		for _, r := range under {
			if r.Key != dirKey(key) {
				writes = append(writes, store.Write{Kind: r.Kind, Key: r.Key, Rev: store.AnyRevision, Delete: true})
			}
		}
		writes = append(writes, store.Write{Kind: store.KindCert, Key: dirKey(key), Rev: store.AnyRevision, Delete: true})
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	// etcd changes at most store.MaxTxnOps keys at once: a big directory
	// goes in batches, the directory's own record last.
	for len(writes) > 0 {
		n := min(len(writes), store.DeleteBatch)
		if _, err := s.st.Txn(ctx, writes[:n]...); err != nil {
			return err
		}
		writes = writes[n:]
	}
	return nil
}

// under returns the records of both kinds whose keys are under directory
// dir (files and directories), sorted by key.
func (s *storage) under(ctx context.Context, dir string) ([]store.Record, error) {
	var out []store.Record
	for _, kind := range []string{store.KindCert, store.KindCertKey} {
		recs, err := s.st.Records(ctx, kind)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if dir == "" || strings.HasPrefix(r.Key, dir+"/") {
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b store.Record) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// Exists implements certmagic.Storage.
func (s *storage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// Stat implements certmagic.Storage.
func (s *storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if err := checkKey(key); err != nil {
		return certmagic.KeyInfo{}, err
	}
	r, err := s.st.Record(ctx, kindOf(key), key)
	if err == nil {
		info := certmagic.KeyInfo{Key: key, IsTerminal: true}
		if r.Kind == store.KindCertKey {
			info.Modified = keyring.SealedAt(r.Value) // the plaintext's size is not kept
		} else {
			var f file
			json.Unmarshal(r.Value, &f)
			info.Modified, info.Size = f.Modified, int64(len(f.Data))
		}
		return info, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return certmagic.KeyInfo{}, err
	}
	d, err := s.st.Record(ctx, store.KindCert, dirKey(key))
	if errors.Is(err, store.ErrNotFound) {
		return certmagic.KeyInfo{}, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	} else if err != nil {
		return certmagic.KeyInfo{}, err
	}
	var m dirMark
	json.Unmarshal(d.Value, &m)
	return certmagic.KeyInfo{Key: key, Modified: m.Modified}, nil
}

// List implements certmagic.Storage: the keys of the files and
// directories under prefix, with recursive every one, else those right
// under it.
func (s *storage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	prefix = strings.TrimSuffix(prefix, "/")
	under, err := s.under(ctx, prefix)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range under {
		rel := strings.TrimSuffix(strings.TrimPrefix(r.Key, prefix+"/"), "/")
		if prefix == "" {
			rel = strings.TrimSuffix(r.Key, "/")
		}
		if rel == "" {
			continue // the prefix's own record
		}
		if !recursive {
			rel, _, _ = strings.Cut(rel, "/")
		}
		key := path.Join(prefix, rel)
		if !seen[key] {
			seen[key] = true
			out = append(out, key)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w", prefix, fs.ErrNotExist)
	}
	return out, nil
}

// lockValue is the value of a cert-lock record.
type lockValue struct {
	Owner string    `json:"owner"`
	Since time.Time `json:"since"`
}

// Lock implements certmagic.Locker: the lock is a record bound to the
// daemon's lease, written by compare-and-swap; a held one is waited for
// until it is removed — unlocked, or its daemon gone for the lease's TTL.
func (s *storage) Lock(ctx context.Context, name string) error {
	for {
		l, err := s.lease(ctx)
		if err != nil {
			return fmt.Errorf("lock %s: %w", name, err)
		}
		b, _ := json.Marshal(lockValue{Owner: s.owner, Since: time.Now().UTC()})
		_, err = s.st.Txn(ctx, store.Write{Kind: store.KindCertLock, Key: name, Value: b, Lease: l.ID()})
		if err == nil {
			return nil
		} else if !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("lock %s: %w", name, err)
		}
		held, err := s.st.Record(ctx, store.KindCertLock, name)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return fmt.Errorf("lock %s: %w", name, err)
		}
		if err := waitDeleted(ctx, s.st, store.KindCertLock, name, held.Revision); err != nil {
			return fmt.Errorf("lock %s: %w", name, err)
		}
	}
}

// Unlock implements certmagic.Locker. A lock whose lease ended is gone
// already.
func (s *storage) Unlock(ctx context.Context, name string) error {
	l, err := s.lease(ctx)
	if err != nil {
		return fmt.Errorf("unlock %s: %w", name, err)
	}
	r, err := s.st.Record(ctx, store.KindCertLock, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	} else if err != nil {
		return fmt.Errorf("unlock %s: %w", name, err)
	}
	if r.Lease != l.ID() {
		return nil // bound to a lease of this daemon's that ended: gone with it
	}
	err = s.st.DeleteRecord(ctx, store.KindCertLock, name, r.Revision)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("unlock %s: %w", name, err)
	}
	return nil
}

// waitDeleted waits until the record kind/key, seen at revision rev, is
// deleted, or ctx ends. A watch that falls behind the store's history
// returns too: the caller reads again.
func waitDeleted(ctx context.Context, st store.Store, kind, key string, rev uint64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := st.Watch(wctx, rev)
	if err != nil {
		return err
	}
	for ev := range events {
		if ev.Err != nil || ev.Kind == kind && ev.Key == key && ev.Type == store.EventRecordDeleted {
			return nil
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return store.ErrClosed
}

// migrate moves what an older daemon kept under dir (ROOT/certs/acme,
// certmagic's FileStorage) into the store and removes it. A key the store
// holds already keeps its value: another daemon's, or this one's moved
// before a crash. Lock files are left out.
func (s *storage) migrate(ctx context.Context, dir string, logf func(string, ...any)) error {
	fsys := os.DirFS(dir)
	n := 0
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == "." {
				return fs.SkipAll
			}
			return err
		}
		if d.IsDir() && p == "locks" {
			return fs.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		err = s.storeNew(ctx, map[string][]byte{p: b})
		clear(b)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("move %s into the store: %w", path.Join(dir, p), err)
		}
		n++
		return nil
	})
	if err != nil {
		return err
	}
	if n > 0 {
		logf("certificates: moved %d files of %s into the store", n, dir)
	}
	return os.RemoveAll(dir)
}
