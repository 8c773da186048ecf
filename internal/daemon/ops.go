package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"hostel/internal/api"
	"hostel/internal/deploy"
	"hostel/internal/plan"
	"hostel/internal/routes"
	"hostel/internal/source"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

var _ api.Daemon = (*Daemon)(nil)

// DefaultConfirm is the confirm window after a switch.
const DefaultConfirm = 30 * time.Second

// apiError turns an engine error into what the API reports.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	var se *spec.Error
	if errors.Is(err, deploy.ErrInvalid) || errors.As(err, &se) {
		return &api.Error{Kind: api.KindInvalid, Message: err.Error()}
	}
	return err
}

// sourceName is the spec file a request came from, for messages.
func sourceName(req api.PlanRequest) string {
	if req.Source == "" {
		return "spec"
	}
	return req.Source
}

func decodeSpec(req api.PlanRequest) (*spec.Spec, error) {
	s, err := spec.Decode(sourceName(req), req.Spec)
	if err != nil {
		return nil, api.Invalid(err)
	}
	return s, nil
}

// Plan implements api.Daemon.
func (d *Daemon) Plan(ctx context.Context, req api.PlanRequest) (*plan.Plan, error) {
	s, err := decodeSpec(req)
	if err != nil {
		return nil, err
	}
	// Programs are checked here, on the machine that runs them.
	if err := (source.Programs{Resolve: supervisor.ResolveExec, Planned: true}).Check(sourceName(req), s); err != nil {
		return nil, api.Invalid(err)
	}
	p, err := d.engine.Plan(ctx, req.Env, s, req.Inputs)
	if err == nil {
		p.Warnings = append(p.Warnings, d.limitWarnings(s)...)
	}
	return p, apiError(err)
}

// deployResult turns what the engine did into the API's result: nil when it
// did nothing, else with the versions to blame for err, if any.
func deployResult(res *deploy.Result, err error) *api.DeployResult {
	if res == nil {
		return nil
	}
	out := &api.DeployResult{Generation: res.Generation, Plan: res.Plan, Started: res.Started, Stopped: res.Stopped,
		RolledBack: res.RolledBack, RolledBackFrom: res.RolledBackFrom, Aborted: res.Aborted, Confirmation: string(res.Confirmation)}
	if out.Started == nil {
		out.Started = []string{}
	}
	if out.Stopped == nil {
		out.Stopped = []string{}
	}
	for _, f := range deploy.Failures(err) {
		out.Failures = append(out.Failures, api.DeployFailure{Service: f.Service, Version: string(f.Version), Step: f.Step, Reason: f.Err.Error()})
	}
	return out
}

// Deploy implements api.Daemon.
func (d *Daemon) Deploy(ctx context.Context, req api.DeployRequest, progress func(string)) (*api.DeployResult, error) {
	s, err := decodeSpec(req.PlanRequest)
	if err != nil {
		return nil, err
	}
	if err := (source.Programs{Resolve: supervisor.ResolveExec, Fetched: d.nixCache != nil}).Check(sourceName(req.PlanRequest), s); err != nil {
		return nil, api.Invalid(err)
	}
	confirm := DefaultConfirm
	if req.Confirm != "" {
		if confirm, err = time.ParseDuration(req.Confirm); err != nil || confirm < 0 {
			return nil, api.Invalid(fmt.Errorf("confirm: invalid duration %q", req.Confirm))
		}
	}
	secs, err := d.checkSecrets(ctx, s, req.PlanRequest)
	if err != nil {
		return nil, err
	}
	// A deploy runs to its end even if the client goes away: a half-applied
	// deploy is worse than an unobserved one.
	ctx = context.WithoutCancel(ctx)
	res, err := d.engine.Deploy(ctx, deploy.Request{Source: req.Source, Env: req.Env, Spec: s, Inputs: req.Inputs, Secrets: secs, Confirm: confirm}, d.progress(progress))
	if err == nil {
		// The switch handed the new hosts to certificate management.
		d.awaitCerts(ctx, d.progress(progress))
	}
	if errors.Is(err, deploy.ErrInvalid) {
		res = nil // nothing was changed
	}
	return deployResult(res, err), apiError(err)
}

