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

// Acquire counts a request in flight to b. The token is the start time
// when a hook wants the duration.
func (b *backend) Acquire() int64 {
	b.inflight.Add(1)
	if b.hook == nil {
		return 0
	}
	b.hook.Started(b.key)
	return time.Now().UnixNano()
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
	if b.inflight.Add(-1) == 0 && b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.idle)
		b.idle = make(chan struct{})
		b.mu.Unlock()
	}
}
