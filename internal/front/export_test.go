package front

import "time"

// Internals the front end's external tests (package front_test) look at.

// Handoffs is how many connections f handed to net/http.
func Handoffs(f *Front) int64 { return f.handoffs.Load() }

// LoopConns is how many connections f's event loops hold, -1 if it has none.
func LoopConns(f *Front) int { return f.loopConns() }

// GoroutineConns is how many connections f's goroutines serve.
func GoroutineConns(f *Front) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// SetRetryRefused sets how long after its address was set a backend's
// refused connections are tried again, and returns what restores it.
func SetRetryRefused(d time.Duration) (restore func()) {
	old := retryRefused
	retryRefused = d
	return func() { retryRefused = old }
}

// OpenConns is how many client connections f counts among its
// MaxConnections.
func OpenConns(f *Front) int { return int(f.open.Load()) }
