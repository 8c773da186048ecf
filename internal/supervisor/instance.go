package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"hostel/internal/cgroup"
	"hostel/internal/failpoint"
	"hostel/internal/spec"
)

// Crash policy.
const (
	backoffMin      = 100 * time.Millisecond
	backoffMax      = 10 * time.Second
	crashWindow     = 60 * time.Second // crashes counted within; a ready run this long resets the count
	maxCrashes      = 5                // crashes within crashWindow that make an instance fail
	maxStartCrashes = 5                // crashes before ready allowed; one more fails it
	tailLinesInErr  = 10
)

// Instance is one running version of a service.
type Instance struct {
	s    *Supervisor
	cfg  Config // validated, Port resolved
	key  spec.VersionKey
	addr string

	stateDir, runDir, logPath, notifyPath string
	credDir                               string // CREDENTIALS_DIRECTORY; "" when there are no credentials
	path, workDir                         string
	env                                   []string
	cred                                  *syscall.Credential
	// cg is the version's cgroup; nil without cgroups.
	cg *cgroup.Group
	// oomKills is the group's OOM kill count when the current process
	// started: a higher count when it ends means the kernel killed it.
	oomKills int64

	log        *logFile
	logOut     *os.File      // the log, open for appending: every launch's stdout and stderr
	logWatch   int32         // the log's watch in the supervisor's logWatcher
	logWake    chan struct{} // woken when the log was written to; nil when not watched
	rotDone    chan struct{}
	notify     *net.UnixConn
	notifyDone chan struct{}
	// kick hurries the readiness probes of a process with a health path
	// that said READY=1: its port is about to accept.
	kick chan struct{}

	launched  chan struct{} // closed once Start's first launch has succeeded or failed
	launchErr error         // set before launched is closed
	stopReq   chan struct{} // closed to ask the run loop to stop
	stopOnce  sync.Once
	detachReq chan struct{} // closed to ask the run loop to let go of the process without stopping it
	detachOne sync.Once
	done      chan struct{} // closed when every process and goroutine of the instance has ended

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change, to wake waiters
	state     State
	mark      State
	pid       int
	inc       int  // counts launches; a probe is for one launch
	accepting bool // a process runs whose readiness counts
	ready     bool
	wasReady  bool // some process of the instance has been ready
	restarts  int
	lastErr   string
	lastExit  string
	failure   error
	started   time.Time
	health    *Check // the last check of the health path; nil before one
}

// proc is one launch of the instance's process, or a process adopted from
// a daemon that ran before.
type proc struct {
	cmd        *exec.Cmd // nil for an adopted process, which is not our child
	pid        int
	startTicks uint64 // /proc/PID/stat start time, which tells pid reuse apart
	inc        int
	start      time.Time
	exited     chan struct{} // closed when the leader has exited (not yet reaped)
	stopWatch  func()        // ends the exit watch without the process ending
	stopProbe  context.CancelFunc
	probeDone  chan struct{}
	// sick is closed by the process's checker when it stopped serving
	// (see sicken); sickWhy says how, sickReady whether it had been ready.
	// Both are set before the close.
	sick      chan struct{}
	sickWhy   string
	sickReady bool
}

func newInstance(s *Supervisor, cfg Config, key spec.VersionKey) *Instance {
	return &Instance{
		s: s, cfg: cfg, key: key,
		addr:       net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port)),
		stateDir:   StateDir(s.opts.Root, cfg.Service, cfg.Owner),
		runDir:     s.runDir(key),
		logPath:    s.instanceLog(cfg),
		launched:   make(chan struct{}),
		stopReq:    make(chan struct{}),
		detachReq:  make(chan struct{}),
		done:       make(chan struct{}),
		changed:    make(chan struct{}),
		state:      StateStarting,
		notifyDone: make(chan struct{}),
		kick:       make(chan struct{}, 1),
	}
}

// Addr is where the process listens, "127.0.0.1:PORT".
func (i *Instance) Addr() string { return i.addr }

// Key is the instance's service and version.
func (i *Instance) Key() spec.VersionKey { return i.key }

// Config returns the config the instance runs with, its port resolved.
func (i *Instance) Config() Config {
	c := i.cfg
	c.Env = cloneEnv(c.Env)
	c.Exec = append([]string(nil), c.Exec...)
	return c
}

