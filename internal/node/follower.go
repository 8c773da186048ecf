package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"hostel/internal/agent"
	"hostel/internal/failpoint"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// Processes is what a Follower reads of the supervisor to report.
type Processes interface {
	Get(key spec.VersionKey) (*supervisor.Instance, bool)
	Status(key spec.VersionKey) (supervisor.Status, bool)
}

// Router is what a Follower needs of the router: each version's sleep
// state (to report it), and wakes.
type Router interface {
	Sleeping(key spec.VersionKey) (router.SleepStatus, bool)
	Wake(ctx context.Context, key spec.VersionKey) error
}

var (
	_ Processes = (*supervisor.Supervisor)(nil)
	_ Router    = (*router.Router)(nil)
)

// Options configure a Follower.
type Options struct {
	// Name is the node's.
	Name string
	// Self is what the node reports of itself beside what it runs: its
	// address, labels and capacity (Info's; Name, Up and Applied are the
	// follower's).
	Self Info
	// Lease is the node's: its reports live with it. Rejoin changes it
	// (guarded by the Follower's mu from then).
	Lease store.LeaseID
	// Agent runs the processes; Procs and Router are what it runs them
	// with (the supervisor and the router).
	Agent  *agent.Agent
	Procs  Processes
	Router Router
	// RoutesAt waits until the routers no longer route by a state older
	// than revision rev (every node's router follows rev or later): an
	// instance a switch left behind is stopped only then. Nil: no wait.
	RoutesAt func(ctx context.Context, rev uint64) error
	// Logf receives what the follower does; nil discards it.
	Logf func(format string, args ...any)
}

// ReportEvery is how often a Follower looks at its instances to report
// what changed (a crash, a turn to unhealthy, a sleep).
const ReportEvery = 250 * time.Millisecond

// suspendBound is how long a request to a stopped instance (Desired.
// Stopped) is held before it gets 503.
const suspendBound = time.Minute

// Follower makes one node run what the store asks of it: on every change
// to the current generations or to its Desired it reads the state and
// has the agent reconcile to it — level-triggered: whatever was missed,
// the next read has it — then reports what it did (Info) and what runs
// (Instance records). It is also the node's sleep catalog: which running
// versions may sleep, and after how long (Sleepers).
type Follower struct {
	st    store.Store
	opts  Options
	agent *agent.Agent
	logf  func(format string, args ...any)

	// mu guards the fields below; reconcile holds run, not mu, while the
	// agent works.
	run sync.Mutex
	mu  sync.Mutex
	// reporting serializes report.
	reporting sync.Mutex
	// info writes the node's record (Info), and again until it went
	// through.
	info *Reporter
	// cur is what the last reconcile made run.
	cur state
	// reconciling is set while a reconcile runs: nothing sleeps then.
	reconciling bool
	// restarted are the restart counts of Desired.Restarts carried out.
	restarted map[spec.VersionKey]int
	// reported are the instance reports in the store, by key.
	reported map[spec.VersionKey]Instance
	// kept are the kept callable versions, with how they sleep.
	kept map[spec.VersionKey]*keptSleep
	// lastRoutes is the revision of the last change the routes follow
	// (a current generation moved, a pause) seen.
	lastRoutes uint64
	// results are the last reconciles' results (Info.Results); guarded
	// by run.
	results []Result
	// up is when the follower was made: the node's start.
	up time.Time
	// readRev is the revision of the last state a reconcile read: a
	// change at or before it is in it.
	readRev uint64
}

// state is what one read of the store asks of the node.
type state struct {
	rev      uint64
	desired  Desired
	currents map[string]*spec.Generation
	gens     map[uint64]*spec.Generation
	// others is set when the engine asks other nodes too (their Desired
	// records): what they run may need what this one stops.
	others bool
}

// NewFollower returns a Follower for st; Run starts it.
func NewFollower(st store.Store, opts Options) *Follower {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Follower{st: st, opts: opts, agent: opts.Agent, logf: logf, up: time.Now().UTC().Truncate(time.Second),
		info: NewReporter(st, KindNode, opts.Name, logf), restarted: map[spec.VersionKey]int{}, reported: map[spec.VersionKey]Instance{}, kept: map[spec.VersionKey]*keptSleep{}}
}

