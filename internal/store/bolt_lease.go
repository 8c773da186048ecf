package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"hostel/internal/failpoint"
)

// leaseState is a live lease, as the backend keeps it.
type leaseState struct {
	ttl time.Duration
	// owner is the handle that renews the lease; nil once it is closed
	// (or for a lease found at open): the lease then ends at deadline.
	owner    *boltHandle
	deadline time.Time
	// lease is what Grant returned; nil for a lease found at open.
	lease *boltLease
}

// loadLeases gives the leases found at open a fresh TTL.
func (b *boltBackend) loadLeases(tx *bolt.Tx) error {
	now := b.now()
	return tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
		ttl := time.Duration(btoi(v))
		b.leases[LeaseID(btoi(k))] = &leaseState{ttl: ttl, deadline: now.Add(ttl)}
		return nil
	})
}

// boltLease is a Lease of a Bolt handle.
type boltLease struct {
	id   LeaseID
	ttl  time.Duration
	s    *Bolt
	done chan struct{}
	once sync.Once
}

func (l *boltLease) ID() LeaseID           { return l.id }
func (l *boltLease) TTL() time.Duration    { return l.ttl }
func (l *boltLease) Done() <-chan struct{} { return l.done }
func (l *boltLease) lost()                 { l.once.Do(func() { close(l.done) }) }

// Renewed implements Lease. A lease its handle holds lives in this
// process, with no renewal to miss: as if renewed now. One let go was
// last renewed then (a TTL before its deadline); one ended, never.
func (l *boltLease) Renewed() time.Time {
	b := l.s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.leases[l.id]
	switch {
	case st == nil:
		return time.Time{}
	case st.owner != nil:
		return b.now()
	default:
		return st.deadline.Add(-st.ttl)
	}
}

// Revoke implements Lease.
func (l *boltLease) Revoke(ctx context.Context) error {
	if err := l.s.usable(ctx); err != nil {
		return err
	}
	_, err := l.s.b.update(func(t *btx) error { return endLease(t, l.id) })
	if err != nil {
		return fmt.Errorf("revoke lease %x: %w", l.id, err)
	}
	return nil
}

// Revoke implements Store.
func (s *Bolt) Revoke(ctx context.Context, id LeaseID) error {
	if err := s.usable(ctx); err != nil {
		return err
	}
	if _, err := s.b.update(func(t *btx) error { return endLease(t, id) }); err != nil {
		return fmt.Errorf("revoke lease %x: %w", id, err)
	}
	return nil
}

// Grant implements Store. The lease lives while this handle is open:
// in one process there is no renewal to miss.
func (s *Bolt) Grant(ctx context.Context, ttl time.Duration) (Lease, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	ttl = time.Duration(LeaseSeconds(ttl)) * time.Second
	var id LeaseID
	_, err := s.b.update(func(t *btx) error {
		b := t.Bucket(bucketLeases)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		id = LeaseID(seq)
		return b.Put(itob(seq), itob(uint64(ttl)))
	})
	if err != nil {
		return nil, fmt.Errorf("grant a lease: %w", err)
	}
	l := &boltLease{id: id, ttl: ttl, s: s, done: make(chan struct{})}
	st := &leaseState{ttl: ttl, owner: s.h, lease: l}
	s.b.mu.Lock()
	s.b.leases[id] = st
	select {
	case <-s.h.closed: // closed meanwhile: release missed it
		st.owner, st.deadline = nil, s.b.now().Add(ttl)
		l.lost()
	default:
	}
	s.b.mu.Unlock()
	s.b.wakeReaper()
	if failpoint.Enabled {
		go s.b.renew(l)
	}
	return l, nil
}

// renew stands, in a binary built with failpoints, for the renewals an
// etcd client sends a lease (one at once, then every third of its TTL),
// so that the failpoint store-lease-keepalive can fail one as it fails
// etcd's: the lease is then abandoned, as a lease whose handle closed.
// bbolt's leases need no renewal: they live in this process.
func (b *boltBackend) renew(l *boltLease) {
	tick := time.NewTicker(l.ttl / 3)
	defer tick.Stop()
	for {
		if failpoint.Inject("store-lease-keepalive") != nil {
			b.mu.Lock()
			if st := b.leases[l.id]; st != nil && st.owner != nil {
				st.owner, st.deadline = nil, b.now().Add(st.ttl)
			}
			l.lost()
			b.mu.Unlock()
			b.wakeReaper()
			return
		}
		select {
		case <-tick.C:
		case <-l.done:
			return
		}
	}
}

