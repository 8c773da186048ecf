package router

import (
	"context"
	"errors"
	"fmt"
	"time"

	"hostel/internal/front"
	"hostel/internal/spec"
)

// This file is the router's side of scale to zero: a backend whose
// version sleeps (its process stopped), wakes or is paused has its gate
// closed. A request that finds the gate closed takes no slot; the front
// end holds it with Wait, which starts one wake however many requests
// wait, and releases them all the moment the version is ready.

// gateClosed is the bit of backend.inflight that closes the gate. It is
// far above any count of requests, and it is set and cleared only with
// b.mu held, while the count below it moves freely.
const gateClosed = int64(1) << 40

// maxWake bounds a wake whatever the Waker does: its own bound is the
// version's health timeout.
const maxWake = 10 * time.Minute

// Waker starts sleeping versions again.
type Waker interface {
	// Wake starts key's version and returns once it is ready, with the
	// address it serves at ("127.0.0.1:PORT"). The router calls it once
	// per wake, however many requests wait for it. On an error nothing of
	// the version may be left running.
	Wake(ctx context.Context, key spec.VersionKey) (addr string, err error)
}

// Errors a held request may end with; the front end answers each 503.
var (
	// ErrWakeFailed: the version did not start or did not become ready.
	ErrWakeFailed = errors.New("wake failed")
	// ErrHeldTooLong: the service was paused past the pause's bound.
	ErrHeldTooLong = errors.New("held past the pause's bound")
	// ErrRemoved: the version was removed while the request was held;
	// the front end routes it again (front.ErrRemoved).
	ErrRemoved = front.ErrRemoved
	// ErrUnknown: no backend is registered under the key.
	ErrUnknown = errors.New("no such version")
)

// sleepState is a backend's scale-to-zero state, guarded by backend.mu.
// The gate is closed exactly while asleep, paused or handed over.
type sleepState struct {
	asleep   bool      // the process is stopped, stopping or starting again
	pause    hold      // by hand (hostel pause; the table's Paused)
	handover hold      // by an exclusive service's handover (Hold)
	call     *wakeCall // the wake in progress; nil when none
	wakes    int
	lastWake time.Duration
	wakeErr  error // why the last wake failed; nil after one succeeded
	retired  bool
}

// hold holds a backend's requests until it is lifted.
type hold struct {
	on       bool
	max      time.Duration // how long a request is held
	released chan struct{} // closed when the hold is lifted; set while on
}

// set puts the hold on, or changes its bound.
func (h *hold) set(max time.Duration) {
	if !h.on {
		h.on, h.released = true, make(chan struct{})
	}
	h.max = max
}

// lift takes the hold off, releasing what it held.
func (h *hold) lift() {
	if h.on {
		h.on = false
		close(h.released)
	}
}

// wakeCall is one wake that any number of requests wait for.
type wakeCall struct {
	done chan struct{}
	err  error // set before done is closed
}

// setGateLocked opens or closes the gate to match the state. b.mu must be
// held.
func (b *backend) setGateLocked() {
	closed := b.inflight.Load()&gateClosed != 0
	switch want := b.sleep.asleep || b.sleep.pause.on || b.sleep.handover.on || b.sleep.retired; {
	case want && !closed:
		b.inflight.Add(gateClosed)
	case !want && closed:
		b.inflight.Add(-gateClosed)
	}
}

// Open reports whether requests may take a slot now (front.Accounting).
func (b *backend) Open() bool { return b.inflight.Load()&gateClosed == 0 }

// Wait holds a request that found the gate closed (front.Accounting): it
// returns nil once the gate may be open again — the caller then tries to
// take its slot again — or the error to answer 503 with. A sleeping
// backend is woken: one wake for every request that waits.
func (b *backend) Wait(ctx context.Context) error {
	b.mu.Lock()
	s := &b.sleep
	switch {
	case s.retired:
		b.mu.Unlock()
		return fmt.Errorf("%s: %w", b.key, ErrRemoved)
	case s.pause.on:
		ch, bound := s.pause.released, s.pause.max
		b.mu.Unlock()
		return b.awaitResume(ctx, ch, bound)
	case s.handover.on:
		ch, bound := s.handover.released, s.handover.max
		b.mu.Unlock()
		return b.awaitResume(ctx, ch, bound)
	case !s.asleep:
		b.mu.Unlock()
		return nil
	}
	c := b.wakeLocked()
	b.mu.Unlock()
	return c.wait(ctx)
}

