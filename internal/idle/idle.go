// Package idle is scale to zero's process side: a Sleeper stops a running
// version whose service has `idle` set once no request came for that long
// (the router decides and closes the version's gate, so no request is
// counted after the decision), and starts it again, with the config it
// was built with, when the router asks it to wake it (router.Waker).
//
// It knows the supervisor (processes) and the router (requests) through
// the small interfaces below, and the engine only through a Catalog.
package idle

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// Processes is what a Sleeper needs of the supervisor.
type Processes interface {
	Start(cfg supervisor.Config) (*supervisor.Instance, error)
	Get(key spec.VersionKey) (*supervisor.Instance, bool)
	Stop(ctx context.Context, key spec.VersionKey) error
}

// Routes is what a Sleeper needs of the router.
type Routes interface {
	// Sleep closes key's gate if it had no request for idle and has
	// none in flight; true means the process is the Sleeper's to stop.
	Sleep(key spec.VersionKey, idle time.Duration) bool
	// Wake wakes key if it sleeps and waits until it is awake; nil at
	// once if it is not asleep.
	Wake(ctx context.Context, key spec.VersionKey) error
	// Sleeping reports key's state; false once it is no longer routed.
	Sleeping(key spec.VersionKey) (router.SleepStatus, bool)
}

var (
	_ Processes    = (*supervisor.Supervisor)(nil)
	_ Routes       = (*router.Router)(nil)
	_ router.Waker = (*Sleeper)(nil)
)

// Policy is how one running version may sleep.
type Policy struct {
	// Idle is how long without a request puts it to sleep; zero never.
	Idle time.Duration
	// Needs are the exact versions it was built against, woken with it.
	Needs []spec.VersionKey
}

// Catalog returns the versions that may be put to sleep now, with their
// policies; false means none may now (a deploy or a confirm window runs).
type Catalog func() (map[spec.VersionKey]Policy, bool)

var (
	// ErrNotAsleep means a wake was asked for a version the Sleeper did
	// not put to sleep: it has no config to start it with.
	ErrNotAsleep = errors.New("not put to sleep by this daemon")
	// ErrNeedNotAwake means a version was not started because a version
	// it needs did not wake.
	ErrNeedNotAwake = errors.New("a version it needs did not wake")
)

// Every is how often a Sleeper looks for idle versions: idleness is
// tracked to the second.
const Every = 500 * time.Millisecond

// Sleeper puts idle versions to sleep and wakes them. Its methods are
// safe for concurrent use.
type Sleeper struct {
	procs   Processes
	routes  Routes
	catalog Catalog
	logf    func(format string, args ...any)

	mu    sync.Mutex
	slept map[spec.VersionKey]*asleep

	stop chan struct{}
	done chan struct{}
}

// asleep is a version put to sleep: what it is started again with.
type asleep struct {
	cfg     supervisor.Config
	needs   []spec.VersionKey
	stopped chan struct{} // closed once its process has ended
}

// New returns a Sleeper; Start starts its watch.
func New(procs Processes, routes Routes, catalog Catalog, logf func(format string, args ...any)) *Sleeper {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Sleeper{procs: procs, routes: routes, catalog: catalog, logf: logf,
		slept: map[spec.VersionKey]*asleep{}, stop: make(chan struct{}), done: make(chan struct{})}
}

// Start watches for idle versions until Stop.
func (s *Sleeper) Start() {
	go func() {
		defer close(s.done)
		t := time.NewTicker(Every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.Check()
			}
		}
	}()
}

// Stop ends the watch started by Start and waits for it. Versions asleep
// stay asleep.
func (s *Sleeper) Stop() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// Check puts to sleep, once, every version of the catalog that had no
// request for its idle.
func (s *Sleeper) Check() {
	s.forgetRemoved()
	cat, ok := s.catalog()
	if !ok {
		return
	}
	for key, p := range cat {
		if p.Idle <= 0 {
			continue
		}
		inst, running := s.procs.Get(key)
		if !running {
			continue
		}
		a := &asleep{cfg: inst.Config(), needs: p.Needs, stopped: make(chan struct{})}
		// The decision and its note are one step under s.mu: a request
		// may find the gate closed the moment the router decides, and
		// the wake it starts must find the version noted asleep.
		s.mu.Lock()
		if !s.routes.Sleep(key, p.Idle) {
			s.mu.Unlock()
			continue
		}
		s.slept[key] = a
		s.mu.Unlock()
		s.logf("%s: asleep: no request for %s", key, p.Idle)
		go func() {
			defer close(a.stopped)
			// SIGTERM, then SIGKILL after its stop grace.
			if err := s.procs.Stop(context.Background(), key); err != nil {
				s.logf("%s: stopping to sleep: %v", key, err)
			}
		}()
	}
}