// Rollback implements api.Daemon.
func (d *Daemon) Rollback(ctx context.Context, req api.RollbackRequest, progress func(string)) (*api.DeployResult, error) {
	res, err := d.engine.Rollback(context.WithoutCancel(ctx), req.Env, req.To, d.progress(progress))
	return deployResult(res, err), apiError(err)
}

func (d *Daemon) progress(send func(string)) deploy.Progress {
	return func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		d.logf("%s", line)
		send(line)
	}
}

// Restart implements api.Daemon.
func (d *Daemon) Restart(ctx context.Context, req api.RestartRequest) error {
	return apiError(d.engine.Restart(ctx, req.Service))
}

// Status implements api.Daemon.
func (d *Daemon) Status(ctx context.Context) (*api.Status, error) {
	return d.EnvStatus(ctx, spec.DefaultEnv)
}

// EnvStatus implements api.EnvDaemon: the status of environment env.
func (d *Daemon) EnvStatus(ctx context.Context, env string) (*api.Status, error) {
	return d.status(ctx, env, false)
}

// AllStatus implements api.AllStatusDaemon: the status of environment env
// ("" is production) with every version still kept.
func (d *Daemon) AllStatus(ctx context.Context, env string) (*api.Status, error) {
	if env == "" {
		env = spec.DefaultEnv
	}
	return d.status(ctx, env, true)
}

// storeWait bounds how long status waits for the store.
const storeWait = 5 * time.Second

// status is the status of environment env: its current generation's
// versions, what else of it runs (draining, or awake and kept), and with
// all the kept versions asleep too.
func (d *Daemon) status(ctx context.Context, env string, all bool) (*api.Status, error) {
	// Status answers, if only to say why not, when the store does not (an
	// etcd without a quorum): a daemon stopping waits for the requests in
	// flight, and `hostel shutdown` asks for the status until none comes.
	ctx, cancel := context.WithTimeout(ctx, storeWait)
	defer cancel()
	cur, err := d.envCurrent(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("the store: %w", err)
	}
	st := &api.Status{Listen: api.Listen{HTTP: d.HTTPAddr(), Peer: d.peerAddr, API: d.RemoteAPIAddr(), Metrics: d.MetricsAddr()}, Services: []api.ServiceStatus{}}
	d.certStatus(st)
	zone := spec.DefaultZone
	shown := map[spec.VersionKey]bool{}
	if cur != nil {
		st.Generation = cur.Number
		if c := cur.Confirm; c != nil {
			st.Confirmation, st.ConfirmError = string(c.State), c.Reason
		}
		if err := d.switchedBack(ctx, cur, st); err != nil {
			return nil, err
		}
		zone = cur.Spec.ZoneOrDefault()
		var pauses map[string]deploy.Pause
		if env == spec.DefaultEnv {
			if pauses, err = d.engine.Pauses(ctx); err != nil {
				return nil, err
			}
		}
		for _, name := range cur.Spec.Names() {
			key := cur.Instance(name)
			shown[key] = true
			ss := d.serviceStatus(name, cur.Versions[name], key, zone)
			ss.Domains = append([]string{}, cur.Spec.Services[name].Domains...)
			if env != spec.DefaultEnv {
				// A preview answers on its own names, never on the spec's
				// domains, which stay production's.
				ss.URL = "http://" + routes.PreviewHost(name, env, zone)
				ss.Domains = []string{}
				if h := cur.Spec.PreviewHost(name, env); h != "" {
					ss.Domains = append(ss.Domains, h)
				}
			}
			ss.Package = cur.Spec.Services[name].Package
			if p, ok := pauses[name]; ok {
				ss.Paused = &api.PauseStatus{Since: p.Since, MaxSeconds: p.Max.Seconds()}
				ss.State = "held"
			}
			st.Services = append(st.Services, ss)
		}
	}
	packageOf := d.packages(ctx)
	kept := map[spec.VersionKey]bool{}
	for _, k := range d.kept() {
		kept[k] = true
	}
	// Old versions still draining, and kept ones awake.
	for _, s := range d.sup.List() {
		if !shown[s.Key] && s.Key.Owner() == env {
			shown[s.Key] = true
			ss := d.serviceStatus(s.Service, s.Version, s.Key, zone)
			ss.Package, ss.Kept = packageOf(s.Service, s.Version), kept[s.Key]
			st.Services = append(st.Services, ss)
		}
	}
	if all {
		// Kept versions with no process: asleep until a request wakes them.
		for _, k := range d.kept() {
			if shown[k] || k.Owner() != env {
				continue
			}
			name := k.Service()
			v := spec.Version(strings.TrimPrefix(string(k.Version()), name+"-"))
			ss := d.serviceStatus(name, v, k, zone)
			ss.Package, ss.Kept = packageOf(name, v), true
			st.Services = append(st.Services, ss)
		}
	}
	if env == spec.DefaultEnv {
		d.addDatabases(ctx, st)
	}
	return st, nil
}

