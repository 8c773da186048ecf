package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"hostel/internal/atomicfile"
	"hostel/internal/failpoint"
	"hostel/internal/spec"
)

// Service processes outlive the daemon: Detach lets go of them, and the next
// daemon's Adopt takes them back, found through one record per running
// instance, ROOT/run/SERVICE-VERSION.json.

// record is what the supervisor keeps on disk about a running instance so
// that a later daemon can adopt it. It holds no secret values: credentials
// are only named, and stay in their directory.
type record struct {
	Key spec.VersionKey `json:"key"`
	PID int             `json:"pid"`
	// StartTicks is field 22 of /proc/PID/stat: with PID it names one
	// process, so a reused pid is told apart.
	StartTicks uint64    `json:"start_ticks"`
	Started    time.Time `json:"started"`
	Port       int       `json:"port"`
	// User is the system user the process runs as; "" is the daemon's.
	User   string       `json:"user,omitempty"`
	Config recordConfig `json:"config"`
	// CredentialsDir is the CREDENTIALS_DIRECTORY the process was given.
	CredentialsDir string `json:"credentials_dir,omitempty"`
}

// recordConfig is Config without secret values.
type recordConfig struct {
	Service         string            `json:"service"`
	Version         spec.Version      `json:"version"`
	Owner           string            `json:"owner,omitempty"`
	Dir             string            `json:"dir,omitempty"`
	Exec            []string          `json:"exec"`
	Env             map[string]string `json:"env,omitempty"`
	HealthPath      string            `json:"health_path,omitempty"`
	HealthInterval  time.Duration     `json:"health_interval,omitempty"`
	HealthFailures  int               `json:"health_failures,omitempty"`
	ReadyTimeout    time.Duration     `json:"ready_timeout"`
	StopGrace       time.Duration     `json:"stop_grace"`
	CredentialNames []string          `json:"credential_names,omitempty"`
	Memory          int64             `json:"memory,omitempty"`
	CPU             float64           `json:"cpu,omitempty"`
	Fenced          bool              `json:"fenced,omitempty"`
}

func (s *Supervisor) recordPath(key spec.VersionKey) string {
	return filepath.Join(s.opts.Root, "run", string(key)+".json")
}

// writeRecord records the instance's current process: temp file, fsync,
// rename, fsync of the directory.
func (s *Supervisor) writeRecord(i *Instance, p *proc) error {
	if err := failpoint.Inject("supervisor-before-record"); err != nil {
		return err
	}
	c := i.cfg
	rc := recordConfig{
		Service: c.Service, Version: c.Version, Owner: c.Owner, Dir: c.Dir, Exec: c.Exec, Env: c.Env,
		HealthPath: c.HealthPath, HealthInterval: c.HealthInterval, HealthFailures: c.HealthFailures,
		ReadyTimeout: c.ReadyTimeout, StopGrace: c.StopGrace, Memory: c.Memory, CPU: c.CPU, Fenced: c.Fenced,
	}
	for name := range c.Credentials {
		rc.CredentialNames = append(rc.CredentialNames, name)
	}
	sort.Strings(rc.CredentialNames)
	r := record{Key: i.key, PID: p.pid, StartTicks: p.startTicks, Started: p.start, Port: c.Port,
		Config: rc, CredentialsDir: i.credDir}
	if i.cred != nil {
		r.User = InstanceUser(c.Service, c.Owner)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.recordPath(i.key), b, 0o600)
}

func (s *Supervisor) readRecord(key spec.VersionKey) (*record, error) {
	b, err := os.ReadFile(s.recordPath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("record %s: %w", s.recordPath(key), err)
	}
	if r.Key != key || r.PID <= 0 {
		return nil, fmt.Errorf("record %s: names %s pid %d", s.recordPath(key), r.Key, r.PID)
	}
	return &r, nil
}

