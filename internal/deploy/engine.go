// Package deploy is the deploy engine: it turns a plan into running
// versions and one atomic switch of routes, drains what the switch left
// behind, and undoes a switch whose new versions fail their health checks.
//
// It drives the supervisor (processes) and the router (traffic) through the
// small interfaces below; neither knows about the other.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"hostel/internal/plan"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// Processes is what the engine needs of the supervisor.
type Processes interface {
	Start(cfg supervisor.Config) (*supervisor.Instance, error)
	Get(key spec.VersionKey) (*supervisor.Instance, bool)
	Stop(ctx context.Context, key spec.VersionKey) error
	Restart(ctx context.Context, key spec.VersionKey) error
	Status(key spec.VersionKey) (supervisor.Status, bool)
	// Adopt, AdoptRecorded, Recorded and Orphans take back the processes
	// a previous daemon left running (see Resume).
	Adopt(cfg supervisor.Config) (*supervisor.Instance, bool, error)
	AdoptRecorded(key spec.VersionKey) (*supervisor.Instance, bool, error)
	Recorded(key spec.VersionKey) (supervisor.Config, bool)
	Orphans() []spec.VersionKey
}

// Routes is what the engine needs of the router.
type Routes interface {
	AddBackend(key spec.VersionKey, addr string)
	RemoveBackend(key spec.VersionKey)
	Swap(t router.Table) error
	OpenEndpoint(key spec.VersionKey, listen string) (string, error)
	CloseEndpoint(key spec.VersionKey)
	WaitIdle(ctx context.Context, key spec.VersionKey) error
	InFlight(key spec.VersionKey) int64
	Abort(key spec.VersionKey) int64
}

// Preparer readies what a new version needs before its process starts: a
// database, credentials, a release step. It may add to cfg.Env and the other
// fields of cfg. An error fails the deploy before the switch.
type Preparer interface {
	Prepare(ctx context.Context, g *spec.Generation, service string, cfg *supervisor.Config) error
}

var (
	_ Processes = (*supervisor.Supervisor)(nil)
	_ Routes    = (*router.Router)(nil)
)

// ErrInvalid marks input errors (exit 2): nothing was changed.
var ErrInvalid = errors.New("invalid input")

// Progress receives one human-readable line per step of a deploy.
type Progress func(format string, args ...any)

// Engine applies generations. One deploy, rollback or restart runs at a time.
type Engine struct {
	store store.Store
	procs Processes
	route Routes

	prepare []Preparer

	mu sync.Mutex // serializes operations that change what runs

	// running holds what the engine started and has not stopped, by key.
	runMu   sync.Mutex
	running map[spec.VersionKey]*version
}

// version is one started version of a service and what it was started with.
type version struct {
	svc      *spec.Service
	needs    []spec.VersionKey // the exact versions it was built against
	draining bool
}

// New returns an engine over a store, the processes and the routes.
func New(st store.Store, procs Processes, routes Routes) *Engine {
	return &Engine{store: st, procs: procs, route: routes, running: map[spec.VersionKey]*version{}}
}

// Use adds preparers, run in the order given before every new version starts.
// Call it before the engine is used.
func (e *Engine) Use(p ...Preparer) { e.prepare = append(e.prepare, p...) }

// Request is one deploy.
type Request struct {
	Source string      // the spec file's name, for messages
	Spec   *spec.Spec  // decoded and validated
	Inputs spec.Inputs // what else shapes versions
	// Secrets are the age ciphertexts of the secrets the services use, by
	// name; the generation keeps them. Nil means none.
	Secrets map[string][]byte
	// Confirm is the confirm window after the switch; 0 skips it.
	Confirm time.Duration
}

// Result says what a deploy, rollback or restore did.
type Result struct {
	Generation uint64     `json:"generation"`
	Plan       *plan.Plan `json:"plan,omitempty"`
	Started    []string   `json:"started"`
	Stopped    []string   `json:"stopped"`
	RolledBack bool       `json:"rolled_back,omitempty"`
	// Aborted counts requests still in flight to old versions when their
	// stop grace ran out; they were ended with 504.
	Aborted int64 `json:"aborted"`
}

// Plan plans a spec against the current generation without changing anything.
func (e *Engine) Plan(ctx context.Context, s *spec.Spec, in spec.Inputs) (*plan.Plan, error) {
	cur, err := e.store.Current(ctx)
	if err != nil {
		return nil, err
	}
	return plan.Make(s, in, cur)
}