// Adopt registers key as asleep with the config it is started with and
// the versions it needs, though this Sleeper did not put it to sleep: a
// kept version registered without starting its process (the router's
// AddSleepingBackend, which must come first: a version the router does
// not route is forgotten at the next Check). Its next request wakes it as
// any sleeping version.
func (s *Sleeper) Adopt(cfg supervisor.Config, needs []spec.VersionKey) {
	stopped := make(chan struct{})
	close(stopped) // no process to wait for
	a := &asleep{cfg: cfg, needs: append([]spec.VersionKey(nil), needs...), stopped: stopped}
	s.mu.Lock()
	s.slept[cfg.Key()] = a
	s.mu.Unlock()
}

// Forget drops what the Sleeper keeps of key: it is being removed.
func (s *Sleeper) Forget(key spec.VersionKey) {
	s.mu.Lock()
	delete(s.slept, key)
	s.mu.Unlock()
}

// forgetRemoved drops what it keeps of sleeping versions the router no
// longer routes: a deploy removed them.
func (s *Sleeper) forgetRemoved() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.slept {
		if _, ok := s.routes.Sleeping(k); !ok {
			delete(s.slept, k)
		}
	}
}

// Wake starts a version put to sleep with the config it ran with, once
// the versions it needs are awake, and returns once it is ready. Its
// sleeping needs are woken first, all at once, each through the router
// (one wake, whoever asks) and each after its own needs: a chain wakes
// from its end, siblings together, and a process that calls its needs as
// it starts finds them ready. A need that does not wake fails the wake
// before the version is started. A version that fails to start or to
// become ready within its health timeout is stopped: nothing is left
// half-started.
func (s *Sleeper) Wake(ctx context.Context, key spec.VersionKey) (string, error) {
	s.mu.Lock()
	a := s.slept[key]
	s.mu.Unlock()
	if a == nil {
		return "", fmt.Errorf("wake %s: %w", key, ErrNotAsleep)
	}
	select {
	case <-a.stopped:
	case <-ctx.Done():
		return "", fmt.Errorf("wake %s: %w", key, ctx.Err())
	}
	if err := s.wakeNeeds(ctx, a.needs); err != nil {
		s.logf("%s: wake failed: %v", key, err)
		return "", fmt.Errorf("wake %s: %w", key, err)
	}
	cfg := a.cfg
	// A port of the supervisor's choosing: the old one may be taken
	// since, and requests reach the version through the router anyway.
	cfg.Port = 0
	inst, err := s.procs.Start(cfg)
	if err != nil {
		s.logf("%s: wake failed: %v", key, err)
		return "", fmt.Errorf("wake %s: %w", key, err)
	}
	if err := inst.WaitReady(ctx); err != nil {
		s.procs.Stop(context.WithoutCancel(ctx), key)
		s.logf("%s: wake failed: %v", key, err)
		return "", fmt.Errorf("wake %s: %w", key, err)
	}
	if _, routed := s.routes.Sleeping(key); !routed {
		// A deploy removed the version while it woke: it must not run on.
		s.procs.Stop(context.WithoutCancel(ctx), key)
		return "", fmt.Errorf("wake %s: %w", key, router.ErrRemoved)
	}
	s.mu.Lock()
	if s.slept[key] == a {
		delete(s.slept, key)
	}
	s.mu.Unlock()
	s.logf("%s: awake on %s", key, inst.Addr())
	return inst.Addr(), nil
}

// wakeNeeds wakes the sleeping versions of needs at once and waits until
// every one is awake. The error names each that did not wake.
func (s *Sleeper) wakeNeeds(ctx context.Context, needs []spec.VersionKey) error {
	errs := make([]error, len(needs))
	var wg sync.WaitGroup
	for n, need := range needs {
		wg.Go(func() {
			if err := s.routes.Wake(ctx, need); err != nil {
				errs[n] = fmt.Errorf("%w: %w", ErrNeedNotAwake, err) // err names need
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
