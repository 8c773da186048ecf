package supervisor

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"hostel/internal/cgroup"
)

// A process must be in its version's cgroup before it runs a single
// instruction of the service: a limit applied after the first fork or
// allocation is a limit a fast process escapes. cgroup v2 gives that
// directly (clone3 with CLONE_INTO_CGROUP, SysProcAttr.CgroupFD). cgroup v1
// has no such call, and Go cannot run code between fork and exec.
//
// On v1 the supervisor has the child stop right after its exec instead:
// it asks to be traced (PTRACE_TRACEME, the last thing Go's child does
// before execve), and a traced process that execs stops with SIGTRAP
// before the first instruction of its new program. The supervisor writes
// its pid to the group's cgroup.procs files and lets it go (PTRACE_DETACH,
// the SIGTRAP suppressed). This costs a wait and two system calls; the
// launch helper below costs a second Go program's start on every launch
// (about as long as a small service's own start: the whole wake path of
// scale to zero, BENCHMARKS.md).
//
// Where tracing is refused (a seccomp profile, Yama's ptrace_scope 3) the
// supervisor starts the daemon's own binary as a launch helper instead
// (the way runc's `runc init` does): still root, it writes its pid to the
// group's cgroup.procs files, drops to the service's user and group, and
// execs the service's program in place, same pid. A failure before the
// exec comes back over a close-on-exec pipe, so Start reports a program
// that cannot be run as it always did, and a pipe closed with nothing in
// it says the exec happened.

// launcherArg0 is the argv[0] that makes this binary the launch helper.
const launcherArg0 = "hostel-launch"

// launchStatusFD is the helper's descriptor for reporting a failure.
const launchStatusFD = 3

// init turns the process into the launch helper when it was started as
// one, before main (or a test binary's TestMain) runs: every binary that
// links the supervisor can serve as its own helper, with no second binary
// to install or find.
func init() {
	if len(os.Args) > 0 && os.Args[0] == launcherArg0 {
		os.Exit(launcherMain(os.Args[1:]))
	}
}

// launcherMain is the helper: args are UID GID N PROCS×N PATH ARGV...,
// with UID "-" to keep the current user.
func launcherMain(args []string) int {
	status := os.NewFile(launchStatusFD, "launch-status")
	fail := func(stage string, err error) int {
		errno, _ := errors.AsType[syscall.Errno](err)
		fmt.Fprintf(status, "%d\n%s\n%v", int(errno), stage, err)
		return 127
	}
	syscall.CloseOnExec(launchStatusFD)
	if len(args) < 4 {
		return fail("launch", errors.New("too few arguments"))
	}
	n, err := strconv.Atoi(args[2])
	if err != nil || n < 0 || len(args) < 3+n+2 {
		return fail("launch", errors.New("bad arguments"))
	}
	procs, path, argv := args[3:3+n], args[3+n], args[3+n+1:]
	if err := cgroup.JoinFiles(procs, os.Getpid()); err != nil {
		return fail("cgroup", err)
	}
	if args[0] != "-" {
		uid, err1 := strconv.Atoi(args[0])
		gid, err2 := strconv.Atoi(args[1])
		if err := errors.Join(err1, err2); err != nil {
			return fail("launch", err)
		}
		// Supplementary groups first, then the group, then the user:
		// after setuid the others can no longer be changed.
		if err := syscall.Setgroups([]int{}); err != nil {
			return fail("setgroups", err)
		}
		if err := syscall.Setgid(gid); err != nil {
			return fail("setgid", err)
		}
		if err := syscall.Setuid(uid); err != nil {
			return fail("setuid", err)
		}
	}
	err = syscall.Exec(path, argv, os.Environ())
	return fail("exec", err)
}

// startInGroup starts cmd with its process already in group g, and returns
// once the service's own program runs (or failed to), with the Cmd that
// started it: cmd, or a copy of it where a first attempt failed (a Cmd is
// started once).
func startInGroup(cmd *exec.Cmd, g *cgroup.Group) (*exec.Cmd, error) {
	if g == nil {
		return cmd, cmd.Start()
	}
	if dir := g.Dir(); dir != "" {
		// v2: the kernel puts the child in the group as it creates it.
		f, err := os.Open(dir)
		if err != nil {
			return cmd, fmt.Errorf("cgroup: %w", err)
		}
		defer f.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(f.Fd())
		return cmd, cmd.Start()
	}
	if traceRefused.Load() {
		return cmd, startHelped(cmd, g)
	}
	helped := &exec.Cmd{Path: cmd.Path, Args: cmd.Args, Env: cmd.Env, Dir: cmd.Dir,
		Stdin: cmd.Stdin, Stdout: cmd.Stdout, Stderr: cmd.Stderr, ExtraFiles: cmd.ExtraFiles}
	attr := *cmd.SysProcAttr
	helped.SysProcAttr = &attr
	err := traceStart(cmd, g)
	if !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EACCES) {
		return cmd, err
	}
	// EPERM (EACCES from some security modules) is tracing refused, or
	// the program's own (a setgid or an exec not allowed): the helper
	// tells them apart, since it reports the program's own error as it
	// always did.
	if err := startHelped(helped, g); err != nil {
		return helped, err
	}
	traceRefused.Store(true)
	return helped, nil
}