// Start reads the state and makes the node run it, taking over what a
// previous daemon left running (agent.Options.Adopt): what a daemon does
// before it serves. It returns the revision it read; Run follows on from
// there.
func (f *Follower) Start(ctx context.Context) (uint64, error) {
	snap, err := f.st.Read(ctx, KindDesired, KindNode)
	if err != nil {
		return 0, fmt.Errorf("node %s: %w", f.opts.Name, err)
	}
	// Restarts asked before this start are done: what runs was started
	// or adopted just now. (The engine takes a request back once the
	// nodes carried it out.)
	if d := f.read(snap).desired; d.Restarts != nil {
		for k, n := range d.Restarts {
			f.restarted[k] = n
		}
	}
	f.mu.Lock()
	f.lastRoutes = snap.Revision
	f.mu.Unlock()
	f.reconcile(ctx, snap, true)
	return snap.Revision, nil
}

// Rejoin makes the node report under lease, a new one, after it lost its
// own: its records went with it, and the engine may have placed what it
// ran on other nodes meanwhile. It reads the state again and reconciles
// to it — what is no longer placed here stops — and reports its Info and
// every instance anew under lease.
func (f *Follower) Rejoin(ctx context.Context, lease store.LeaseID) error {
	f.mu.Lock()
	f.opts.Lease = lease
	f.reported = map[spec.VersionKey]Instance{} // gone with the old lease
	f.mu.Unlock()
	snap, err := f.st.Read(ctx, KindDesired)
	if err != nil {
		return fmt.Errorf("node %s: %w", f.opts.Name, err)
	}
	f.noteRoutes(snap.Revision)
	f.reconcile(ctx, snap, false)
	return nil
}

// Run follows the store from revision from until ctx ends, reports the
// node's instances every ReportEvery, and tries again a report of its
// Info that failed (Reporter).
func (f *Follower) Run(ctx context.Context, from uint64) {
	var wg sync.WaitGroup
	wg.Go(func() { f.reportLoop(ctx) })
	wg.Go(func() { f.info.Run(ctx) })
	defer wg.Wait()
	for ctx.Err() == nil {
		err := f.follow(ctx, from)
		if ctx.Err() != nil {
			return
		}
		f.logf("node %s: %v; reading the state again", f.opts.Name, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		snap, err := f.st.Read(ctx, KindDesired)
		if err != nil {
			f.logf("node %s: %v", f.opts.Name, err)
			continue
		}
		f.noteRoutes(snap.Revision)
		f.reconcile(ctx, snap, false)
		from = snap.Revision
	}
}

// follow watches from rev and reconciles after every change that matters
// to this node. It returns why it stopped.
func (f *Follower) follow(ctx context.Context, rev uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := f.st.Watch(ctx, rev)
	if err != nil {
		return err
	}
	// A change at or before the last state read is in it. The events of
	// one change (the engine's commit moves a current generation and
	// writes this node's Desired) come one by one; the first has the
	// change read, the others find it read.
	newer := func(ev store.Event) bool {
		m := f.matters(ev) // notes the routes' changes whatever the revision
		return m && ev.Revision > f.readRevision()
	}
	for {
		batch, err := store.Pending(events)
		if err != nil {
			return err
		}
		matters := false
		for _, ev := range batch {
			matters = newer(ev) || matters
		}
		if !matters {
			continue
		}
		snap, err := f.st.Read(ctx, KindDesired)
		if err != nil {
			return err
		}
		f.reconcile(ctx, snap, false)
	}
}

// matters reports whether ev may change what the node runs: a current
// generation moved, a generation went (a callable version may go with
// it), or the node's Desired changed. It notes the changes the routes
// follow.
func (f *Follower) matters(ev store.Event) bool {
	switch ev.Type {
	case store.EventCurrent:
		f.noteRoutes(ev.Revision)
		return true
	case store.EventRemoved:
		return true
	case store.EventRecord, store.EventRecordDeleted:
		if ev.Kind == store.KindPause {
			f.noteRoutes(ev.Revision)
		}
		return ev.Kind == KindDesired && ev.Key == f.opts.Name
	}
	return false
}

// readRevision is the revision of the last state a reconcile read: a
// change at or before it was in it.
func (f *Follower) readRevision() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readRev
}

func (f *Follower) noteRoutes(rev uint64) {
	f.mu.Lock()
	f.lastRoutes = max(f.lastRoutes, rev)
	f.mu.Unlock()
}

// read turns a snapshot into what it asks of the node.
func (f *Follower) read(snap *store.Snapshot) state {
	s := state{rev: snap.Revision, currents: snap.Currents, gens: map[uint64]*spec.Generation{}}
	for _, g := range snap.Generations {
		s.gens[g.Number] = g
	}
	for _, r := range snap.Records[KindDesired] {
		if r.Key != f.opts.Name {
			s.others = true
			continue
		}
		d, err := DecodeDesired(r.Key, r.Value)
		if err != nil {
			f.logf("node %s: %v", f.opts.Name, err)
			continue
		}
		s.desired = d
	}
	return s
}