func (s *Supervisor) removeRecord(key spec.VersionKey) {
	err := failpoint.Inject("supervisor-before-record-remove")
	if err == nil {
		err = os.Remove(s.recordPath(key))
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.opts.Logf("supervisor: %s: removing its record: %v", key, err)
	}
}

// live reports whether the record's process still runs: same pid, same
// start time, not a zombie.
func (r *record) live() bool {
	ticks, err := procStartTicks(r.PID)
	return err == nil && ticks == r.StartTicks
}

// procStartTicks returns field 22 (starttime) of /proc/PID/stat; a zombie
// or missing process is an error.
func procStartTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: count
	// from the last ')'.
	s := string(b)
	k := strings.LastIndexByte(s, ')')
	if k < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[k+1:])
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("pid %d has exited", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// watchExit returns a channel closed when the process pid (started at
// ticks) exits, and a function that ends the watch early. It waits on a
// pidfd through Go's netpoller (epoll), which works for processes that are
// not our children and holds no OS thread while it waits: a blocking
// poll(2) or wait4(2) per process would pin one thread for each running
// service. Where pidfds are missing it polls /proc.
func watchExit(pid int, ticks uint64) (exited chan struct{}, stop func()) {
	exited = make(chan struct{})
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err == nil {
		// The pid may have been reused between the caller's check and the
		// open: check again now that the pidfd pins the process.
		if t, terr := procStartTicks(pid); terr != nil || (ticks != 0 && t != ticks) {
			unix.Close(fd)
			close(exited)
			return exited, func() {}
		}
		// A nonblocking descriptor handed to os.NewFile joins the netpoller.
		f := os.NewFile(uintptr(fd), "pidfd")
		if rc, err := f.SyscallConn(); err == nil {
			done := make(chan struct{})
			go func() {
				defer close(done)
				// A pidfd turns readable when the process exits. Read
				// parks the goroutine until then, or until Close below.
				err := rc.Read(func(fd uintptr) bool {
					fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
					n, err := unix.Poll(fds, 0)
					return err != unix.EINTR && (err != nil || n > 0)
				})
				if err == nil {
					close(exited)
				}
			}()
			var once sync.Once
			return exited, func() {
				once.Do(func() {
					f.Close()
					<-done
				})
			}
		}
		f.Close()
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if t, err := procStartTicks(pid); err != nil || (ticks != 0 && t != ticks) {
				close(exited)
				return
			}
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return exited, func() {
		once.Do(func() {
			close(quit)
			<-done
		})
	}
}

// openLog opens the version's log for the processes and rotates it as
// they write (see logFile).
func (i *Instance) openLog() error {
	f, err := openLogFile(i.logPath)
	if err != nil {
		return err
	}
	i.logOut = f
	l := &logFile{path: i.logPath, max: i.s.opts.LogMaxBytes}
	i.mu.Lock()
	i.log = l // Status reads it from other goroutines
	i.mu.Unlock()
	wake := make(chan struct{}, 1)
	wd, err := i.s.logs.add(i.logPath, wake)
	if err != nil {
		f.Close()
		i.logOut = nil
		return fmt.Errorf("watching %s: %w", i.logPath, err)
	}
	i.logWatch, i.logWake = wd, wake
	// A first look without a write: a log may have grown past its cap
	// while no daemon watched it (written all the while the daemon was
	// down), and the service may write nothing more for a long time.
	notify(wake)
	i.rotDone = make(chan struct{})
	go func() {
		defer close(i.rotDone)
		// Wakes pile up (one is kept) while a rotation runs; one check
		// answers them all.
		for range wake {
			if _, err := l.rotateIfFull(); err != nil {
				i.s.opts.Logf("supervisor: %s: rotating %s: %v", i.key, i.logPath, err)
			}
		}
	}()
	return nil
}

// closeLog stops the rotation and closes the daemon's descriptor of the log.
func (i *Instance) closeLog() {
	if i.logWake != nil {
		i.s.logs.remove(i.logWatch)
		close(i.logWake) // no send can follow: remove took it off the watcher's books
		<-i.rotDone
		i.logWake = nil
	}
	if i.logOut != nil {
		i.logOut.Close()
		i.logOut = nil
	}
}

// logWatcher wakes each instance's rotation when its log is written to.
// It is one inotify instance for the whole supervisor, with a watch per
// log: the kernel allows a user only 128 inotify instances by default
// (fs.inotify.max_user_instances) but thousands of watches. Its descriptor
// is nonblocking, so reading it parks a goroutine in the netpoller rather
// than holding a thread. It runs only while some log is watched.
type logWatcher struct {
	mu    sync.Mutex
	f     *os.File // nil while nothing is watched
	wakes map[int32]chan<- struct{}
	done  chan struct{} // closed when the reading goroutine has ended
}

// add watches path for writes, waking wake (without blocking) on each.
func (w *logWatcher) add(path string, wake chan<- struct{}) (int32, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
		if err != nil {
			return 0, err
		}
		w.f, w.done, w.wakes = os.NewFile(uintptr(fd), "inotify"), make(chan struct{}), map[int32]chan<- struct{}{}
		go w.read(w.f, w.done)
	}
	wd, err := unix.InotifyAddWatch(int(w.f.Fd()), path, unix.IN_MODIFY)
	if err != nil {
		return 0, err
	}
	w.wakes[int32(wd)] = wake
	return int32(wd), nil
}

// remove ends the watch wd; once it returns, its wake channel gets no
// more sends. The last remove closes the inotify instance, without
// waiting.
func (w *logWatcher) remove(wd int32) {
	w.mu.Lock()
	if w.f == nil {
		w.mu.Unlock()
		return
	}
	delete(w.wakes, wd)
	unix.InotifyRmWatch(int(w.f.Fd()), uint32(wd))
	if len(w.wakes) > 0 {
		w.mu.Unlock()
		return
	}
	f, done := w.f, w.done
	w.f = nil
	w.mu.Unlock()
	// Closing an inotify instance waits for the kernel to free its
	// marks (a grace period: milliseconds on a busy machine), which the
	// stop of the last version — a version put to sleep, that a request
	// may be waiting to wake — has no reason to wait for. An add meanwhile
	// opens a new instance.
	go func() {
		f.Close()
		<-done
	}()
}

// read dispatches inotify events until f is closed.
func (w *logWatcher) read(f *os.File, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 256*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		w.mu.Lock()
		if w.f != f {
			// Closed, being replaced: its watch numbers are not the
			// books' any more.
			w.mu.Unlock()
			continue
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				for _, wake := range w.wakes {
					notify(wake)
				}
				continue
			}
			if wake, ok := w.wakes[ev.Wd]; ok {
				notify(wake)
			}
		}
		w.mu.Unlock()
	}
}

