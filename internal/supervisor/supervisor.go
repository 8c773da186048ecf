// Package supervisor runs service processes: one process group per version,
// its output captured to a rotated log, its readiness detected, its crashes
// restarted with backoff, and its stop escalated from SIGTERM to SIGKILL.
// It knows nothing about routing.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"hostel/internal/cgroup"
	"hostel/internal/spec"
)

// Defaults for the zero values of Config and Options.
const (
	DefaultReadyTimeout = 30 * time.Second
	DefaultStopGrace    = 10 * time.Second
	// DefaultHealthInterval and DefaultHealthFailures are the spec's
	// defaults, for a Config that leaves them zero.
	DefaultHealthInterval = spec.DefaultHealthInterval
	DefaultHealthFailures = spec.DefaultHealthFailures
	DefaultLogMaxBytes    = 10 << 20
	// keptLogs is how many rotated log files (.1 .. .3) are kept.
	keptLogs = 3
	// servicePATH is the PATH every service process gets.
	servicePATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Errors a caller may want to tell apart; returned errors wrap them.
var (
	// ErrFailed means the process kept crashing and the supervisor gave up.
	ErrFailed = errors.New("failed")
	// ErrNotReady means the process did not become ready within its ReadyTimeout.
	ErrNotReady = errors.New("not ready")
	// ErrStopped means the instance was stopped before it became ready.
	ErrStopped = errors.New("stopped")
	// ErrUnknown means no instance with that key is known.
	ErrUnknown = errors.New("no such instance")
)

// State is the lifecycle state of an instance, as shown by status.
type State string

// States the supervisor sets. StateDraining and StateIdle are set by others
// through SetState.
const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	// StateUnhealthy is a version whose process stopped serving — its
	// health checks failed HealthFailures times in a row, or a restarted
	// process was not ready within its ReadyTimeout — from then until a
	// process of it is ready again: it is being restarted with backoff.
	StateUnhealthy State = "unhealthy"
	StateStopped   State = "stopped"
	StateFailed    State = "failed"
	StateDraining  State = "draining"
	StateIdle      State = "idle"
)

// Config describes one version of a service to run.
type Config struct {
	// Service is the service's name, [a-z][a-z0-9-]{0,40}.
	Service string
	// Version is the version being run; with Service it forms the key.
	Version spec.Version
	// Owner is the environment that owns this instance of the version:
	// the one whose data (state directory, database) it uses. Empty or
	// spec.DefaultEnv is production; a preview's own instance is keyed
	// SERVICE-VERSION@OWNER, with its own state directory
	// (Root/state/SERVICE@OWNER) and log (Root/logs/SERVICE/VERSION@OWNER.log).
	Owner string
	// Dir is the package directory: exec[0] is relative to it unless absolute,
	// and it is the process's working directory. Empty means exec[0] is looked
	// up in the service's PATH (then the daemon's) and the working directory is
	// STATE_DIRECTORY.
	Dir string
	// Exec is the command line; it must not be empty. Its arguments after
	// the first have their variables substituted from the process's
	// environment at each launch (spec.ExpandArg): ${NAME}, a whole
	// argument $NAME, $$ for $.
	Exec []string
	// Env holds extra variables from the engine. They may override PATH and
	// HOME, but never the variables the supervisor owns (PORT, HOST,
	// STATE_DIRECTORY, RUNTIME_DIRECTORY, HOSTEL_SERVICE, HOSTEL_VERSION,
	// NOTIFY_SOCKET).
	Env map[string]string
	// Port is the loopback port the process listens on; 0 means the
	// supervisor picks a free one.
	Port int
	// HealthPath is requested with GET to decide readiness and health: a
	// process is ready once it answers 2xx (a READY=1 on NOTIFY_SOCKET
	// before that only hurries the next check), and once ready it is
	// checked every HealthInterval until HealthFailures checks in a row
	// fail. Empty means READY=1, or else a TCP connect, makes it ready,
	// and nothing is checked once it is.
	HealthPath string
	// HealthInterval is the pause between two checks of a ready process;
	// zero means 10s.
	HealthInterval time.Duration
	// HealthFailures is how many failed checks in a row make a ready
	// process unhealthy: it is then stopped and started again like a
	// crashed one; zero means 3.
	HealthFailures int
	// ReadyTimeout bounds WaitReady; zero means 30s.
	ReadyTimeout time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL; zero means 10s.
	StopGrace time.Duration
	// Credentials are secrets by name, given to the process as one file each
	// (0400, owned by its user) in CREDENTIALS_DIRECTORY, on a memory-backed
	// filesystem where one is available; nil means no CREDENTIALS_DIRECTORY.
	// They are never put in the environment or logged.
	Credentials map[string][]byte
	// Fenced runs the instance only while Options.Fence holds (fence.go):
	// an exclusive service's in a cluster, which must be stopped before
	// its node's lease can end, when another node may start it.
	Fenced bool
	// Memory is the most memory, in bytes, the version's processes may use
	// together; 0 means no limit. Enforced only with Options.Cgroups.
	Memory int64
	// CPU is how many cores' worth of time they may use (0.5 is half a
	// core); 0 means no limit. Enforced only with Options.Cgroups.
	CPU float64
}

