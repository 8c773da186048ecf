package etcd

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"hostel/internal/failpoint"
	"hostel/internal/store"
)

// lease is a store.Lease: an etcd lease this handle keeps alive.
type lease struct {
	id     store.LeaseID
	ttl    time.Duration
	s      *Store
	done   chan struct{}
	cancel context.CancelFunc

	mu      sync.Mutex
	renewed time.Time // when the last renewal confirmed was asked
}

func (l *lease) ID() store.LeaseID     { return l.id }
func (l *lease) TTL() time.Duration    { return l.ttl }
func (l *lease) Done() <-chan struct{} { return l.done }

// Renewed implements store.Lease.
func (l *lease) Renewed() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewed
}

// Revoke implements store.Lease.
func (l *lease) Revoke(ctx context.Context) error {
	if err := l.s.usable(ctx); err != nil {
		return err
	}
	_, err := l.s.cli.Revoke(ctx, clientv3.LeaseID(l.id))
	l.cancel()
	if err != nil {
		return fmt.Errorf("revoke lease %x: %w", l.id, wrap(err))
	}
	return nil
}

// Revoke implements store.Store.
func (s *Store) Revoke(ctx context.Context, id store.LeaseID) error {
	if err := s.usable(ctx); err != nil {
		return err
	}
	if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(id)); err != nil {
		if rpctypes.Error(err) == rpctypes.ErrLeaseNotFound {
			return fmt.Errorf("revoke lease %x: %w", id, store.ErrNotFound)
		}
		return fmt.Errorf("revoke lease %x: %w", id, wrap(err))
	}
	return nil
}

// Grant implements store.Store: etcd's lease, renewed by this handle
// (renew) until Revoke or Close.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.Lease, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	secs := store.LeaseSeconds(ttl)
	asked := time.Now()
	resp, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant a lease: %w", wrap(err))
	}
	kctx, cancel := context.WithCancel(context.Background())
	// etcd grants at least its minimum TTL (1.5 election timeouts).
	l := &lease{id: store.LeaseID(resp.ID), ttl: time.Duration(resp.TTL) * time.Second, s: s, done: make(chan struct{}), cancel: cancel, renewed: asked}
	go l.renew(kctx)
	return l, nil
}

// Renewals of a lease: one every third of its TTL, as etcd's own
// keep-alive; one that fails is tried again every renewRetry, each
// given renewWait to answer, so that a member that does not answer (a
// frozen one keeps its connections open) costs a second, not the lease.
const (
	renewRetry = 250 * time.Millisecond
	renewWait  = time.Second
)

// renew keeps l alive until the store says it is gone (expired, revoked),
// no renewal went through for a whole TTL (then it is taken for lost, as
// etcd's own keep-alive takes it), ctx ends (Revoke) or the handle
// closes; then it closes l.done. It renews one request at a time rather
// than through etcd's keep-alive stream, to know when each renewal the
// store confirmed was asked — which the stream does not tell — and so
// until when the lease lives at least (Renewed).
func (l *lease) renew(ctx context.Context) {
	defer close(l.done)
	defer l.cancel()
	wait := l.ttl / 3
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.s.h.closed:
			return
		case <-time.After(wait):
		}
		if failpoint.Inject("store-lease-keepalive") != nil {
			return // no more renewals: lost here, expired a TTL later
		}
		asked := time.Now()
		if asked.Sub(l.Renewed()) >= l.ttl {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, renewWait)
		resp, err := l.s.cli.KeepAliveOnce(rctx, clientv3.LeaseID(l.id))
		cancel()
		switch {
		case err == nil && resp.TTL > 0:
			l.mu.Lock()
			l.renewed = asked
			l.mu.Unlock()
			wait = l.ttl / 3
		case err == nil || rpctypes.Error(err) == rpctypes.ErrLeaseNotFound:
			return
		default:
			wait = renewRetry
		}
	}
}

// campaignRetry is how long a candidate that could not read the
// candidacies waits before it reads them again.
const campaignRetry = 200 * time.Millisecond