// Status returns a snapshot of the instance.
func (i *Instance) Status() Status {
	var use cgroup.Usage
	i.mu.Lock()
	cg, log := i.cg, i.log
	i.mu.Unlock()
	var dropped int64
	if log != nil {
		dropped = log.droppedBytes()
	}
	if cg != nil {
		use, _ = cg.Usage() // a group already removed reads as nothing used
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	st := i.state
	if i.mark != "" && (st == StateRunning || st == StateStarting) {
		st = i.mark
	}
	var health *Check
	if i.health != nil {
		c := *i.health
		health = &c
	}
	return Status{
		Service: i.cfg.Service, Version: i.cfg.Version, Key: i.key,
		State: st, PID: i.pid, Port: i.cfg.Port, Ready: i.ready,
		Restarts: i.restarts, LastError: i.lastErr, LastExit: i.lastExit, Started: i.started,
		LogPath: i.logPath, LogDropped: dropped,
		MemoryBytes: use.MemoryBytes, CPUSeconds: use.CPUSeconds, OOMKills: use.OOMKills, Health: health,
	}
}

// WaitReady blocks until the process is ready, its ReadyTimeout (counted from
// this call) passes, it fails for good, it is stopped, or ctx ends. Errors for
// a process that never got ready end with the last lines of its log.
func (i *Instance) WaitReady(ctx context.Context) error {
	t := time.NewTimer(i.cfg.ReadyTimeout)
	defer t.Stop()
	for {
		i.mu.Lock()
		ready, state, failure, changed := i.ready, i.state, i.failure, i.changed
		i.mu.Unlock()
		switch {
		case ready:
			return nil
		case state == StateFailed:
			return failure
		case state == StateStopped:
			return fmt.Errorf("%s: %w before it was ready", i.key, ErrStopped)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for ready: %w", i.key, ctx.Err())
		case <-t.C:
			return fmt.Errorf("%s: %w after %v%s%s", i.key, ErrNotReady, i.cfg.ReadyTimeout, i.listenHint(), i.logTail())
		}
	}
}

// listenHint says, after ": ", where the running process listens when
// that is not where it is probed (wrongListen); "" otherwise.
func (i *Instance) listenHint() string {
	i.mu.Lock()
	pid := i.pid
	i.mu.Unlock()
	if pid == 0 {
		return ""
	}
	if w := wrongListen(pid, i.cfg.Port); w != "" {
		return ": " + w
	}
	return ""
}

func (i *Instance) logTail() string {
	t := tailLines(i.logPath, tailLinesInErr)
	if t == "" {
		return ""
	}
	return "; last lines of " + i.logPath + ":\n" + t
}

func (i *Instance) hasFailed() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.state == StateFailed
}

func (i *Instance) requestStop() { i.stopOnce.Do(func() { close(i.stopReq) }) }

// broadcastLocked wakes every WaitReady. i.mu must be held.
func (i *Instance) broadcastLocked() {
	close(i.changed)
	i.changed = make(chan struct{})
}

// setup prepares the user, directories, log and notify socket, and launches
// the first process. On error everything it made is undone.
func (i *Instance) setup() (p *proc, err error) {
	defer func() {
		if err != nil {
			i.teardown()
		}
	}()
	if err := i.makeDirs(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(i.logPath), 0o750); err != nil {
		return nil, err
	}
	if err := i.openLog(); err != nil {
		return nil, err
	}
	if err := i.listenNotify(); err != nil {
		return nil, err
	}
	if err := i.resolve(); err != nil {
		return nil, err
	}
	if err := i.setupCredentials(); err != nil {
		return nil, err
	}
	if err := i.makeGroup(); err != nil {
		return nil, err
	}
	// The first launch's readiness is its starter's to wait for (WaitReady).
	return i.launch(0)
}

// makeGroup makes the version's cgroup with its limits, when the
// supervisor has cgroups.
func (i *Instance) makeGroup() error {
	h := i.s.opts.Cgroups
	if h == nil {
		return nil
	}
	g := h.Group(string(i.key))
	// A group left by a daemon that died holds no process of ours that
	// runs (the caller adopts those instead): empty it and start clean.
	if g.Exists() {
		if err := errors.Join(g.Kill(), g.Remove()); err != nil {
			return err
		}
	}
	if err := g.Create(cgroup.Limits{Memory: i.cfg.Memory, CPU: i.cfg.CPU}); err != nil {
		g.Remove()
		return err
	}
	i.mu.Lock()
	i.cg = g // Status reads it from other goroutines
	i.mu.Unlock()
	return nil
}

// readOOMKills reads the group's OOM kill count; 0 without a group.
func (i *Instance) readOOMKills() int64 {
	if i.cg == nil {
		return 0
	}
	u, err := i.cg.Usage()
	if err != nil {
		return 0
	}
	return u.OOMKills
}