// awaitResume waits for resumed, a hold's channel, to close: nil then;
// ErrHeldTooLong after bound.
func (b *backend) awaitResume(ctx context.Context, resumed <-chan struct{}, bound time.Duration) error {
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-resumed:
		return nil
	case <-t.C:
		return fmt.Errorf("%s: %w (%s)", b.key, ErrHeldTooLong, bound)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wait waits for the wake's end and returns its error.
func (c *wakeCall) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wakeLocked returns the wake in progress, starting one if there is none.
// b.mu must be held and b asleep.
func (b *backend) wakeLocked() *wakeCall {
	if c := b.sleep.call; c != nil {
		return c
	}
	c := &wakeCall{done: make(chan struct{})}
	b.sleep.call = c
	go b.wake(c)
	return c
}

func (b *backend) wake(c *wakeCall) {
	t0 := time.Now()
	var addr string
	err := errors.New("no waker configured")
	if b.waker != nil {
		ctx, cancel := context.WithTimeout(context.Background(), maxWake)
		addr, err = b.waker.Wake(ctx, b.key)
		cancel()
	}
	b.mu.Lock()
	s := &b.sleep
	s.call = nil
	if err != nil {
		s.wakeErr = fmt.Errorf("wake failed: %w", err)
		c.err = fmt.Errorf("%s: %w: %w", b.key, ErrWakeFailed, err)
	} else {
		b.fb.SetAddr(addr)
		s.asleep, s.wakeErr = false, nil
		s.wakes++
		s.lastWake = time.Since(t0)
		b.last.Store(time.Now().UnixNano())
		b.setGateLocked()
	}
	b.mu.Unlock()
	close(c.done)
}

// started marks b awake: a process was started for it by other means
// than a wake (a deploy that touched a sleeping version).
func (b *backend) started() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sleep.asleep && b.sleep.call == nil {
		b.sleep.asleep, b.sleep.wakeErr = false, nil
		b.last.Store(time.Now().UnixNano())
		b.setGateLocked()
	}
}

// retire closes the gate of a backend being removed for good and ends
// its holds: what waits, or comes, is routed again (ErrRemoved).
func (b *backend) retire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sleep.retired = true
	b.retired.Store(true)
	b.sleep.pause.lift()
	b.sleep.handover.lift()
	b.setGateLocked()
}

// Retire closes key's gate for good, before its version stops: a request
// that comes from now on is routed again by its host — to the version
// that replaced it, here — or answered 503, while those in flight finish,
// which WaitIdle waits for. Without it a request could be counted after
// WaitIdle saw none and meet a process that stops: one another node
// decided before its table switched, arriving late (remote.go). Then
// RemoveBackend.
func (r *Router) Retire(key spec.VersionKey) {
	if b := (*r.backends.Load())[key]; b != nil {
		b.retire()
	}
}

// Sleep closes key's gate if nothing is in flight to it, nothing holds it
// and no request came for idle: the caller then stops its process, and
// the next request wakes it through the Waker. It reports whether it did.
// Streams, uploads and WebSockets hold their slot while open, so a
// version with any of them is never put to sleep.
func (r *Router) Sleep(key spec.VersionKey, idle time.Duration) bool {
	b := (*r.backends.Load())[key]
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &b.sleep
	if s.asleep || s.pause.on || s.handover.on || s.retired || time.Since(time.Unix(0, b.last.Load())) < idle {
		return false
	}
	if !b.inflight.CompareAndSwap(0, gateClosed) {
		return false // a request is in flight
	}
	s.asleep = true
	return true
}

