package router

import (
	"time"

	"hostel/internal/front"
	"hostel/internal/spec"
)

// RequestHook is told of every request to a backend, on every forwarding
// path: the front end takes a slot from the backend's accounting below
// before it sends a request and gives it back once, whatever the path and
// however it ends (front.Accounting). Its methods run on the request's
// path and must be quick and safe for concurrent use.
type RequestHook interface {
	// Started: a request to key took its slot (it is in flight).
	Started(key spec.VersionKey)
	// Ended: the request gave its slot back after d, answered or not.
	Ended(key spec.VersionKey, d time.Duration)
}

var _ front.Accounting = (*backend)(nil)

// Acquire counts a request in flight to b, unless b's gate is closed (it
// sleeps, wakes or is paused: sleep.go); then it takes nothing and
// reports false, and the caller holds the request with Wait. The token is
// the start time when a hook wants the duration. The gate and the count
// are one word, so that a version put to sleep never gets a request
// counted after the sleep was decided.
func (b *backend) Acquire() (int64, bool) {
	for {
		v := b.inflight.Load()
		if v&gateClosed != 0 {
			return 0, false
		}
		if b.inflight.CompareAndSwap(v, v+1) {
			break
		}
	}
	if b.hook == nil {
		return 0, true
	}
	b.hook.Started(b.key)
	return time.Now().UnixNano(), true
}

// Release ends a request counted by Acquire: the in-flight count that
// WaitIdle waits on, the last-request time and the hook are kept here and
// nowhere else.
func (b *backend) Release(start int64) {
	now := time.Now().UnixNano()
	b.last.Store(now)
	if b.hook != nil {
		b.hook.Ended(b.key, time.Duration(now-start))
	}
	if b.inflight.Add(-1)&^gateClosed == 0 && b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.idle)
		b.idle = make(chan struct{})
		b.mu.Unlock()
	}
}