// removeGroup kills whatever is left in the version's cgroup and removes it.
func (i *Instance) removeGroup() {
	if i.cg == nil {
		return
	}
	if err := errors.Join(i.cg.Kill(), i.cg.Remove()); err != nil {
		i.s.opts.Logf("supervisor: %s: removing its cgroup: %v", i.key, err)
	}
}

// makeDirs makes sure of the service's user (when services run as their
// own users), its STATE_DIRECTORY, and a fresh RUNTIME_DIRECTORY.
func (i *Instance) makeDirs() (err error) {
	if i.cred, err = i.s.Credential(i.cfg.Service, i.cfg.Owner); err != nil {
		return err
	}
	for _, d := range []string{filepath.Dir(i.stateDir), filepath.Dir(i.runDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := i.ownedDir(i.stateDir); err != nil {
		return err
	}
	// A run directory left by a daemon that died is stale: start clean.
	if err := os.RemoveAll(i.runDir); err != nil {
		return err
	}
	return i.ownedDir(i.runDir)
}

// resolve sets what a launch needs: the program's path, the working
// directory (the package, else STATE_DIRECTORY) and the environment.
func (i *Instance) resolve() (err error) {
	if i.path, err = ResolveExec(i.cfg.Dir, i.cfg.Exec[0]); err != nil {
		return err
	}
	i.workDir = i.cfg.Dir
	if i.workDir == "" {
		i.workDir = i.stateDir
	}
	i.env = environ(i.cfg, i.stateDir, i.runDir, i.notifyPath)
	return nil
}

// ownedDir makes dir exist with mode 0700, owned by the service's user.
func (i *Instance) ownedDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	if i.cred != nil {
		return os.Chown(dir, int(i.cred.Uid), int(i.cred.Gid))
	}
	return nil
}

// listenNotify opens the NOTIFY_SOCKET and reads it until teardown.
func (i *Instance) listenNotify() error {
	i.notifyPath = filepath.Join(i.runDir, "notify")
	if len(i.notifyPath) >= len(unix.RawSockaddrUnix{}.Path) {
		return fmt.Errorf("notify socket path %s is too long for a unix socket; use a shorter root", i.notifyPath)
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: i.notifyPath, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	if i.cred != nil {
		if err := os.Chown(i.notifyPath, int(i.cred.Uid), int(i.cred.Gid)); err != nil {
			c.Close()
			return fmt.Errorf("notify socket: %w", err)
		}
	}
	i.notify = c
	go func() {
		defer close(i.notifyDone)
		buf := make([]byte, 4096)
		for {
			n, _, err := c.ReadFromUnix(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" {
					i.notified()
				}
			}
		}
	}()
	return nil
}

// launch starts one process writing to the log, and tracks it. A
// process not ready within readyWithin (0: no limit) is unhealthy.
func (i *Instance) launch(readyWithin time.Duration) (*proc, error) {
	args, err := expandArgs(i.cfg.Exec, i.env)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path:        i.path,
		Args:        args,
		Env:         i.env,
		Dir:         i.workDir,
		Stdout:      i.logOut,
		Stderr:      i.logOut,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Credential: i.cred},
	}
	oom := i.readOOMKills()
	i.mu.Lock()
	i.inc++
	i.accepting = true // READY=1 may arrive before Start returns
	i.oomKills = oom
	i.mu.Unlock()
	failpoint.Hit("launch-before-start")
	cmd, err = startInGroup(cmd, i.cg)
	if err != nil {
		i.mu.Lock()
		i.accepting = false
		i.mu.Unlock()
		return nil, err
	}
	// Unreaped, the child's pid cannot be reused: its start time is its own.
	ticks, _ := procStartTicks(cmd.Process.Pid)
	failpoint.Hit("launch-after-start")
	return i.track(cmd, cmd.Process.Pid, ticks, time.Now(), readyWithin), nil
}

// record writes the record of launch p. The run loop writes it, first
// thing after each launch: after the process started (a daemon killed in
// between leaves a process no record knows, which the next daemon finds
// and stops), and before the loop may stop the process or let it go, so
// that a stop's removal of the record comes after it and a detach leaves
// it for adoption. Start does not wait for it: a wake releases its held
// requests the moment the version is ready, not after an fsync on a
// busy disk.
func (i *Instance) record(p *proc) {
	if err := i.s.writeRecord(i, p); err != nil {
		i.s.opts.Logf("supervisor: %s: writing its record: %v", i.key, err)
	}
	failpoint.Hit("launch-after-record")
}

