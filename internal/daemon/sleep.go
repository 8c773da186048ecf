package daemon

import (
	"context"
	"fmt"
	"time"

	"hostel/internal/api"
	"hostel/internal/idle"
	"hostel/internal/spec"
)

// wakeVia is the router's Waker: the daemon's Sleeper, made after the
// router it needs.
type wakeVia struct{ d *Daemon }

func (w wakeVia) Wake(ctx context.Context, key spec.VersionKey) (string, error) {
	if w.d.handedOver.Load() {
		return w.d.wakeByNext(ctx, key)
	}
	start := time.Now()
	addr, err := w.d.sleeper.Wake(ctx, key)
	w.d.metrics.Woke(key, time.Since(start), err)
	return addr, err
}

// newSleeper makes the Sleeper that wakes sleeping versions, and gives
// it to the agent, which registers versions asleep with it; the node's
// follower is its catalog.
func (d *Daemon) newSleeper() {
	d.sleeper = idle.New(d.sup, d.router, func() (map[spec.VersionKey]idle.Policy, bool) {
		if f := d.follower; f != nil && f.nodes != nil {
			return f.nodes.Sleepers()
		}
		return nil, false
	}, d.logf)
	d.agent.SetSleeper(d.sleeper)
}

// startSleeper puts idle versions of services with `idle`, and kept
// versions that stay callable, to sleep.
func (d *Daemon) startSleeper() {
	d.sleeper.Start()
	d.watching = true
}

// sleepStatus adds to ss what scale to zero knows of key: asleep is
// "idle", waking or paused is "held", a failed wake or start is "failed"
// (until the next request, deploy or restart starts it).
func (d *Daemon) sleepStatus(key spec.VersionKey, ss *api.ServiceStatus) {
	sl, ok := d.router.Sleeping(key)
	if !ok {
		return
	}
	last := sl.LastRequest.UTC().Truncate(time.Second)
	ss.LastRequest, ss.Wakes, ss.LastWakeSeconds = &last, sl.Wakes, sl.LastWake.Seconds()
	switch {
	case sl.Waking || sl.Paused || sl.Held:
		ss.State = "held"
	case sl.Asleep && sl.WakeError != nil:
		ss.State, ss.Error = "failed", sl.WakeError.Error()
	case sl.Asleep:
		ss.State = "idle"
	}
	if sl.Asleep {
		ss.PID, ss.Ready = 0, false
	}
}

var _ api.PauseDaemon = (*Daemon)(nil)

// DefaultPauseMax is how long `hostel pause` holds a request by default.
const DefaultPauseMax = 30 * time.Second

// Pause implements api.PauseDaemon: it holds the service's requests until
// Resume, across deploys and restarts; past req.Max one is answered 503.
func (d *Daemon) Pause(ctx context.Context, req api.PauseRequest) error {
	bound := DefaultPauseMax
	if req.Max != "" {
		b, err := time.ParseDuration(req.Max)
		if err != nil {
			return api.Invalid(fmt.Errorf("--max: %q is not a duration", req.Max))
		}
		bound = b
	}
	return apiError(d.engine.PauseService(ctx, req.Service, bound))
}

// Resume implements api.PauseDaemon.
func (d *Daemon) Resume(ctx context.Context, req api.ResumeRequest) error {
	return apiError(d.engine.ResumeService(ctx, req.Service))
}

// kept returns the versions kept callable that no current generation
// holds, as the node last made them.
func (d *Daemon) kept() []spec.VersionKey {
	if f := d.follower; f != nil && f.nodes != nil {
		return f.nodes.Kept()
	}
	return nil
}

var _ api.WakeDaemon = (*Daemon)(nil)

// Wake implements api.WakeDaemon.
func (d *Daemon) Wake(ctx context.Context, req api.WakeRequest) (*api.WakeResult, error) {
	if d.handedOver.Load() {
		return nil, fmt.Errorf("%s: this daemon was replaced by hostel upgrade", req.Version)
	}
	// Through the router, as a request wakes it: one wake whoever asks,
	// counted, the router's gate opened.
	key := spec.VersionKey(req.Version)
	if err := d.router.Wake(ctx, key); err != nil {
		return nil, err
	}
	inst, ok := d.sup.Get(key)
	if !ok {
		return nil, fmt.Errorf("%s does not run on this machine", req.Version)
	}
	return &api.WakeResult{Addr: inst.Addr()}, nil
}

// wakeByNext wakes key for a daemon that handed its services over to the
// one hostel upgrade started: once that one serves (this daemon's quit),
// it asks it over the API socket, now its, and serves the request held on
// the address it answers — the process is the same, its daemon another.
func (d *Daemon) wakeByNext(ctx context.Context, key spec.VersionKey) (string, error) {
	select {
	case <-d.quit:
	case <-ctx.Done():
		return "", fmt.Errorf("%s is asleep and the daemon is being upgraded: %w", key, ctx.Err())
	}
	d.logf("upgrade: %s woken by the daemon that replaced this one, for a request this one holds", key)
	addr, err := api.NewClient(SocketPath(d.opts.Root)).Wake(ctx, string(key))
	if err != nil {
		return "", fmt.Errorf("%s is asleep and the daemon was upgraded; the new daemon did not wake it: %w", key, err)
	}
	return addr, nil
}