// desired is what the agent is asked to run in s: every environment's
// current generation (production first), the generations kept, the one
// staged, and asleep the callable versions. On the node's start
// (resume), what slept sleeps on.
func (f *Follower) desired(s state, resume bool) agent.Desired {
	var d agent.Desired
	for _, env := range EnvOrder(s.currents) {
		d.Generations = append(d.Generations, s.currents[env])
	}
	windowed := map[string]*spec.Generation{}
	for _, n := range s.desired.Keep {
		g := s.gens[n]
		if g == nil {
			f.logf("node %s: generation %d, to keep running, is not in the store", f.opts.Name, n)
			continue
		}
		d.Generations = append(d.Generations, g)
		windowed[g.EnvOrDefault()] = g
	}
	if g := s.desired.Staged; g != nil {
		d.Generations = append(d.Generations, g)
	}
	if s.desired.Placed {
		d.Only = make(map[spec.VersionKey]bool, len(s.desired.Instances))
		for _, k := range s.desired.Instances {
			d.Only[k] = true
		}
	}
	if resume {
		// What slept when the daemon stopped sleeps on, unless its process
		// is left running (adopted then).
		d.Asleep = SleepingOnResume(s.currents, windowed)
	}
	for _, c := range s.desired.Asleep {
		g := s.gens[c.Generation]
		if g == nil || g.Spec.Services[c.Service] == nil {
			f.logf("node %s: kept version %s of generation %d is not in the store", f.opts.Name, c.Service, c.Generation)
			continue
		}
		d.Asleep = append(d.Asleep, agent.Callable{Generation: g, Service: c.Service})
	}
	return d
}

// reconcile makes the node run what snap asks, then reports. One at a
// time.
func (f *Follower) reconcile(ctx context.Context, snap *store.Snapshot, resume bool) {
	f.run.Lock()
	defer f.run.Unlock()
	failpoint.Hit("node-before-reconcile")
	s := f.read(snap)
	f.mu.Lock()
	f.readRev = max(f.readRev, snap.Revision)
	f.mu.Unlock()
	f.mu.Lock()
	f.reconciling = true
	routesAt := f.lastRoutes
	f.mu.Unlock()

	opts := agent.Options{Adopt: resume}
	if !resume && f.opts.RoutesAt != nil {
		// A version a switch left behind gets no new request once every
		// router follows the switch: drained only then.
		opts.BeforeStop = func(ctx context.Context) {
			if err := f.opts.RoutesAt(ctx, routesAt); err != nil {
				f.logf("node %s: stopping what the routes left without waiting for every router: %v", f.opts.Name, err)
			}
		}
	}
	if s.others {
		// What another node runs of what a stopped version needs drains
		// first (drain.go); alone, the agent orders its own stops.
		gens := slices.Collect(maps.Values(s.gens))
		opts.BeforeStopOne = func(ctx context.Context, k spec.VersionKey) { f.awaitDependents(ctx, gens, k) }
	}
	d := f.desired(s, resume)
	rep, err := f.agent.Reconcile(ctx, d, opts, f.progress)
	if err != nil && !resume {
		f.logf("node %s: %v", f.opts.Name, err)
	}
	// What a current generation holds went live: its preparation stands.
	held := heldBy(s.currents)
	f.agent.Keep(ctx, held, f.progress)
	failures := f.suspend(ctx, s.desired.Stopped)
	restartFailures := append(failures, f.restart(ctx, s.desired.Restarts)...)
	f.wakeAlwaysOn(ctx, s.currents)
	f.mu.Lock()
	f.cur, f.reconciling = s, false
	f.mu.Unlock()
	f.setKept(d.Asleep, held)
	f.report(ctx)
	res := Result{Applied: s.rev, Failures: restartFailures}
	if rep != nil {
		res.Started, res.Stopped, res.Aborted = rep.Started, rep.Stopped, rep.Aborted
	}
	for _, se := range agent.Failures(err) {
		res.Failures = append(res.Failures, Failure{Service: se.Service, Version: se.Version, Reason: se.Err.Error()})
	}
	f.results = append(f.results, res)
	if n := len(f.results); n > KeepResults {
		f.results = slices.Clone(f.results[n-KeepResults:])
	}
	info := f.opts.Self
	info.Name, info.Up, info.Applied, info.Results = f.opts.Name, f.up, s.rev, f.results
	f.writeInfo(ctx, info)
}