// notify wakes without waiting: one pending wake is as good as many.
func notify(wake chan<- struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}

func (i *Instance) requestDetach() { i.detachOne.Do(func() { close(i.detachReq) }) }

// release lets go of the instance without stopping its process: the
// process, its RUNTIME_DIRECTORY, credentials and record stay for the next
// daemon to adopt. p is nil when no process runs.
func (i *Instance) release(p *proc) {
	if p != nil {
		p.stopWatch()
		p.stopProbe()
		<-p.probeDone
	}
	if i.notify != nil {
		i.notify.Close()
		<-i.notifyDone
		i.notify = nil
	}
	i.closeLog()
	i.mu.Lock()
	i.state, i.accepting = StateStopped, false
	i.broadcastLocked()
	i.mu.Unlock()
	i.s.opts.Logf("supervisor: %s: detached, pid %d keeps running", i.key, i.Status().PID)
}

// Detach lets go of every instance without stopping any process: they keep
// running, with their directories and records, until a later Supervisor on
// the same root adopts them. The daemon detaches when it stops.
func (s *Supervisor) Detach() {
	s.mu.Lock()
	all := make([]*Instance, 0, len(s.instances))
	for _, i := range s.instances {
		all = append(all, i)
	}
	s.instances = map[spec.VersionKey]*Instance{}
	s.ports = map[int]bool{}
	s.mu.Unlock()
	for _, i := range all {
		<-i.launched
		i.requestDetach()
		<-i.done
	}
}