// traceRefused is set once tracing a child was refused where the helper
// could start it: later launches go straight to the helper.
var traceRefused atomic.Bool

// traceStart is startTraced; tests stand in a refusal, which this machine
// does not make.
var traceStart = startTraced

// startTraced starts cmd stopped after its exec, puts it in g and lets it
// run. Tracing refused comes back as an error that wraps syscall.EPERM or
// syscall.EACCES.
func startTraced(cmd *exec.Cmd, g *cgroup.Group) error {
	// The tracer is the thread that forked the child: the wait and the
	// ptrace calls must come from it (syscall.SysProcAttr.Ptrace).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd.SysProcAttr.Ptrace = true
	err := cmd.Start()
	cmd.SysProcAttr.Ptrace = false
	if err != nil {
		return err
	}
	pid := cmd.Process.Pid
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(pid, &ws, syscall.WALL, nil)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil:
			syscall.Kill(pid, syscall.SIGKILL)
			cmd.Wait()
			return fmt.Errorf("launching %s: waiting for its exec: %w", cmd.Path, err)
		case ws.Exited() || ws.Signaled():
			// Reaped here: cmd.Wait would find nothing to wait for.
			cmd.Process.Release()
			how := "exit " + strconv.Itoa(ws.ExitStatus())
			if ws.Signaled() {
				how = "signal " + strconv.Itoa(int(ws.Signal()))
			}
			return fmt.Errorf("launching %s: it ended before it ran (%s)", cmd.Path, how)
		case ws.Stopped() && ws.StopSignal() != syscall.SIGTRAP:
			// A signal came before the exec's SIGTRAP was taken: deliver
			// it as it would have been, to a program that has not yet
			// set a handler.
			if err := unix.PtraceCont(pid, int(ws.StopSignal())); err != nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			continue
		}
		break
	}
	// Stopped at its exec: not one instruction of the program has run.
	if err := cgroup.JoinFiles(g.ProcsFiles(), pid); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		unix.PtraceDetach(pid)
		cmd.Wait()
		return fmt.Errorf("launching %s: %w", cmd.Path, err)
	}
	// Detached with no signal: the exec's SIGTRAP is dropped.
	if err := unix.PtraceDetach(pid); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		cmd.Wait()
		return fmt.Errorf("launching %s: letting it run: %w", cmd.Path, err)
	}
	return nil
}

// startHelped starts cmd through the launch helper, which joins g before
// it execs the program.
func startHelped(cmd *exec.Cmd, g *cgroup.Group) error {
	uid, gid := "-", "-"
	if c := cmd.SysProcAttr.Credential; c != nil {
		uid, gid = strconv.Itoa(int(c.Uid)), strconv.Itoa(int(c.Gid))
		cmd.SysProcAttr.Credential = nil // the helper drops to it after joining
	}
	procs := g.ProcsFiles()
	args := append([]string{launcherArg0, uid, gid, strconv.Itoa(len(procs))}, procs...)
	args = append(append(args, cmd.Path), cmd.Args...)
	path := cmd.Path
	cmd.Path, cmd.Args = "/proc/self/exe", args
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd.ExtraFiles = []*os.File{w} // fd 3 in the helper
	err = cmd.Start()
	w.Close()
	if err != nil {
		return err
	}
	msg, _ := io.ReadAll(r)
	if len(msg) == 0 {
		return nil // closed by the exec: the service runs
	}
	cmd.Wait()
	// "ERRNO\nSTAGE\nMESSAGE", as launcherMain writes it.
	parts := strings.SplitN(string(msg), "\n", 3)
	if len(parts) != 3 {
		return fmt.Errorf("launching %s: %s", path, msg)
	}
	errno, _ := strconv.Atoi(parts[0])
	if parts[1] == "exec" && errno != 0 {
		// The error cmd.Start gives for a program that cannot run.
		return &fs.PathError{Op: "fork/exec", Path: path, Err: syscall.Errno(errno)}
	}
	return fmt.Errorf("launching %s: %s: %s", path, parts[1], parts[2])
}