// Deploy makes the machine run req.Spec: it starts new versions, switches all
// routes at once, drains and stops what is left over, and within the confirm
// window switches back if a new version turns unhealthy.
func (e *Engine) Deploy(ctx context.Context, req Request, progress Progress) (*Result, error) {
	if err := req.Spec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.store.Current(ctx)
	if err != nil {
		return nil, err
	}
	p, err := plan.Make(req.Spec, req.Inputs, cur)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	res := &Result{Plan: p, Started: []string{}, Stopped: []string{}}
	if cur != nil && cur.SpecHash == p.SpecHash {
		res.Generation = cur.Number
		progress("nothing to deploy: generation %d already runs this spec", cur.Number)
		return res, nil
	}
	next := &spec.Generation{SpecHash: p.SpecHash, Source: req.Source, Spec: req.Spec, Inputs: req.Inputs, Versions: p.Versions, Secrets: req.Secrets}
	var from uint64 // the generation this deploy was planned against
	if cur != nil {
		from = cur.Number
	}
	started, err := e.apply(ctx, next, func() error {
		_, err := e.store.Commit(ctx, next, from) // numbers next
		return err
	}, progress)
	res.Started, res.Generation = started, next.Number
	if err != nil {
		return res, err
	}

	if req.Confirm > 0 && len(started) > 0 && cur != nil {
		if err := e.confirm(ctx, next, started, req.Confirm, progress); err != nil {
			progress("%v; switching back to generation %d", err, cur.Number)
			if rerr := e.switchBack(ctx, next.Number, cur, started, progress); rerr != nil {
				return res, fmt.Errorf("%w; switching back to generation %d failed too: %w", err, cur.Number, rerr)
			}
			res.RolledBack = true
			res.Generation = cur.Number
			return res, fmt.Errorf("deploy rolled back to generation %d: %w", cur.Number, err)
		}
	}
	res.Stopped, res.Aborted = e.drain(context.WithoutCancel(ctx), next, progress)
	progress("generation %d deployed: %d started, %d stopped", next.Number, len(res.Started), len(res.Stopped))
	return res, nil
}

// Rollback switches to generation to (0: the one before the current).
func (e *Engine) Rollback(ctx context.Context, to uint64, progress Progress) (*Result, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.store.Current(ctx)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		return nil, fmt.Errorf("%w: nothing deployed yet", ErrInvalid)
	}
	if to == 0 {
		gens, err := e.store.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, g := range gens {
			if g.Number < cur.Number {
				to = g.Number
			}
		}
		if to == 0 {
			return nil, fmt.Errorf("%w: generation %d is the oldest kept; there is nothing to roll back to", ErrInvalid, cur.Number)
		}
	}
	if to == cur.Number {
		return nil, fmt.Errorf("%w: generation %d is already current", ErrInvalid, to)
	}
	target, err := e.store.Get(ctx, to)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	} else if err != nil {
		return nil, err
	}
	res := &Result{Generation: to}
	started, err := e.apply(ctx, target, func() error { return e.store.SetCurrent(ctx, cur.Number, to) }, progress)
	res.Started = started
	if err != nil {
		return res, err
	}
	res.Stopped, res.Aborted = e.drain(context.WithoutCancel(ctx), target, progress)
	return res, nil
}

// Resume runs the current generation again after a daemon start: it adopts
// the versions that still run from before (same processes, same ports and
// endpoints), starts the missing ones, and stops running versions that the
// current generation does not hold.
func (e *Engine) Resume(ctx context.Context, progress Progress) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.store.Current(ctx)
	if err != nil {
		return err
	}
	if cur == nil {
		e.stopOrphans(ctx, progress)
		return nil
	}
	defer e.stopOrphans(context.WithoutCancel(ctx), progress)
	if _, err := e.startAll(context.WithValue(ctx, resuming{}, true), cur, progress); err != nil {
		// Serve what did start; the failed versions are reported by status.
		progress("generation %d resumed with errors: %v", cur.Number, err)
	}
	// Route what runs; a version that could not start leaves its domains
	// unrouted rather than keeping the daemon from serving the others.
	t := Table(cur)
	for host, key := range t.Domains {
		if !e.isRunning(key) {
			progress("%s is not running: %s is not served until it is", key, host)
			delete(t.Domains, host)
		}
	}
	if err := e.route.Swap(t); err != nil {
		return fmt.Errorf("resume generation %d: %w", cur.Number, err)
	}
	return nil
}

// Restart restarts the running version of one service in place.
func (e *Engine) Restart(ctx context.Context, service string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.store.Current(ctx)
	if err != nil {
		return err
	}
	if cur == nil || cur.Spec.Services[service] == nil {
		return fmt.Errorf("%w: no service %q in the current generation", ErrInvalid, service)
	}
	key := spec.Key(service, cur.Versions[service])
	if err := e.procs.Restart(ctx, key); err != nil {
		return fmt.Errorf("restart %s: %w", key, err)
	}
	if inst, ok := e.procs.Get(key); ok {
		e.route.AddBackend(key, inst.Addr())
	}
	return nil
}

// Draining reports whether key is an old version being drained.
func (e *Engine) Draining(key spec.VersionKey) bool {
	e.runMu.Lock()
	defer e.runMu.Unlock()
	v := e.running[key]
	return v != nil && v.draining
}

// Running returns the keys of every version the engine runs, sorted.
func (e *Engine) Running() []spec.VersionKey {
	e.runMu.Lock()
	defer e.runMu.Unlock()
	keys := make([]spec.VersionKey, 0, len(e.running))
	for k := range e.running {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

// Shutdown stops every version, topmost first.
func (e *Engine) Shutdown(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopKeys(ctx, e.Running(), func(string, ...any) {})
}

func keysOf(names []string) []spec.VersionKey {
	out := make([]spec.VersionKey, len(names))
	for i, n := range names {
		out[i] = spec.VersionKey(n)
	}
	return out
}
