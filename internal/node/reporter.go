package node

import (
	"context"
	"errors"
	"sync"
	"time"

	"hostel/internal/store"
)

// Reporter writes one record a node reports under its lease — its Info,
// the revision its router follows — as the latest value asked. A write
// that fails is tried again (Run), with backoff, until it goes through, a
// newer value is asked, or the lease is gone (the node rejoins under
// another and reports anew). These records are written at a change, not
// at every tick, and the engine waits for them: one lost to a store that
// did not answer for a moment (an etcd member cut off, its clients' calls
// failing) would leave the node silent until its next change, and a
// failover waiting for it stalled for its whole bound.
type Reporter struct {
	st        store.Store
	kind, key string
	logf      func(format string, args ...any)

	// mu serializes the writes: a retry never lands after a newer report.
	mu      sync.Mutex
	value   []byte
	lease   store.LeaseID
	pending bool // the last value asked is not written
	failed  chan struct{}
}

// Backoff of a report's retries: the first after ReportRetry, doubling up
// to ReportRetryMax.
const (
	ReportRetry    = 250 * time.Millisecond
	ReportRetryMax = 2 * time.Second
)

// NewReporter returns a Reporter of record kind/key in st; logf (nil
// discards) is told the retries' failures. Run tries again what fails.
func NewReporter(st store.Store, kind, key string, logf func(format string, args ...any)) *Reporter {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Reporter{st: st, kind: kind, key: key, logf: logf, failed: make(chan struct{}, 1)}
}

// Report writes value under lease now and returns the write's error; one
// that failed is tried again by Run, unless the lease is gone
// (store.ErrNotFound).
func (r *Reporter) Report(ctx context.Context, value []byte, lease store.LeaseID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.value, r.lease = value, lease
	err := r.write(ctx)
	if r.pending {
		select {
		case r.failed <- struct{}{}:
		default:
		}
	}
	return err
}

// Pending reports whether the last value asked is not written yet.
func (r *Reporter) Pending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending
}

// write writes the last value asked; r.mu held.
func (r *Reporter) write(ctx context.Context) error {
	_, err := r.st.Txn(ctx, store.Write{Kind: r.kind, Key: r.key, Value: r.value, Rev: store.AnyRevision, Lease: r.lease})
	// A lease that is gone takes its records with it: the node rejoins
	// under a new one and reports anew then. A store closed is the end.
	r.pending = err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrClosed)
	return err
}

// Run tries again, until ctx ends, each report whose write failed: after
// ReportRetry, then twice as long each time, up to ReportRetryMax, until
// it goes through or a newer report replaces it.
func (r *Reporter) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.failed:
		}
		for wait, tries := ReportRetry, 1; ; wait, tries = min(2*wait, ReportRetryMax), tries+1 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			r.mu.Lock()
			if !r.pending {
				r.mu.Unlock()
				break // written since, or a newer one was
			}
			err := r.write(ctx)
			pending := r.pending
			r.mu.Unlock()
			if err == nil {
				r.logf("%s %s: reported after %d tries", r.kind, r.key, tries+1)
			} else if ctx.Err() == nil {
				r.logf("%s %s: reporting: %v (trying again in %s)", r.kind, r.key, err, min(2*wait, ReportRetryMax))
			}
			if !pending {
				break
			}
		}
	}
}