// switchedBack tells in st when cur is current because the newest
// generation failed its confirmation and was switched back from.
func (d *Daemon) switchedBack(ctx context.Context, cur *spec.Generation, st *api.Status) error {
	gens, err := d.store.List(ctx)
	if err != nil || len(gens) == 0 {
		return err
	}
	newest := gens[len(gens)-1]
	if c := newest.Confirm; c != nil && c.State == spec.ConfirmFailed && newest.Number != cur.Number && c.Previous == cur.Number {
		st.SwitchedBackFrom, st.SwitchBackReason = newest.Number, c.Reason
	}
	return nil
}

// serviceStatus is the status of instance key of version v of service
// name.
func (d *Daemon) serviceStatus(name string, v spec.Version, key spec.VersionKey, zone string) api.ServiceStatus {
	ss := api.ServiceStatus{Name: name, Version: string(v), Env: key.Owner(), State: "stopped", Domains: []string{},
		URL: "http://" + spec.VersionHost(name, v, zone), InFlight: d.router.InFlight(key), Node: d.nodeName()}
	if s, ok := d.sup.Status(key); ok {
		ss.State, ss.PID, ss.Ready, ss.Restarts, ss.Error = string(s.State), s.PID, s.Ready, s.Restarts, s.LastError
		ss.LastExit, ss.MemoryBytes, ss.CPUSeconds = s.LastExit, s.MemoryBytes, s.CPUSeconds
		if h := s.Health; h != nil {
			ss.Health = &api.HealthCheck{OK: h.OK, At: h.At.UTC().Truncate(time.Millisecond), Error: h.Error}
		}
		if d.agent.Draining(key) {
			ss.State = "draining"
		}
	}
	d.sleepStatus(key, &ss)
	return ss
}

// Generations implements api.Daemon.
func (d *Daemon) Generations(ctx context.Context) (*api.Generations, error) {
	return d.EnvGenerations(ctx, spec.DefaultEnv)
}

// EnvGenerations implements api.EnvDaemon: environment env's history.
func (d *Daemon) EnvGenerations(ctx context.Context, env string) (*api.Generations, error) {
	cur, err := d.envCurrent(ctx, env)
	if err != nil {
		return nil, err
	}
	gens, err := d.store.List(ctx)
	if err != nil {
		return nil, err
	}
	out := &api.Generations{Generations: []api.Generation{}}
	if cur != nil {
		out.Current = cur.Number
	}
	for _, g := range gens {
		if g.EnvOrDefault() != env {
			continue
		}
		vs := make(map[string]string, len(g.Versions))
		for k, v := range g.Versions {
			vs[k] = string(v)
		}
		ag := api.Generation{Number: g.Number, Time: g.Time, SpecHash: g.SpecHash,
			Source: g.Source, Current: g.Number == out.Current, Versions: vs, ClosureSize: d.closureSize(ctx, g), Plan: g.Plan}
		if c := g.Confirm; c != nil {
			ag.Confirmation, ag.Confirmed, ag.ConfirmError = string(c.State), c.State == spec.ConfirmConfirmed, c.Reason
		}
		out.Generations = append(out.Generations, ag)
	}
	return out, nil
}