// Wake wakes key if it sleeps, without a request (a version wakes the
// versions it needs before it starts), and waits until it is awake: the
// same single wake as its held requests wait for. It returns nil at once
// for a version that is not asleep (running, paused or not routed), and
// the wake's error if it fails. A version asleep and paused is woken only
// once resumed: held until then, up to the pause's bound, as a request is.
func (r *Router) Wake(ctx context.Context, key spec.VersionKey) error {
	b := (*r.backends.Load())[key]
	if b == nil {
		return nil
	}
	b.mu.Lock()
	switch {
	case b.sleep.retired && b.sleep.asleep:
		b.mu.Unlock()
		return fmt.Errorf("%s: %w", key, ErrRemoved)
	case !b.sleep.asleep:
		b.mu.Unlock()
		return nil
	case (b.sleep.pause.on || b.sleep.handover.on) && b.sleep.call == nil:
		// Held, by hand or by an exclusive service's handover (which
		// must not see the version it stopped started again): a wake
		// waits for the resume as a request does.
		h := &b.sleep.handover
		if b.sleep.pause.on {
			h = &b.sleep.pause
		}
		ch, bound := h.released, h.max
		b.mu.Unlock()
		if err := b.awaitResume(ctx, ch, bound); err != nil {
			return err
		}
		return r.Wake(ctx, key)
	}
	c := b.wakeLocked()
	b.mu.Unlock()
	return c.wait(ctx)
}

// AwaitWake waits for the end of key's wake under way, if there is one;
// it starts none.
func (r *Router) AwaitWake(ctx context.Context, key spec.VersionKey) {
	b := (*r.backends.Load())[key]
	if b == nil {
		return
	}
	b.mu.Lock()
	c := b.sleep.call
	b.mu.Unlock()
	if c != nil {
		c.wait(ctx)
	}
}

// Hold holds every new request to key until Unhold — an exclusive
// service's handover, apart from a pause by hand (Table.Paused), which it
// neither lifts nor is lifted by; a request held longer than bound gets
// 503. Requests in flight go on.
func (r *Router) Hold(key spec.VersionKey, bound time.Duration) error {
	b := (*r.backends.Load())[key]
	if b == nil {
		return fmt.Errorf("hold %s: %w", key, ErrUnknown)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sleep.handover.set(bound)
	b.setGateLocked()
	return nil
}

// Unhold releases what Hold held. A sleeping version is woken by the
// first request it releases.
func (r *Router) Unhold(key spec.VersionKey) error {
	b := (*r.backends.Load())[key]
	if b == nil {
		return fmt.Errorf("unhold %s: %w", key, ErrUnknown)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sleep.handover.lift()
	b.setGateLocked()
	return nil
}

// setPause puts b's pause by hand on (bound > 0: how long a request is
// held) or off, as the table says. b.mu must not be held.
func (b *backend) setPause(bound time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sleep.retired {
		return
	}
	if bound > 0 {
		b.sleep.pause.set(bound)
	} else {
		b.sleep.pause.lift()
	}
	b.setGateLocked()
}

// SleepStatus is a backend's scale-to-zero state, for status.
type SleepStatus struct {
	// Asleep: the process is stopped; the next request starts it.
	Asleep bool
	// Waking: a wake is in progress. Paused: held by hand (hostel
	// pause). Held: held by an exclusive service's handover.
	Waking, Paused, Held bool
	// Wakes counts the wakes that succeeded; LastWake is how long the
	// last one took, from the first held request to ready.
	Wakes    int
	LastWake time.Duration
	// WakeError is why the last wake failed; nil after a success.
	WakeError error
	// LastRequest is when the last request ended (or the version was
	// started or woken, if none came since).
	LastRequest time.Time
}

// Sleeping returns key's scale-to-zero state; false if key is unknown.
func (r *Router) Sleeping(key spec.VersionKey) (SleepStatus, bool) {
	b := (*r.backends.Load())[key]
	if b == nil {
		return SleepStatus{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.sleep
	return SleepStatus{Asleep: s.asleep, Waking: s.call != nil, Paused: s.pause.on, Held: s.handover.on, Wakes: s.wakes,
		LastWake: s.lastWake, WakeError: s.wakeErr, LastRequest: time.Unix(0, b.last.Load())}, true
}

// SetFailed records why key, registered asleep, is not running — it could
// not start (a daemon's resume found it unable to): status says it failed,
// and, as after a failed wake, its next request tries to start it again.
// It does nothing to a version that is awake or not routed.
func (r *Router) SetFailed(key spec.VersionKey, err error) {
	b := (*r.backends.Load())[key]
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sleep.asleep && b.sleep.call == nil {
		b.sleep.wakeErr = err
	}
}