// track watches a started or adopted process: its exit, and through its
// checker (watch) its readiness and health. A process not ready within
// readyWithin (0: no limit) is unhealthy.
func (i *Instance) track(cmd *exec.Cmd, pid int, ticks uint64, started time.Time, readyWithin time.Duration) *proc {
	i.mu.Lock()
	inc := i.inc
	i.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{
		cmd: cmd, pid: pid, startTicks: ticks, inc: inc, start: started,
		stopProbe: cancel, probeDone: make(chan struct{}), sick: make(chan struct{}),
	}
	// Watch without reaping: while the leader is a zombie its pid still
	// names the process group, so killing the group after it exited cannot
	// hit an unrelated group that reused the number.
	p.exited, p.stopWatch = watchExit(pid, ticks)
	i.mu.Lock()
	i.pid, i.started = p.pid, p.start
	switch {
	case i.ready: // READY=1 may arrive before the process is tracked
		i.state = StateRunning
	case i.state != StateUnhealthy: // unhealthy until a process is ready again
		i.state = StateStarting
	}
	i.broadcastLocked()
	i.mu.Unlock()

	go i.watch(ctx, p, readyWithin)
	return p
}

// run supervises launches until the instance is stopped or fails.
func (i *Instance) run(p *proc) {
	defer close(i.done)
	if p != nil && p.cmd != nil { // launched, not adopted: its record is to write
		i.record(p)
	}
	var (
		crashes       []time.Time
		consecutive   int
		startCrashes  int
		launchFailure error
	)
	for {
		var why string
		var ranFor time.Duration
		wasReady, sick := false, false
		if p != nil {
			lapsed, unwatch := i.fenceLapsed()
			select {
			case <-lapsed:
				unwatch()
				i.terminateFenced(p)
				if !i.awaitFence() {
					return
				}
				p, launchFailure = i.relaunch()
				continue
			case <-p.exited:
				wasReady = i.isReadyNow()
				why = i.ended(i.reap(p))
				ranFor = time.Since(p.start)
			case <-p.sick:
				// It runs but does not serve: it is stopped as a stop
				// would, then counted and restarted as a crash is, so a
				// version that never recovers ends failed.
				wasReady, why, sick = p.sickReady, p.sickWhy, true
				i.terminate(p)
				ranFor = time.Since(p.start)
				i.mu.Lock()
				i.lastExit = "unhealthy"
				i.mu.Unlock()
			case <-i.stopReq:
				unwatch()
				i.terminate(p)
				i.finish(StateStopped, "")
				return
			case <-i.detachReq:
				unwatch()
				i.release(p)
				return
			}
			unwatch()
		} else {
			why = launchFailure.Error()
		}
		select {
		case <-i.stopReq:
			i.finish(StateStopped, "")
			return
		case <-i.detachReq:
			i.release(nil)
			return
		default:
		}

		now := time.Now()
		if ranFor > crashWindow && wasReady {
			crashes, consecutive, startCrashes = nil, 0, 0
		}
		kept := crashes[:0]
		for _, c := range crashes {
			if now.Sub(c) < crashWindow {
				kept = append(kept, c)
			}
		}
		crashes = append(kept, now)
		consecutive++
		if !wasReady {
			startCrashes++
		}
		if len(crashes) >= maxCrashes || startCrashes > maxStartCrashes {
			i.s.opts.Logf("supervisor: %s: %s; failed after %d crashes", i.key, why, len(crashes))
			i.finish(StateFailed, why)
			return
		}
		delay := min(backoffMin<<(consecutive-1), backoffMax)
		i.s.opts.Logf("supervisor: %s: %s; restarting in %v", i.key, why, delay)
		i.mu.Lock()
		i.lastErr = why
		if !sick {
			i.state = StateStarting
		}
		i.broadcastLocked()
		i.mu.Unlock()

		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-i.stopReq:
			t.Stop()
			i.finish(StateStopped, "")
			return
		case <-i.detachReq:
			t.Stop()
			i.release(nil)
			return
		}
		// A process that ended while the fence lapsed (stopped from
		// outside: KillFenced) starts again once it holds.
		if !i.awaitFence() {
			return
		}
		// Counted before the launch, which may already report ready.
		i.mu.Lock()
		i.restarts++
		i.mu.Unlock()
		p, launchFailure = i.relaunch()
	}
}

// relaunch launches the instance's next process and records it. Nobody
// waits for it to be ready: its checker gives it as long as a start has.
func (i *Instance) relaunch() (*proc, error) {
	p, err := i.launch(i.cfg.ReadyTimeout)
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	i.record(p)
	return p, nil
}

func (i *Instance) isReadyNow() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.ready
}