// heldBy returns the instances the current generations hold, sorted.
func heldBy(currents map[string]*spec.Generation) []string {
	var out []string
	for _, g := range currents {
		for name := range g.Versions {
			out = append(out, string(g.Instance(name)))
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// suspend stops the instances of stopped that run, and starts again those
// stopped before that are no longer in it. It returns what could not be.
func (f *Follower) suspend(ctx context.Context, stopped []spec.VersionKey) []Failure {
	var out []Failure
	want := map[spec.VersionKey]bool{}
	for _, k := range stopped {
		want[k] = true
		if err := f.agent.Suspend(ctx, k, suspendBound); err != nil && !errors.Is(err, agent.ErrNotRunning) {
			out = append(out, failure(k, err))
		}
	}
	for _, k := range f.agent.Suspended() {
		if !want[k] {
			if err := f.agent.Unsuspend(ctx, k); err != nil {
				out = append(out, failure(k, err))
			}
		}
	}
	return out
}

// failure is a Failure of instance k.
func failure(k spec.VersionKey, err error) Failure {
	v := string(k.Version())
	return Failure{Service: k.Service(), Version: spec.Version(v[len(k.Service())+1:]), Reason: err.Error(),
		Refused: errors.Is(err, agent.ErrAsleepAndPaused)}
}

// restart carries out the restarts asked since the last ones done, and
// returns those that failed.
func (f *Follower) restart(ctx context.Context, asked map[spec.VersionKey]int) []Failure {
	var out []Failure
	for k, n := range asked {
		f.mu.Lock()
		done := f.restarted[k]
		f.mu.Unlock()
		if n <= done {
			continue
		}
		if err := f.agent.Restart(ctx, k); err != nil {
			out = append(out, failure(k, err))
		}
		f.mu.Lock()
		f.restarted[k] = n
		f.mu.Unlock()
	}
	// Forget what is no longer asked: a request taken back and asked
	// again counts from 1.
	f.mu.Lock()
	for k := range f.restarted {
		if _, ok := asked[k]; !ok {
			delete(f.restarted, k)
		}
	}
	f.mu.Unlock()
	return out
}

// wakeAlwaysOn wakes the versions of the current generations that sleep
// though they must not (no idle applies to them): a kept callable version
// a rollback made current again, a version whose idle a deploy removed,
// or one a start could not start (failed), which is tried again. A
// version paused by hand is left: its first request after the resume
// wakes it; so is an instance a generation shares: its owner decides.
func (f *Follower) wakeAlwaysOn(ctx context.Context, currents map[string]*spec.Generation) {
	var wg sync.WaitGroup
	for _, g := range currents {
		for name := range g.Versions {
			key := g.Instance(name)
			sl, ok := f.opts.Router.Sleeping(key)
			if !ok || !sl.Asleep || sl.Paused || !owns(g, name) || SleepAfter(g, name) > 0 {
				continue
			}
			wg.Go(func() {
				if err := f.opts.Router.Wake(ctx, key); err != nil {
					f.logf("waking %s, live now: %v", key, err)
				}
			})
		}
	}
	wg.Wait()
}

// writeInfo stores the node's record; one that fails is tried again
// (Reporter) until it goes through.
func (f *Follower) writeInfo(ctx context.Context, info Info) {
	v, err := json.Marshal(info)
	if err == nil {
		f.mu.Lock()
		lease := f.opts.Lease
		f.mu.Unlock()
		err = f.info.Report(ctx, v, lease)
	}
	if err != nil {
		f.logf("node %s: reporting: %v", f.opts.Name, err)
	}
}

func (f *Follower) progress(format string, args ...any) { f.logf(format, args...) }

// EnvOrder returns the environments that key byEnv, production first,
// then by name: the order a node starts them in.
func EnvOrder[V any](byEnv map[string]V) []string {
	envs := make([]string, 0, len(byEnv))
	for env := range byEnv {
		envs = append(envs, env)
	}
	sort.Slice(envs, func(i, j int) bool {
		if (envs[i] == spec.DefaultEnv) != (envs[j] == spec.DefaultEnv) {
			return envs[i] == spec.DefaultEnv
		}
		return envs[i] < envs[j]
	})
	return envs
}

// owns reports whether g is the generation of the environment whose
// instance of service name it uses (not one it shares).
func owns(g *spec.Generation, name string) bool { return g.Owner(name) == g.EnvOrDefault() }
