package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"hostel/internal/spec"
)

// maxRunOnceOutput bounds the output RunOnce keeps (the last bytes).
const maxRunOnceOutput = 64 << 10

// RunOnce runs argv to completion as the service of cfg would run: as the
// service's user, in its package directory, with the environment its
// process gets except where to listen (no PORT, HOST or NOTIFY_SOCKET: a
// one-shot step serves nothing, and apps that check PORT when it is set
// would refuse a made-up one) and a RUNTIME_DIRECTORY of its own that is
// removed afterwards. argv[0] is resolved like cfg.Exec[0], and the other
// arguments' variables substituted like cfg.Exec's. It returns the
// combined stdout and stderr (the last 64 KiB) and an error if the command
// did not exit 0. For one-shot steps such as a release migration.
func (s *Supervisor) RunOnce(ctx context.Context, cfg Config, argv []string) ([]byte, error) {
	cfg.Exec = argv
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	key := cfg.Key()
	// A transient instance under its own key gives the run its own
	// RUNTIME_DIRECTORY and CREDENTIALS_DIRECTORY beside the version's.
	i := newInstance(s, cfg, spec.VersionKey(string(key)+".once"))
	if err := i.makeDirs(); err != nil {
		return nil, err
	}
	defer os.RemoveAll(i.runDir)
	if err := i.resolve(); err != nil { // no notify socket: no NOTIFY_SOCKET
		return nil, err
	}
	i.env = slices.DeleteFunc(i.env, listenVar)
	if err := i.setupCredentials(); err != nil {
		return nil, err
	}
	defer i.removeCredentials()
	args, err := expandArgs(argv, i.env)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	// In a cgroup of its own with the version's limits, as the version
	// runs: a release is the service's code too, and whatever it leaves
	// behind — in its process group or not (setsid) — ends with it.
	if err := i.makeGroup(); err != nil {
		return nil, err
	}
	defer i.removeGroup()
	// Output through a pipe of our own rather than exec's copying: the
	// wait below returns when the command exits, not when the last of
	// what it left behind closes its output.
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(i.path, args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = i.env, i.workDir, w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: i.cred}
	s.opts.Logf("supervisor: %s: running %v once", key, argv)
	cmd, err = startInGroup(cmd, i.cg)
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", key, argv, err)
	}
	out := &tailBuffer{max: maxRunOnceOutput}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(out, r)
	}()
	// killAll ends the command and everything it started: its process
	// group, and with cgroups every process of its group.
	killAll := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if i.cg != nil {
			i.cg.Kill()
		}
	}
	exited := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			killAll()
		case <-exited:
		}
	}()
	err = cmd.Wait()
	close(exited)
	killAll() // what it left behind
	select {
	case <-copied:
	case <-time.After(time.Second):
		// Without cgroups a process that left its group may still hold
		// the output: stop reading.
		r.Close()
		<-copied
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return out.Bytes(), fmt.Errorf("%s: %v: %w", key, argv, err)
	}
	return out.Bytes(), nil
}

// listenVar reports whether kv (NAME=value) says where a service listens.
func listenVar(kv string) bool {
	name, _, _ := strings.Cut(kv, "=")
	return name == "PORT" || name == "HOST"
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf bytes.Buffer
	cut bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
		t.cut = true
	}
	return n, nil
}

// Bytes returns what was kept, marked when the start was cut.
func (t *tailBuffer) Bytes() []byte {
	if t.cut {
		return append([]byte("…\n"), t.buf.Bytes()...)
	}
	return append([]byte(nil), t.buf.Bytes()...)
}
