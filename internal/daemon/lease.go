package daemon

import (
	"context"
	"sync"
	"time"

	"hostel/internal/store"
)

// claimTTL is how long a claim of this daemon — a release step it runs, a
// certificate it orders — outlives it when it dies: another daemon that
// waits for the claim takes over that long after the last renewal.
const claimTTL = 10 * time.Second

// ownLease is the daemon's lease for its claims: records that say "this
// daemon does this now" and must end with it. It is granted on first use,
// kept alive by the store handle while the daemon lives, and granted anew
// if it is ever lost (the daemon stalled past its TTL, the store was out
// of reach): claims bound to the lost one are gone with it.
type ownLease struct {
	st  store.Store
	ttl time.Duration

	mu sync.Mutex
	l  store.Lease
}

func newOwnLease(st store.Store, ttl time.Duration) *ownLease {
	return &ownLease{st: st, ttl: ttl}
}

// get returns the live lease.
func (o *ownLease) get(ctx context.Context) (store.Lease, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.l != nil {
		select {
		case <-o.l.Done():
		default:
			return o.l, nil
		}
	}
	l, err := o.st.Grant(ctx, o.ttl)
	if err != nil {
		return nil, err
	}
	o.l = l
	return l, nil
}

// revoke ends the lease now, and with it the claims bound to it: at a
// clean stop, daemons that wait for them need not wait for the TTL.
func (o *ownLease) revoke(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.l == nil {
		return nil
	}
	err := o.l.Revoke(ctx)
	o.l = nil
	return err
}