// release stops the renewal of the leases h owns: each ends a TTL from
// now, unless revoked first.
func (b *boltBackend) release(h *boltHandle) {
	b.mu.Lock()
	now := b.now()
	for _, st := range b.leases {
		if st.owner == h {
			st.owner, st.deadline = nil, now.Add(st.ttl)
			st.lease.lost()
		}
	}
	b.mu.Unlock()
	b.wakeReaper()
}

func (b *boltBackend) wakeReaper() {
	select {
	case b.reapWake <- struct{}{}:
	default:
	}
}

// endLeases forgets leases a change ended and tells their owners.
func (b *boltBackend) endLeases(ids []LeaseID) {
	if len(ids) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, id := range ids {
		if st := b.leases[id]; st != nil {
			delete(b.leases, id)
			if st.lease != nil {
				st.lease.lost()
			}
		}
	}
}

// reap ends the leases nobody renews once their deadline passes, until
// the backend closes.
func (b *boltBackend) reap() {
	defer close(b.reaped)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := b.now()
		var (
			due  []LeaseID
			next = now.Add(time.Hour)
		)
		b.mu.Lock()
		for id, st := range b.leases {
			switch {
			case st.owner != nil:
			case !st.deadline.After(now):
				due = append(due, id)
			case st.deadline.Before(next):
				next = st.deadline
			}
		}
		b.mu.Unlock()
		if len(due) > 0 {
			_, err := b.update(func(t *btx) error {
				for _, id := range due {
					if err := endLease(t, id); err != nil && !errors.Is(err, ErrNotFound) {
						return err
					}
				}
				return nil
			})
			if err == nil {
				continue
			}
			next = now.Add(time.Second) // try again, a little later
		}
		timer.Reset(next.Sub(now))
		select {
		case <-timer.C:
		case <-b.reapWake: // timer.Reset above needs no drain (Go 1.23 timers)
		case <-b.stop:
			return
		}
	}
}

