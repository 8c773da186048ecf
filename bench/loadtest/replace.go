package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"syscall"
	"time"
)

// replaceDaemon is -upgrades and -kills: the usual load while the daemon
// is replaced again and again, the services staying up.
func replaceDaemon(c config) error {
	var h target
	if c.haproxy {
		if c.kills > 0 {
			return fmt.Errorf("-haproxy: with -upgrades only (its reload)")
		}
		hp, err := startHAProxy(c)
		if err != nil {
			return err
		}
		h = hp
	} else {
		hs, err := startHostel(c)
		if err != nil {
			return err
		}
		h = hs
		// The next daemons listen where the first one does.
		hs.serve[slices.Index(hs.serve, "--http")+1] = hs.addr
		if err := hs.deploy(0); err != nil {
			hs.stop()
			return fmt.Errorf("first deploy: %w", err)
		}
	}
	defer h.stop()
	l := newLoad(h.address(), c.rate)
	ctx, stopLoad := context.WithCancel(context.Background())
	loadDone := make(chan struct{})
	go func() { l.run(ctx); close(loadDone) }()

	time.Sleep(c.warmup)
	what, n := "upgrades", c.upgrades
	if c.kills > 0 {
		what, n = "kills", c.kills
	}
	var failures int
	var took []time.Duration
	t0 := time.Now()
	for i := 1; i <= n; i++ {
		start := time.Now()
		l.deploying.Store(true)
		var err error
		if c.kills > 0 {
			err = h.kill()
		} else {
			err = h.upgrade()
		}
		took = append(took, time.Since(start))
		// The requests the old daemon still serves, and the first ones of
		// the new, count as during.
		time.Sleep(100 * time.Millisecond)
		l.deploying.Store(false)
		if err != nil {
			failures++
			fmt.Fprintf(os.Stderr, "%s %d: %v\n", what, i, err)
		}
		time.Sleep(c.pause)
	}
	elapsed := time.Since(t0)
	stopLoad()
	<-loadDone
	l.wait()

	s := l.summary()
	steady := l.steadyP99()
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	if c.haproxy {
		fmt.Println("proxy:            HAProxy", haproxyVersion(), "(master-worker, expose-fd listeners), reloaded by SIGUSR2")
	}
	fmt.Printf("%-17s %d (%d failed) in %s; each until the new daemon answered: median %s, max %s\n", what+":", n, failures,
		elapsed.Round(time.Millisecond), took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
	fmt.Printf("requests:         %d sent at %d/s open loop (%d fast, %d slow 200ms, %d slow 5s, %d streams, %d uploads)\n",
		s.total, c.rate, s.kinds["fast"], s.kinds["slow"], s.kinds["slower"], s.kinds["stream"], s.kinds["upload"])
	fmt.Printf("non-2xx:          %d\n", s.non2xx)
	refused, cut := l.refused()
	fmt.Printf("transport errors: %d (%d connections refused, %d requests cut in flight)\n", s.errors, refused, cut)
	ratio := 0.0
	if steady > 0 {
		ratio = float64(s.p99Deploy) / float64(steady)
	}
	fmt.Printf("latency of fast requests during %s: p50 %s, p99 %s; steady state p99 %s (%.2f×)\n", what, s.p50Deploy, s.p99Deploy, steady, ratio)
	fmt.Printf("fast requests over 1 s: %d\n", s.slowFast)
	for _, e := range s.examples {
		fmt.Println("  e.g.", e)
	}
	failed := s.errors
	if c.kills > 0 {
		// A request the killed daemon had accepted dies with it, whatever
		// holds the listeners: counted, printed, not the bar of -kills.
		failed -= cut
		fmt.Printf("cut in flight:    %d (their connections were the killed daemon's own)\n", cut)
	}
	if s.non2xx+failed+failures > 0 {
		return fmt.Errorf("FAIL: %d non-2xx, %d transport errors (%d refused), %d failed %s", s.non2xx, failed, refused, failures, what)
	}
	fmt.Println("loadtest: PASS")
	return nil
}

// target is what -upgrades and -kills replace: hostel serve, or HAProxy.
type target interface {
	address() string
	upgrade() error
	kill() error
	stop()
}

func (h *hostel) address() string { return h.addr }

func (h *hostel) upgrade() error {
	if out, err := h.hostel("upgrade"); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// kill SIGKILLs the daemon and starts hostel serve again at once, then
// waits until it answers.
func (h *hostel) kill() error {
	h.cmd.Process.Signal(syscall.SIGKILL)
	h.cmd.Wait()
	if h.held != nil {
		// What systemd does after RestartSec: start it again on the
		// sockets it holds.
		time.Sleep(h.c.restartAfter)
	}
	if err := h.start(); err != nil {
		return err
	}
	for range 400 {
		if _, err := h.hostel("status"); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("hostel serve did not answer within 4 s of its start")
}

// steadyP99 is the fast requests' p99 away from any replacement.
func (l *load) steadyP99() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var d []time.Duration
	for _, r := range l.results {
		if r.kind == "fast" && r.err == nil && !r.duringDeploy {
			d = append(d, r.latency)
		}
	}
	return quantile(d, 0.99)
}

// refused counts the requests whose connection was refused, and those
// cut after they were sent (the process that had accepted them died).
func (l *load) refused() (refused, cut int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.results {
		switch {
		case r.err == nil:
		case errors.Is(r.err, syscall.ECONNREFUSED):
			refused++
		case errors.Is(r.err, io.EOF), errors.Is(r.err, io.ErrUnexpectedEOF), errors.Is(r.err, syscall.ECONNRESET), errors.Is(r.err, syscall.EPIPE),
			errors.Is(r.err, net.ErrClosed): // an upload whose answer came back cut

			cut++
		}
	}
	return refused, cut
}
