package router

import (
	"fmt"
	"time"

	"hostel/internal/front"
	"hostel/internal/spec"
)

// RequestHook is told of every request to a backend, on every forwarding
// path: the front end takes a slot from the backend's accounting below
// before it sends a request and gives it back once, whatever the path and
// however it ends (front.Accounting).
type RequestHook interface {
	// Version returns what is told of key's requests, asked once as a
	// backend of key is made (so that what it counts into is resolved
	// then, not per request); nil: nothing.
	Version(key spec.VersionKey) VersionHook
	// Removed: key's backend was removed (RemoveBackend), its version is
	// no longer served here; requests still in flight to it end on what
	// Version returned. A backend made again for key asks Version again.
	Removed(key spec.VersionKey)
	// Answered: the router answered a request itself, as a, with no
	// version to forward it to. It runs on the request's path and must
	// be quick and safe for concurrent use.
	Answered(a Answer)
}

// Answer is how the router answered a request that no version's backend
// took. There are NumAnswers of them: what they count is bounded,
// whatever Host clients send.
type Answer int

// The router's own answers.
const (
	// AnswerRedirect: 301 from a spec's redirect host to its service's
	// first domain.
	AnswerRedirect Answer = iota
	// AnswerHTTPS: 301 from HTTP to HTTPS.
	AnswerHTTPS
	// AnswerUnknownHost: 404, no service for the host.
	AnswerUnknownHost
	// AnswerNotRunning: 503, the host's version runs nowhere.
	AnswerNotRunning
	// NumAnswers is the number of answers.
	NumAnswers
)

// String is the answer's name, as the metrics label it.
func (a Answer) String() string {
	switch a {
	case AnswerRedirect:
		return "redirect"
	case AnswerHTTPS:
		return "https_redirect"
	case AnswerUnknownHost:
		return "unknown_host"
	case AnswerNotRunning:
		return "not_running"
	}
	return fmt.Sprintf("Answer(%d)", int(a))
}

// VersionHook is told of one version's requests. Its methods run on the
// request's path and must be quick and safe for concurrent use.
type VersionHook interface {
	// Started: a request took its slot (it is in flight).
	Started()
	// Ended: the request gave its slot back after d, answered or not; o
	// is how it went, valid during the call only.
	Ended(d time.Duration, o *front.Outcome)
	// Refused: a request held on the version (asleep, waking, paused)
	// was answered after d without reaching it (front.Accounting); it
	// was never Started.
	Refused(d time.Duration, o *front.Outcome)
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
	b.hook.Started()
	return time.Now().UnixNano(), true
}

// Release ends a request counted by Acquire: the in-flight count that
// WaitIdle waits on, the last-request time and the hook are kept here and
// nowhere else.
func (b *backend) Release(start int64, o *front.Outcome) {
	now := time.Now().UnixNano()
	b.last.Store(now)
	if b.hook != nil {
		b.hook.Ended(time.Duration(now-start), o)
	}
	if b.inflight.Add(-1)&^gateClosed == 0 && b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.idle)
		b.idle = make(chan struct{})
		b.mu.Unlock()
	}
}

// Refused tells the hook of a held request answered without reaching b
// (front.Accounting).
func (b *backend) Refused(d time.Duration, o *front.Outcome) {
	if b.hook != nil {
		b.hook.Refused(d, o)
	}
}