func exitReason(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// ended records how a process ended (err from its reaping) and returns why,
// for messages: "oom" when its cgroup counted a new OOM kill, which the
// service's log is told too, since the process itself could not say.
func (i *Instance) ended(err error) string {
	why, exit := exitReason(err), exitWords(err)
	if i.cg != nil && i.readOOMKills() > i.oomKills {
		why, exit = "oom: killed by the kernel for exceeding its memory limit", "oom"
		if i.logOut != nil {
			fmt.Fprintf(i.logOut, "hostel: %s was killed by the kernel for exceeding its memory limit of %d bytes\n", i.key, i.cfg.Memory)
		}
	}
	i.mu.Lock()
	i.lastExit = exit
	i.mu.Unlock()
	return why
}

// exitWords says how a process ended in the contract's words: "exit 1",
// "signal 9"; "" when that is not known (an adopted process).
func exitWords(err error) string {
	var ee *exec.ExitError
	if err == nil {
		return "exit 0"
	}
	if !errors.As(err, &ee) {
		return ""
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
		return ""
	case ws.Signaled():
		return "signal " + strconv.Itoa(int(ws.Signal()))
	default:
		return "exit " + strconv.Itoa(ws.ExitStatus())
	}
}

// terminate sends SIGTERM to the group, SIGKILL after the grace period,
// and reaps.
func (i *Instance) terminate(p *proc) {
	i.s.opts.Logf("supervisor: %s: stopping pid %d", i.key, p.pid)
	_ = syscall.Kill(-p.pid, syscall.SIGTERM)
	t := time.NewTimer(i.cfg.StopGrace)
	select {
	case <-p.exited:
		t.Stop()
	case <-t.C:
		i.s.opts.Logf("supervisor: %s: pid %d ignored SIGTERM for %v; killing", i.key, p.pid, i.cfg.StopGrace)
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.exited
	}
	i.reap(p)
}

// reap kills what is left of the exited leader's group, collects the
// leader's status and ends the launch's goroutines.
func (i *Instance) reap(p *proc) error {
	// The leader is gone; anything left in its group is an orphan, and
	// so is anything left in its cgroup (a process that left the group).
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	if i.cg != nil {
		if err := i.cg.Kill(); err != nil {
			i.s.opts.Logf("supervisor: %s: %v", i.key, err)
		}
	}
	var err error
	if p.cmd != nil {
		err = p.cmd.Wait()
	} else {
		// Not our child: init reaps it, and its status is not ours to know.
		err = errors.New("exited (adopted process: exit status unknown)")
	}
	p.stopWatch()
	p.stopProbe()
	<-p.probeDone
	i.mu.Lock()
	i.pid, i.accepting, i.ready = 0, false, false
	i.broadcastLocked()
	i.mu.Unlock()
	return err
}

// finish releases the instance's resources and records its final state.
func (i *Instance) finish(st State, why string) {
	i.teardown()
	i.removeGroup()
	var failure error
	if st == StateFailed {
		failure = fmt.Errorf("%s: %w: %s%s", i.key, ErrFailed, why, i.logTail())
	}
	i.mu.Lock()
	i.state, i.pid, i.ready, i.accepting = st, 0, false, false
	if why != "" {
		i.lastErr = why
	}
	i.failure = failure
	wasReady := i.wasReady
	i.broadcastLocked()
	i.mu.Unlock()
	i.s.removeRecord(i.key)
	if !wasReady {
		i.dropLogIfDiskFull()
	}
	if st == StateStopped {
		i.s.opts.Logf("supervisor: %s: stopped", i.key)
	}
}

// dropLogIfDiskFull removes the log of a version that never got ready
// when the disk it is on is (nearly) full: such a log is often what filled
// it (a crash loop printing the same error), the version never served, and
// the error its start returned already carries the log's last lines.
// Keeping it would make the next deploy fail for want of space.
func (i *Instance) dropLogIfDiskFull() {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(i.logPath), &st); err != nil {
		return
	}
	if free := int64(st.Bavail) * int64(st.Bsize); free >= i.s.opts.LogMaxBytes {
		return
	}
	if err := removeLogs(i.logPath); err != nil {
		i.s.opts.Logf("supervisor: %s: removing its log on a full disk: %v", i.key, err)
		return
	}
	i.s.opts.Logf("supervisor: %s: removed its log: the disk is full and the version never got ready", i.key)
}

// teardown closes the notify socket and log and removes RUNTIME_DIRECTORY.
func (i *Instance) teardown() {
	if i.notify != nil {
		i.notify.Close()
		<-i.notifyDone
		i.notify = nil
	}
	i.closeLog()
	i.removeCredentials()
	if err := os.RemoveAll(i.runDir); err != nil {
		i.s.opts.Logf("supervisor: %s: removing %s: %v", i.key, i.runDir, err)
	}
}