// GC implements api.Daemon: it keeps the newest keep generations and the
// current one, stops and unregisters what only the dropped ones held and
// removes their Nix roots (the engine, under its lock), then runs the Nix
// garbage collector.
func (d *Daemon) GC(ctx context.Context, req api.GCRequest) (*api.GCResult, error) {
	gc, err := d.engine.GC(context.WithoutCancel(ctx), req.Keep, d.unpin, func(f string, a ...any) { d.logf(f, a...) })
	if err != nil {
		return nil, apiError(err)
	}
	res := &api.GCResult{Removed: append([]uint64{}, gc.Removed...), Kept: []uint64{}, Unpinned: append([]string{}, gc.Released...)}
	for _, g := range gc.Kept {
		res.Kept = append(res.Kept, g.Number)
	}
	freed, err := d.collectGarbage(ctx)
	if err != nil {
		return nil, err
	}
	res.FreedPaths, res.FreedBytes = freed.Paths, freed.Bytes
	slices.Sort(res.Kept)
	slices.Sort(res.Removed)
	return res, nil
}

// LogPath is where the supervisor writes the log of one version.
func LogPath(root, service string, v spec.Version) string {
	return supervisor.LogPath(root, service, v, spec.DefaultEnv)
}

// Logs implements api.Daemon.
func (d *Daemon) Logs(ctx context.Context, service, version string, n int, follow bool, w io.Writer) error {
	return d.EnvLogs(ctx, spec.DefaultEnv, service, version, n, follow, w)
}

// EnvLogs implements api.EnvLogs: the log of the instance environment
// env uses of service (of the version named, or of its current one).
func (d *Daemon) EnvLogs(ctx context.Context, env, service, version string, n int, follow bool, w io.Writer) error {
	cur, err := d.envCurrent(ctx, env)
	if err != nil {
		return err
	}
	owner := env
	if version == "" {
		if cur == nil || cur.Spec.Services[service] == nil {
			return api.Invalid(fmt.Errorf("no service %q in the current generation (name a version with --version)", service))
		}
		version, owner = string(cur.Versions[service]), cur.Owner(service)
	} else if cur != nil && string(cur.Versions[service]) == version {
		owner = cur.Owner(service)
	}
	path := supervisor.LogPath(d.opts.Root, service, spec.Version(version), owner)
	f, err := os.Open(path)
	if err != nil {
		return api.Invalid(fmt.Errorf("no logs for %s version %s", service, version))
	}
	defer func() { f.Close() }()
	if err := tail(f, n, w); err != nil || !follow {
		return err
	}
	return followLog(ctx, &f, path, w)
}

// followLog copies what is appended to the log at path, read from *f on,
// until ctx ends; it reopens the log when it is rotated, and leaves *f
// the file last read.
func followLog(ctx context.Context, f **os.File, path string, w io.Writer) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := io.Copy(w, *f); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		*f = followRotation(*f, path, w)
	}
}

// followRotation returns the file to go on reading the log at path from,
// after f: f itself, rewound if it was truncated, or, if another file
// replaced it at path, that one, once the rest of f went to w.
func followRotation(f *os.File, path string, w io.Writer) *os.File {
	fst, err := f.Stat()
	if err != nil {
		return f
	}
	// The supervisor rotates by copy and truncate: a file shorter than
	// what was read was truncated, and what follows starts at 0.
	if off, err := f.Seek(0, io.SeekCurrent); err == nil && fst.Size() < off {
		f.Seek(0, io.SeekStart)
	}
	st, err := os.Stat(path)
	if err != nil || os.SameFile(st, fst) {
		return f
	}
	io.Copy(w, f)
	nf, err := os.Open(path)
	if err != nil {
		return f
	}
	f.Close()
	return nf
}

// tail writes the last n lines of f to w and leaves f at its end.
func tail(f *os.File, n int, w io.Writer) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	// Read backwards in chunks until n newlines are found.
	const chunk = 64 << 10
	off := size
	lines := 0
	for off > 0 && lines <= n {
		step := int64(chunk)
		if off < step {
			step = off
		}
		off -= step
		buf := make([]byte, step)
		if _, err := f.ReadAt(buf, off); err != nil {
			return err
		}
		for i := len(buf) - 1; i >= 0; i-- {
			if buf[i] == '\n' && off+int64(i) != size-1 {
				lines++
				if lines == n {
					off += int64(i) + 1
					goto found
				}
			}
		}
	}
found:
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, err = io.Copy(w, bufio.NewReader(io.LimitReader(f, size-off)))
	return err
}
