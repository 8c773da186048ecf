package supervisor

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Readiness and health.
//
// Each process has one checker, a goroutine that lives as long as the
// process is tracked (watch). It probes until the process is ready, then,
// when the version has a health path, checks it every HealthInterval; a
// process that stops serving is handed to the run loop (sicken), which
// stops it and restarts it with the crash policy's backoff and counts. The
// checker waits on timers and the netpoller: a supervised service costs a
// parked goroutine between checks, not a thread.
//
// With a health path, only a check that answers 2xx makes a process ready:
// many apps send READY=1 before their port accepts (an HTTP server started
// in a goroutine), so READY=1 only hurries the next probe. Without one,
// READY=1 makes it ready, and so does a TCP connect that succeeds.

const (
	probeFirst    = time.Millisecond // the first pause between probes, and the step of the early ones
	probeEarly    = 10               // probes probeFirst apart, before the pause grows
	probeInterval = 50 * time.Millisecond
	probeTimeout  = time.Second
	// healthTimeout bounds one check of a ready process: a process that
	// takes longer to answer fails it, and the checker goes on.
	healthTimeout = 2 * time.Second
)

// Healthy runs one health probe now: GET HealthPath expecting 2xx, or a TCP
// connect without one, within 2s. It changes nothing: the process's own
// checker decides its readiness and health.
func (i *Instance) Healthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	if err := i.check(ctx); err != nil {
		return fmt.Errorf("%s: unhealthy: %w", i.key, err)
	}
	return nil
}

// check is one probe: HTTP when there is a health path, else TCP.
func (i *Instance) check(ctx context.Context) error {
	if i.cfg.HealthPath == "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", i.addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+i.addr+i.cfg.HealthPath, nil)
	if err != nil {
		return err
	}
	resp, err := i.s.probe.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s", i.cfg.HealthPath, resp.Status)
	}
	return nil
}

// watch is p's checker: readiness first, then health. It ends when ctx
// does (the process is reaped or let go), or once it handed p to the run
// loop as sick. A process not ready within readyWithin (0: no limit) is
// sick.
func (i *Instance) watch(ctx context.Context, p *proc, readyWithin time.Duration) {
	defer close(p.probeDone)
	if !i.awaitReady(ctx, p, readyWithin) || i.cfg.HealthPath == "" {
		return
	}
	i.watchHealth(ctx, p)
}

// awaitReady probes p until it is ready, reporting whether it is.
func (i *Instance) awaitReady(ctx context.Context, p *proc, within time.Duration) bool {
	var late <-chan time.Time
	if within > 0 {
		t := time.NewTimer(within)
		defer t.Stop()
		late = t.C
	}
	var err error
	for n := 0; ; n++ {
		if i.isReady(p.inc) {
			return i.isReadyNow()
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err = i.check(pctx)
		cancel()
		if ctx.Err() != nil {
			return false
		}
		i.recordCheck(p.inc, err)
		if err == nil {
			how := "TCP connect"
			if i.cfg.HealthPath != "" {
				how = "health check"
			}
			i.markReady(p.inc, how)
			return true
		}
		t := time.NewTimer(probePause(n))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-i.kick:
			t.Stop()
			n = -1 // it said READY=1: probe at the early pace again
		case <-late:
			t.Stop()
			if i.isReadyNow() { // READY=1, meanwhile
				return true
			}
			why := fmt.Sprintf("not ready within %v of its restart: %v", within, err)
			if w := wrongListen(p.pid, i.cfg.Port); w != "" {
				why += ": " + w
			}
			i.sicken(p, why)
			return false
		case <-t.C:
		}
	}
}

// watchHealth checks ready process p every HealthInterval until
// HealthFailures checks in a row fail, and then hands it to the run loop.
func (i *Instance) watchHealth(ctx context.Context, p *proc) {
	t := time.NewTimer(i.cfg.HealthInterval)
	defer t.Stop()
	failed := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, healthTimeout)
		err := i.check(cctx)
		cancel()
		if ctx.Err() != nil {
			return // stopped mid-check: not the process's failure
		}
		i.recordCheck(p.inc, err)
		if err == nil {
			failed = 0
		} else if failed++; failed >= i.cfg.HealthFailures {
			i.sicken(p, fmt.Sprintf("failed %d health checks in a row, the last: %v", failed, err))
			return
		}
		// The interval runs from the end of a check: a slow answer never
		// piles checks up.
		t.Reset(i.cfg.HealthInterval)
	}
}

// probePause is the pause after the n-th (from 0) readiness probe that
// failed. Most services listen within a few milliseconds of their exec,
// and everything a wake holds waits for the probe that sees it: the first
// probes are a millisecond apart (a refused connection on loopback costs
// microseconds), then the pause grows by half each time, up to
// probeInterval, so a slow starter is not probed more than needed.
func probePause(n int) time.Duration {
	if n < probeEarly {
		return probeFirst
	}
	d := probeFirst
	for range n - probeEarly + 1 {
		d += d / 2
		if d >= probeInterval {
			return probeInterval
		}
	}
	return d
}

// recordCheck keeps the result of a check of launch inc's health path,
// for Status.
func (i *Instance) recordCheck(inc int, err error) {
	if i.cfg.HealthPath == "" {
		return
	}
	c := &Check{OK: err == nil, At: time.Now()}
	if err != nil {
		c.Error = err.Error()
	}
	i.mu.Lock()
	if inc == i.inc {
		i.health = c
	}
	i.mu.Unlock()
}

// notified takes a READY=1 from the notify socket: the process is ready
// when it has no health path; with one, its readiness is the check's, and
// READY=1 only has the next probe come at once.
func (i *Instance) notified() {
	if i.cfg.HealthPath != "" {
		select {
		case i.kick <- struct{}{}:
		default:
		}
		return
	}
	i.mu.Lock()
	inc := i.inc
	i.mu.Unlock()
	i.markReady(inc, "READY=1")
}

// sicken marks p as not serving — unhealthy and no longer ready, its
// readiness reports ignored — and hands it to the run loop, which stops and
// restarts it. Only p's checker calls it, once.
func (i *Instance) sicken(p *proc, why string) {
	i.mu.Lock()
	p.sickReady = i.ready
	if p.inc == i.inc && i.accepting {
		i.accepting, i.ready, i.state = false, false, StateUnhealthy
		i.broadcastLocked()
	}
	i.mu.Unlock()
	i.s.opts.Logf("supervisor: %s: pid %d %s", i.key, p.pid, why)
	p.sickWhy = why
	close(p.sick)
}

func (i *Instance) isReady(inc int) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.ready || inc != i.inc || !i.accepting
}

func (i *Instance) markReady(inc int, how string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if inc != i.inc || !i.accepting || i.ready {
		return
	}
	i.ready, i.wasReady, i.state = true, true, StateRunning
	i.broadcastLocked()
	i.s.opts.Logf("supervisor: %s: ready (%s)", i.key, how)
}