// Options configure a Supervisor.
type Options struct {
	// Root is the daemon's root directory. The supervisor uses
	// Root/state/SERVICE, Root/run/SERVICE-VERSION and
	// Root/logs/SERVICE/VERSION.log.
	Root string
	// Logf receives the supervisor's own messages; nil discards them.
	Logf func(format string, args ...any)
	// RunAsUsers runs every service as its own system user (UserName; a
	// preview's own instance as one of its own, InstanceUser), created
	// when missing. Set it when the daemon runs as root.
	RunAsUsers bool
	// LogMaxBytes is the size at which a version's log is rotated; zero
	// means 10 MiB. Three rotated files are kept.
	LogMaxBytes int64
	// Cgroups puts each version's processes in a cgroup of their own,
	// which enforces Config.Memory, Config.CPU and a limit on processes,
	// and measures their use; nil means no cgroups and no limits.
	Cgroups *cgroup.Hierarchy
	// Fence returns until when Fenced instances may run: a time before
	// the node's lease can end at the store. nil: always (one machine,
	// where no other node can start them).
	Fence func() time.Time
}

// Status is a snapshot of one instance.
type Status struct {
	Service string
	Version spec.Version
	Key     spec.VersionKey
	State   State
	// PID is the process's id, 0 while none runs.
	PID  int
	Port int
	// Ready is true while the current process has passed its readiness check.
	Ready bool
	// Restarts counts restarts after crashes.
	Restarts int
	// LastError is why the last process ended, if it crashed ("exit status 1").
	LastError string
	// LastExit is how the last process ended, in the contract's words:
	// "exit 1", "signal 9", "oom" when the kernel killed it for exceeding
	// Config.Memory, or "unhealthy" when the supervisor stopped it for not
	// serving (StateUnhealthy); "" while none has ended.
	LastExit string
	// Health is the last check of HealthPath, readiness probes included;
	// nil without a HealthPath or before the first check.
	Health *Check
	// MemoryBytes and CPUSeconds are what the version's processes use
	// (memory now, CPU time since the version started); 0 without cgroups.
	MemoryBytes int64
	CPUSeconds  float64
	// OOMKills counts the processes of the version's group the kernel
	// killed for exceeding Config.Memory; 0 without cgroups.
	OOMKills int64
	// Started is when the current (or last) process was started.
	Started time.Time
	// LogPath is the file the process's stdout and stderr go to.
	LogPath string
	// LogDropped counts the bytes of output dropped because they came
	// faster than the log could be rotated (see logFile).
	LogDropped int64
}

// Check is the result of one health check.
type Check struct {
	OK bool
	At time.Time
	// Error says why the check failed; "" when it passed.
	Error string
}

// Supervisor runs service processes. Its methods are safe for concurrent use.
type Supervisor struct {
	opts  Options
	probe *http.Client

	userMu sync.Mutex // serializes useradd
	logs   logWatcher

	mu        sync.Mutex
	instances map[spec.VersionKey]*Instance
	ports     map[int]bool // ports held by known instances, so two picks never collide
}

// New returns a Supervisor with nothing running.
func New(opts Options) *Supervisor {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.LogMaxBytes <= 0 {
		opts.LogMaxBytes = DefaultLogMaxBytes
	}
	return &Supervisor{
		opts: opts,
		// Probes never reuse connections: a kept-alive connection would hide
		// a process that stopped accepting, and leave goroutines behind.
		probe: &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
		instances: map[spec.VersionKey]*Instance{},
		ports:     map[int]bool{},
	}
}