// Campaign implements store.Store as etcd's concurrency package does:
// a candidacy key bound to the lease, created under the election's
// prefix; it leads when no candidacy was created before it.
func (s *Store) Campaign(ctx context.Context, name string, l store.Lease) (store.Leadership, error) {
	if err := store.CheckName("election", name); err != nil {
		return nil, err
	}
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	pfx := s.kElection(name)
	key := fmt.Sprintf("%s%x", pfx, int64(l.ID()))
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, "", clientv3.WithLease(clientv3.LeaseID(l.ID())))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return nil, fmt.Errorf("campaign %s: %w", name, wrap(err))
	}
	rev := resp.Header.Revision
	if !resp.Succeeded {
		rev = first(ranges(resp)[0]).CreateRevision
	}
	for {
		got, err := s.cli.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
		if err != nil {
			// A member lost while the candidate waits (a cluster's): the
			// client goes on with another; the candidacy stands, bound
			// to its lease. Only the candidate's end ends the wait.
			select {
			case <-ctx.Done():
			case <-time.After(campaignRetry):
				continue
			}
			return nil, s.gaveUp(ctx, name, key, rev, wrap(err))
		}
		mine := false
		for _, kv := range got.Kvs {
			mine = mine || string(kv.Key) == key && kv.CreateRevision == rev
		}
		if !mine {
			return nil, fmt.Errorf("campaign %s: lease %x ended before it led: %w", name, l.ID(), store.ErrNotLeader)
		}
		if got.Kvs[0].CreateRevision == rev {
			return s.newLeadership(name, key, rev, l, got.Header.Revision), nil
		}
		// Wait for any change among the candidacies, then look again.
		wctx, cancel := context.WithCancel(ctx)
		wch := s.cli.Watch(wctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(got.Header.Revision+1))
		select {
		case <-wch:
		case <-ctx.Done():
		}
		cancel()
		if ctx.Err() != nil {
			return nil, s.gaveUp(ctx, name, key, rev, ctx.Err())
		}
	}
}

// gaveUp withdraws a candidacy when its campaign's context ended, and
// returns err.
func (s *Store) gaveUp(ctx context.Context, name, key string, rev int64, err error) error {
	if ctx.Err() != nil {
		wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.withdraw(wctx, key, rev)
		return err
	}
	return fmt.Errorf("campaign %s: %w", name, err)
}

// withdraw deletes the candidacy key if it is still the one created at
// rev.
func (s *Store) withdraw(ctx context.Context, key string, rev int64) error {
	_, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).Then(clientv3.OpDelete(key)).Commit()
	return wrap(err)
}

// leadership is a store.Leadership: a candidacy that leads.
type leadership struct {
	s        *Store
	name     string
	key      string
	rev      int64
	lease    store.Lease
	done     chan struct{}
	resigned chan struct{}
	once     sync.Once
}

// newLeadership watches, from revision seen on, for the loss of the
// candidacy key.
func (s *Store) newLeadership(name, key string, rev int64, l store.Lease, seen int64) *leadership {
	ld := &leadership{s: s, name: name, key: key, rev: rev, lease: l, done: make(chan struct{}), resigned: make(chan struct{})}
	go func() {
		defer close(ld.done)
		wctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		wch := s.cli.Watch(wctx, key, clientv3.WithRev(seen+1))
		for {
			select {
			case <-l.Done():
				return
			case <-ld.resigned:
				return
			case <-s.h.closed:
				return
			case resp, ok := <-wch:
				if ok && resp.Err() == nil {
					for _, e := range resp.Events {
						if e.Type == clientv3.EventTypeDelete {
							return
						}
					}
					seen = max(seen, resp.Header.Revision)
					continue
				}
				// The watch broke (a member lost, history compacted):
				// the leadership stands while its candidacy does, as a
				// read says; its writes are fenced on it meanwhile.
				var still bool
				if still, seen = ld.stands(wctx, seen); !still {
					return
				}
				wch = s.cli.Watch(wctx, key, clientv3.WithRev(seen+1))
			}
		}
	}()
	return ld
}

// stands reads whether the candidacy still stands (its key created at
// ld.rev), retrying while the store does not answer and the lease lives;
// it returns the revision read at.
func (ld *leadership) stands(ctx context.Context, seen int64) (bool, int64) {
	for {
		got, err := ld.s.cli.Get(ctx, ld.key)
		if err == nil {
			kv := first(got)
			return kv != nil && kv.CreateRevision == ld.rev, got.Header.Revision
		}
		select {
		case <-ld.lease.Done():
			return false, seen
		case <-ld.resigned:
			return false, seen
		case <-ld.s.h.closed:
			return false, seen
		case <-time.After(campaignRetry):
		}
	}
}

func (ld *leadership) Name() string          { return ld.name }
func (ld *leadership) Lease() store.Lease    { return ld.lease }
func (ld *leadership) Done() <-chan struct{} { return ld.done }

// Resign implements store.Leadership.
func (ld *leadership) Resign(ctx context.Context) error {
	if err := ld.s.usable(ctx); err != nil {
		return err
	}
	err := ld.s.withdraw(ctx, ld.key, ld.rev)
	ld.once.Do(func() { close(ld.resigned) })
	if err != nil {
		return fmt.Errorf("resign %s: %w", ld.name, err)
	}
	return nil
}

// fence is what a fenced view's writes require: the candidacy key still
// created at rev.
type fence struct {
	name, key string
	rev       int64
}

// Fenced implements store.Store: every write of the view compares the
// candidacy's create revision in its own transaction.
func (s *Store) Fenced(l store.Leadership) store.Store {
	f := &fence{name: l.Name()}
	if ld, ok := l.(*leadership); ok && ld.s.p == s.p {
		f.key, f.rev = ld.key, ld.rev
	}
	return &Store{cli: s.cli, p: s.p, h: s.h, fence: f}
}