// endLease deletes lease id, the records bound to it and its
// candidacies, in t; ErrNotFound if there is no such lease.
func endLease(t *btx, id LeaseID) error {
	leases := t.Bucket(bucketLeases)
	k := itob(uint64(id))
	if leases.Get(k) == nil {
		return fmt.Errorf("lease %x: %w", id, ErrNotFound)
	}
	if err := leases.Delete(k); err != nil {
		return err
	}
	t.ended = append(t.ended, id)
	var bound [][]byte
	c := t.Bucket(bucketLeaseRecord).Cursor()
	for lk, _ := c.Seek(k); lk != nil && bytes.HasPrefix(lk, k); lk, _ = c.Next() {
		bound = append(bound, bytes.Clone(lk[len(k):]))
	}
	for _, rk := range bound {
		if err := deleteRecord(t, rk); err != nil {
			return err
		}
	}
	var candidacies [][]byte
	el := t.Bucket(bucketElections)
	err := el.ForEach(func(ek, _ []byte) error {
		if bytes.HasSuffix(ek, k) && len(ek) > len(k) && ek[len(ek)-len(k)-1] == 0 {
			candidacies = append(candidacies, bytes.Clone(ek))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, ek := range candidacies {
		if err := el.Delete(ek); err != nil {
			return err
		}
		t.touch()
	}
	return nil
}

// candidacyKey is a candidacy's key in bucketElections.
func candidacyKey(name string, id LeaseID) []byte {
	return append([]byte(name+"\x00"), itob(uint64(id))...)
}

// Campaign implements Store.
func (s *Bolt) Campaign(ctx context.Context, name string, l Lease) (Leadership, error) {
	if err := CheckName("election", name); err != nil {
		return nil, err
	}
	bl, ok := l.(*boltLease)
	if !ok || bl.s.b != s.b {
		return nil, fmt.Errorf("campaign %s: lease %x: not of this store: %w", name, l.ID(), ErrNotFound)
	}
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	key := candidacyKey(name, bl.id)
	var rev uint64
	_, err := s.b.update(func(t *btx) error {
		if t.Bucket(bucketLeases).Get(itob(uint64(bl.id))) == nil {
			return fmt.Errorf("lease %x: %w", bl.id, ErrNotFound)
		}
		el := t.Bucket(bucketElections)
		if v := el.Get(key); v != nil {
			rev = btoi(v)
			return nil
		}
		rev = t.rev
		t.touch()
		return el.Put(key, itob(rev))
	})
	if err != nil {
		return nil, fmt.Errorf("campaign %s: %w", name, err)
	}
	for {
		changed := s.b.changes()
		var mine, leads bool
		err := s.b.db.View(func(tx *bolt.Tx) error {
			mine = btoi(tx.Bucket(bucketElections).Get(key)) == rev
			leads = mine && lowestCandidacy(tx, name) == rev
			return nil
		})
		switch {
		case err != nil:
			return nil, fmt.Errorf("campaign %s: %w", name, err)
		case !mine:
			return nil, fmt.Errorf("campaign %s: lease %x ended before it led: %w", name, bl.id, ErrNotLeader)
		case leads:
			return newBoltLeadership(s, name, key, rev, bl), nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			s.b.withdraw(key, rev)
			return nil, ctx.Err()
		case <-s.h.closed:
			return nil, ErrClosed
		}
	}
}

// lowestCandidacy returns the lowest create revision among the
// candidacies of election name: its leader's.
func lowestCandidacy(tx *bolt.Tx, name string) uint64 {
	var low uint64
	prefix := []byte(name + "\x00")
	c := tx.Bucket(bucketElections).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if r := btoi(v); low == 0 || r < low {
			low = r
		}
	}
	return low
}

// withdraw deletes the candidacy under key if it is still the one of
// revision rev.
func (b *boltBackend) withdraw(key []byte, rev uint64) error {
	_, err := b.update(func(t *btx) error {
		el := t.Bucket(bucketElections)
		if btoi(el.Get(key)) != rev {
			return nil
		}
		t.touch()
		return el.Delete(key)
	})
	return err
}

// boltLeadership is a Leadership won on a Bolt handle.
type boltLeadership struct {
	s    *Bolt
	name string
	// key and rev are the candidacy that leads; key nil for a leadership
	// of another store, which never holds.
	key      []byte
	rev      uint64
	lease    *boltLease
	done     chan struct{}
	resigned chan struct{}
	once     sync.Once
}

func newBoltLeadership(s *Bolt, name string, key []byte, rev uint64, l *boltLease) *boltLeadership {
	ld := &boltLeadership{s: s, name: name, key: key, rev: rev, lease: l, done: make(chan struct{}), resigned: make(chan struct{})}
	go func() {
		select {
		case <-l.Done():
		case <-ld.resigned:
		case <-s.h.closed:
		}
		close(ld.done)
	}()
	return ld
}

func (ld *boltLeadership) Name() string          { return ld.name }
func (ld *boltLeadership) Lease() Lease          { return ld.lease }
func (ld *boltLeadership) Done() <-chan struct{} { return ld.done }

// Resign implements Leadership.
func (ld *boltLeadership) Resign(ctx context.Context) error {
	if err := ld.s.usable(ctx); err != nil {
		return err
	}
	err := ld.s.b.withdraw(ld.key, ld.rev)
	ld.once.Do(func() { close(ld.resigned) })
	if err != nil {
		return fmt.Errorf("resign %s: %w", ld.name, err)
	}
	return nil
}

// check returns ErrNotLeader unless the leadership still holds in tx.
func (ld *boltLeadership) check(tx *bolt.Tx) error {
	if ld.key == nil {
		return fmt.Errorf("write as leader of %s, a leadership of another store: %w", ld.name, ErrNotLeader)
	}
	if btoi(tx.Bucket(bucketElections).Get(ld.key)) != ld.rev {
		return fmt.Errorf("write as leader of %s: %w", ld.name, ErrNotLeader)
	}
	return nil
}

// Fenced implements Store.
func (s *Bolt) Fenced(l Leadership) Store {
	ld, ok := l.(*boltLeadership)
	if !ok || ld.s.b != s.b {
		ld = &boltLeadership{name: l.Name()}
	}
	return &Bolt{b: s.b, h: s.h, fence: ld}
}
