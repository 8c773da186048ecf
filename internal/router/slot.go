package router

import (
	"time"

	"hostel/internal/spec"
)

// RequestHook is told of every request to a backend, on every forwarding
// path, through the one acquire/release below. Its methods run on the
// request's path and must be quick and safe for concurrent use.
type RequestHook interface {
	// Started: a request to key took its slot (it is in flight).
	Started(key spec.VersionKey)
	// Ended: the request gave its slot back after d, answered or not.
	Ended(key spec.VersionKey, d time.Duration)
}

// slot is one request's hold on a backend. Every forwarding path — the
// net/http handler, the goroutine front end, the event loops and the
// goroutines they hand requests to — takes one with acquire before it
// sends a request to an app and gives it back with release, which is
// idempotent: a path defers it, and one that hands its request on moves
// the slot with it (take). The in-flight count that drains wait for, the
// last-request time and the per-request hook are kept here and nowhere
// else, so no exit of any path can miss them.
type slot struct {
	b     *backend
	start int64 // UnixNano, when a hook wants the duration
}

// acquire counts a request in flight to b.
func (b *backend) acquire() slot {
	b.inflight.Add(1)
	s := slot{b: b}
	if b.hook != nil {
		s.start = time.Now().UnixNano()
		b.hook.Started(b.key)
	}
	return s
}

// release ends the request's hold, once; later calls do nothing.
func (s *slot) release() {
	b := s.b
	if b == nil {
		return
	}
	s.b = nil
	now := time.Now().UnixNano()
	b.last.Store(now)
	if b.hook != nil {
		b.hook.Ended(b.key, time.Duration(now-s.start))
	}
	if b.inflight.Add(-1) == 0 && b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.idle)
		b.idle = make(chan struct{})
		b.mu.Unlock()
	}
}

// take moves the hold out of s, for a path that hands its request on:
// s is left empty, so its own release does nothing.
func (s *slot) take() slot {
	t := *s
	s.b = nil
	return t
}

// held reports whether s holds a backend.
func (s *slot) held() bool { return s.b != nil }