var (
	serviceName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,40}$`)
	versionName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

// validate checks cfg and fills in its defaults.
func (c *Config) validate() error {
	if !serviceName.MatchString(c.Service) {
		return fmt.Errorf("service %q: want a name matching [a-z][a-z0-9-]{0,40}", c.Service)
	}
	if !versionName.MatchString(string(c.Version)) {
		return fmt.Errorf("service %q: bad version %q", c.Service, c.Version)
	}
	if c.Owner != "" {
		if err := spec.CheckEnv(c.Owner); err != nil {
			return fmt.Errorf("service %q: owner: %w", c.Service, err)
		}
	}
	if len(c.Exec) == 0 || c.Exec[0] == "" {
		return fmt.Errorf("service %q: exec is empty", c.Service)
	}
	if c.Memory < 0 || c.CPU < 0 {
		return fmt.Errorf("service %q: negative memory or cpu limit", c.Service)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("service %q: bad port %d", c.Service, c.Port)
	}
	for k, v := range c.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return fmt.Errorf("service %q: bad environment variable %q", c.Service, k)
		}
	}
	if c.HealthPath != "" && !strings.HasPrefix(c.HealthPath, "/") {
		c.HealthPath = "/" + c.HealthPath
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = DefaultHealthInterval
	}
	if c.HealthFailures <= 0 {
		c.HealthFailures = DefaultHealthFailures
	}
	if c.StopGrace <= 0 {
		c.StopGrace = DefaultStopGrace
	}
	return nil
}

// Start launches the version and returns once its process has started, not
// once it is ready (see WaitReady), and without waiting for the launch's
// record: the instance writes it before it can be stopped or let go (see
// record). Starting a key that is already known
// returns the existing instance, unless that one has failed: then it is
// replaced by a fresh start.
func (s *Supervisor) Start(cfg Config) (*Instance, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Env = cloneEnv(cfg.Env)
	cfg.Exec = append([]string(nil), cfg.Exec...)
	key := cfg.Key()
	if cfg.Fenced && !s.fenceHolds() {
		return nil, fmt.Errorf("start %s: %w", key, ErrFenced)
	}

	s.mu.Lock()
	if old, ok := s.instances[key]; ok {
		if !old.hasFailed() {
			s.mu.Unlock()
			<-old.launched
			if old.launchErr != nil {
				return nil, old.launchErr
			}
			return old, nil
		}
		s.forgetLocked(old)
	}
	if cfg.Port == 0 {
		port, err := s.pickPortLocked()
		if err != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("start %s: %w", key, err)
		}
		cfg.Port = port
	}
	s.ports[cfg.Port] = true
	i := newInstance(s, cfg, key)
	s.instances[key] = i
	s.mu.Unlock()

	p, err := i.setup()
	if err != nil {
		err = fmt.Errorf("start %s: %w", key, err)
		s.mu.Lock()
		if s.instances[key] == i {
			s.forgetLocked(i)
		}
		s.mu.Unlock()
		i.launchErr = err
		i.finish(StateFailed, err.Error())
		close(i.launched)
		close(i.done)
		return nil, err
	}
	close(i.launched)
	s.opts.Logf("supervisor: %s: started pid %d on %s", key, p.pid, i.Addr())
	go i.run(p)
	return i, nil
}

// pickPortLocked finds a free loopback port that no known instance holds.
func (s *Supervisor) pickPortLocked() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("picking a port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !s.ports[port] {
			return port, nil
		}
	}
	return 0, errors.New("picking a port: no free port found")
}

// forgetLocked drops i from the supervisor's books. s.mu must be held.
func (s *Supervisor) forgetLocked(i *Instance) {
	if s.instances[i.key] == i {
		delete(s.instances, i.key)
	}
	delete(s.ports, i.cfg.Port)
}

// Get returns the instance known under key.
func (s *Supervisor) Get(key spec.VersionKey) (*Instance, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.instances[key]
	return i, ok
}

// Stop sends SIGTERM to the instance's process group, SIGKILL after its
// StopGrace, waits for it to end, removes its RUNTIME_DIRECTORY and forgets
// it. Stopping an unknown key does nothing. If ctx ends first, Stop returns
// its error while the stop completes in the background.
func (s *Supervisor) Stop(ctx context.Context, key spec.VersionKey) error {
	s.mu.Lock()
	i, ok := s.instances[key]
	if ok {
		s.forgetLocked(i)
	}
	s.mu.Unlock()
	if !ok {
		return nil
	}
	i.requestStop()
	select {
	case <-i.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", key, ctx.Err())
	}
}

// Restart stops the instance and starts the same config again, on the same
// port, and waits for it to be ready.
func (s *Supervisor) Restart(ctx context.Context, key spec.VersionKey) error {
	i, ok := s.Get(key)
	if !ok {
		return fmt.Errorf("restart %s: %w", key, ErrUnknown)
	}
	cfg := i.cfg
	if err := s.Stop(ctx, key); err != nil {
		return fmt.Errorf("restart %s: %w", key, err)
	}
	ni, err := s.Start(cfg)
	if err != nil {
		return fmt.Errorf("restart %s: %w", key, err)
	}
	return ni.WaitReady(ctx)
}

// StopAll stops every instance, concurrently.
func (s *Supervisor) StopAll(ctx context.Context) error {
	s.mu.Lock()
	keys := make([]spec.VersionKey, 0, len(s.instances))
	for k := range s.instances {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for n, k := range keys {
		wg.Go(func() { errs[n] = s.Stop(ctx, k) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Status returns a snapshot of the instance known under key.
func (s *Supervisor) Status(key spec.VersionKey) (Status, bool) {
	i, ok := s.Get(key)
	if !ok {
		return Status{}, false
	}
	return i.Status(), true
}

// List returns a snapshot of every known instance, sorted by key.
func (s *Supervisor) List() []Status {
	s.mu.Lock()
	all := make([]*Instance, 0, len(s.instances))
	for _, i := range s.instances {
		all = append(all, i)
	}
	s.mu.Unlock()
	out := make([]Status, len(all))
	for n, i := range all {
		out[n] = i.Status()
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Key < out[b].Key })
	return out
}

// SetState overlays a state set by others (StateDraining, StateIdle) on a
// live instance; "" removes it. Failed and stopped always show through.
// It reports whether the key is known.
func (s *Supervisor) SetState(key spec.VersionKey, st State) bool {
	i, ok := s.Get(key)
	if !ok {
		return false
	}
	i.mu.Lock()
	i.mark = st
	i.mu.Unlock()
	return true
}

// paths of an instance under the root.
// Key returns the key of the instance cfg runs: spec.InstanceKey of its
// service, version and owner.
func (c *Config) Key() spec.VersionKey { return spec.InstanceKey(c.Service, c.Version, c.Owner) }

// dataName is the name of the instance's own data under the root:
// SERVICE for production's, SERVICE@OWNER for a preview's.
func (c *Config) dataName() string {
	if c.Owner == "" || c.Owner == spec.DefaultEnv {
		return c.Service
	}
	return c.Service + "@" + c.Owner
}

// StateDir returns the STATE_DIRECTORY of the instances owner owns of
// service under root: production's is Root/state/SERVICE, kept as it
// always was; a preview's Root/state/SERVICE@ENV.
func StateDir(root, service, owner string) string {
	c := Config{Service: service, Owner: owner}
	return filepath.Join(root, "state", c.dataName())
}

func (s *Supervisor) runDir(key spec.VersionKey) string {
	return filepath.Join(s.opts.Root, "run", string(key))
}

// instanceLog is the log of cfg's instance.
func (s *Supervisor) instanceLog(cfg Config) string {
	return LogPath(s.opts.Root, cfg.Service, cfg.Version, cfg.Owner)
}

// LogPath is the log under root of the instance of service's version v
// that environment owner owns: Root/logs/SERVICE/VERSION.log for
// production's, VERSION@OWNER.log beside it for a preview's own.
func LogPath(root, service string, v spec.Version, owner string) string {
	if owner == "" || owner == spec.DefaultEnv {
		return filepath.Join(root, "logs", service, string(v)+".log")
	}
	return filepath.Join(root, "logs", service, string(v)+"@"+owner+".log")
}

// environ builds the process's whole environment: nothing is inherited.
func environ(cfg Config, stateDir, runDir, notify string) []string {
	env := map[string]string{"PATH": servicePATH, "HOME": stateDir}
	for k, v := range cfg.Env {
		env[k] = v
	}
	env["PORT"] = strconv.Itoa(cfg.Port)
	env["HOST"] = "127.0.0.1"
	env["STATE_DIRECTORY"] = stateDir
	env["RUNTIME_DIRECTORY"] = runDir
	env["HOSTEL_SERVICE"] = cfg.Service
	env["HOSTEL_VERSION"] = string(cfg.Version)
	if notify != "" {
		env["NOTIFY_SOCKET"] = notify
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// expandArgs returns the arguments a process of argv gets: argv[0], the
// program, as it is; every other with its variables substituted from the
// process's environment env, by spec.ExpandArg's rule.
func expandArgs(argv, env []string) ([]string, error) {
	out := make([]string, len(argv))
	out[0] = argv[0]
	for n, a := range argv[1:] {
		v, err := spec.ExpandArg(a, env)
		if err != nil {
			return nil, fmt.Errorf("argument %d: %w", n+1, err)
		}
		out[n+1] = v
	}
	return out, nil
}

func cloneEnv(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ResolveExec returns the program a service runs for exec[0] (or
// release[0]) with package directory dir ("" for none), found as a start
// finds it: absolute, relative to dir, or on the services' PATH. The daemon
// checks programs with it before a deploy changes anything.
func ResolveExec(dir, name string) (string, error) {
	switch {
	case filepath.IsAbs(name):
		return name, nil
	case dir != "":
		return filepath.Join(dir, name), nil
	case strings.Contains(name, "/"):
		return "", fmt.Errorf("exec %q: a relative path needs a package directory", name)
	}
	for _, d := range filepath.SplitList(servicePATH) {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	// Not in the service's PATH: a daemon started by hand (development)
	// may know it from its own PATH.
	if p, err := lookPath(name); err == nil && filepath.IsAbs(p) {
		return p, nil
	}
	return "", fmt.Errorf("exec %q: not found in %s", name, servicePATH)
}