// Adopt takes over the process a detached (or killed) daemon left running
// for cfg's key, if its record says one runs and it is the same process
// (pid and start time). The instance keeps the recorded port; cfg's Port is
// ignored. It reports false, with nothing changed but a stale record
// removed, when there is nothing to adopt; then the caller starts cfg.
// cfg must be what the process was started with; its Credentials are not
// written again: the process keeps the directory it was given, and so do
// restarts after a crash. If adopting fails, the process is stopped and the
// error returned; the caller may then start cfg afresh.
func (s *Supervisor) Adopt(cfg Config) (*Instance, bool, error) {
	key := cfg.Key()
	r, err := s.readRecord(key)
	if err != nil || r == nil {
		return nil, false, err
	}
	if i, ok := s.Get(key); ok {
		return i, true, nil
	}
	if !r.live() {
		s.opts.Logf("supervisor: %s: pid %d from its record is gone", key, r.PID)
		s.cleanStale(r)
		return nil, false, nil
	}
	cfg.Port = r.Port
	if err := cfg.validate(); err != nil {
		return nil, false, err
	}
	cfg.Env = cloneEnv(cfg.Env)
	cfg.Exec = append([]string(nil), cfg.Exec...)

	s.mu.Lock()
	if s.ports[cfg.Port] {
		s.mu.Unlock()
		return nil, false, fmt.Errorf("adopt %s: port %d is held by another instance", key, cfg.Port)
	}
	s.ports[cfg.Port] = true
	i := newInstance(s, cfg, key)
	s.instances[key] = i
	s.mu.Unlock()

	p, err := i.adopt(r)
	if err != nil {
		err = fmt.Errorf("adopt %s: %w", key, err)
		s.mu.Lock()
		if s.instances[key] == i {
			s.forgetLocked(i)
		}
		s.mu.Unlock()
		i.launchErr = err
		i.closeLog()
		if i.notify != nil {
			i.notify.Close()
			<-i.notifyDone
		}
		i.mu.Lock()
		i.state, i.failure = StateFailed, err
		i.mu.Unlock()
		close(i.launched)
		close(i.done)
		s.opts.Logf("supervisor: %v; stopping pid %d", err, r.PID)
		killRecorded(r, cfg.StopGrace)
		s.cleanStale(r)
		return nil, false, err
	}
	close(i.launched)
	s.opts.Logf("supervisor: %s: adopted pid %d on %s", key, p.pid, i.Addr())
	go i.run(p)
	return i, true, nil
}

// AdoptRecorded adopts a recorded process with the config from its record,
// without its credentials (which stay in their directory): for processes
// the caller means to stop, such as versions no generation holds.
func (s *Supervisor) AdoptRecorded(key spec.VersionKey) (*Instance, bool, error) {
	r, err := s.readRecord(key)
	if err != nil || r == nil {
		return nil, false, err
	}
	c := r.Config
	return s.Adopt(Config{Service: c.Service, Version: c.Version, Owner: c.Owner, Dir: c.Dir, Exec: c.Exec, Env: c.Env,
		Port: r.Port, HealthPath: c.HealthPath, HealthInterval: c.HealthInterval, HealthFailures: c.HealthFailures,
		ReadyTimeout: c.ReadyTimeout, StopGrace: c.StopGrace, Memory: c.Memory, CPU: c.CPU, Fenced: c.Fenced})
}

