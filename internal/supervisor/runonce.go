package supervisor

import (
	"bytes"
	"context"
	"fmt"
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
// removed afterwards. argv[0] is resolved like cfg.Exec[0]. It returns the
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
	out := &tailBuffer{max: maxRunOnceOutput}
	cmd := exec.CommandContext(ctx, i.path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = i.env, i.workDir, out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: i.cred}
	// On cancel, end the whole group, not just the leader.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	s.opts.Logf("supervisor: %s: running %v once", key, argv)
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // orphans of the group
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