// Orphans returns the keys of recorded processes that still run and that
// this supervisor does not know: left by a daemon that stopped. Records of
// processes that are gone are cleaned up.
func (s *Supervisor) Orphans() []spec.VersionKey {
	names, _ := filepath.Glob(filepath.Join(s.opts.Root, "run", "*.json"))
	var out []spec.VersionKey
	for _, n := range names {
		key := spec.VersionKey(strings.TrimSuffix(filepath.Base(n), ".json"))
		if _, ok := s.Get(key); ok {
			continue
		}
		r, err := s.readRecord(key)
		if err != nil || r == nil {
			continue
		}
		if !r.live() {
			s.cleanStale(r)
			continue
		}
		out = append(out, key)
	}
	sort.Slice(out, func(a, b int) bool { return out[a] < out[b] })
	return out
}

// killRecorded stops a recorded process that could not be adopted: SIGTERM
// to its group, SIGKILL after grace.
func killRecorded(r *record, grace time.Duration) {
	exited, stop := watchExit(r.PID, r.StartTicks)
	defer stop()
	select {
	case <-exited:
		return
	default:
	}
	_ = unix.Kill(-r.PID, unix.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = unix.Kill(-r.PID, unix.SIGKILL)
		<-exited
	}
}

// cleanStale removes what a process that ended while no daemon watched
// left behind: its record, RUNTIME_DIRECTORY and credentials.
func (s *Supervisor) cleanStale(r *record) {
	if r.CredentialsDir != "" {
		removeCredentialsDir(r.CredentialsDir)
	}
	os.RemoveAll(s.runDir(r.Key))
	s.removeRecord(r.Key)
}

// adopt sets the instance up around a running process: the same
// directories (kept as they are), the log, the notify socket listened on
// again at the same path.
func (i *Instance) adopt(r *record) (*proc, error) {
	s := i.s
	var err error
	if i.cred, err = s.Credential(i.cfg.Service, i.cfg.Owner); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(i.logPath), 0o750); err != nil {
		return nil, err
	}
	if _, err := os.Stat(i.runDir); err != nil {
		return nil, fmt.Errorf("its RUNTIME_DIRECTORY: %w", err)
	}
	if err := i.openLog(); err != nil {
		return nil, err
	}
	// The old daemon's socket file is dead; bind a new one at the same path.
	os.Remove(filepath.Join(i.runDir, "notify"))
	if err := i.listenNotify(); err != nil {
		return nil, err
	}
	if err := i.resolve(); err != nil {
		return nil, err
	}
	if r.CredentialsDir != "" {
		// The directory the process knows stays; a restart after a crash
		// reuses it.
		i.credDir = r.CredentialsDir
		i.env = append(i.env, "CREDENTIALS_DIRECTORY="+r.CredentialsDir)
	}
	// The process is in the group its launch made; a version started
	// before cgroups were used, or on a machine without them, has none,
	// and gets one at its next launch after a crash.
	if h := s.opts.Cgroups; h != nil {
		if g := h.Group(string(i.key)); g.Exists() {
			i.mu.Lock()
			i.cg = g
			i.mu.Unlock()
		} else if err := i.makeGroup(); err != nil {
			return nil, err
		}
	}
	oom := i.readOOMKills()
	i.mu.Lock()
	i.inc++
	i.accepting = true
	i.oomKills = oom
	i.mu.Unlock()
	// If it ends in between, the run loop restarts it as after a crash.
	// Its readiness is the adopter's to wait for (WaitReady), as a start's is.
	return i.track(nil, r.PID, r.StartTicks, r.Started, 0), nil
}

// Recorded returns the config (without credentials) that a recorded,
// still running process of key was started with; false when none runs.
func (s *Supervisor) Recorded(key spec.VersionKey) (Config, bool) {
	r, err := s.readRecord(key)
	if err != nil || r == nil || !r.live() {
		return Config{}, false
	}
	c := r.Config
	return Config{Service: c.Service, Version: c.Version, Owner: c.Owner, Dir: c.Dir, Exec: c.Exec, Env: c.Env,
		Port: r.Port, HealthPath: c.HealthPath, HealthInterval: c.HealthInterval, HealthFailures: c.HealthFailures,
		ReadyTimeout: c.ReadyTimeout, StopGrace: c.StopGrace, Memory: c.Memory, CPU: c.CPU}, true
}
