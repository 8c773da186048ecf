// Package remote reaches a hostel daemon on another machine over SSH, the
// way nixos-rebuild --target-host does: no port besides SSH's. The local
// side runs `ssh HOST hostel dial-stdio`, whose stdin and stdout the remote
// hostel bridges to its daemon's unix socket; the API's HTTP flows through.
package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Environment variables that configure the SSH transport.
const (
	// BinEnv names the hostel binary on the remote machine (default "hostel").
	BinEnv = "HOSTEL_REMOTE_BIN"
	// RootEnv names the remote daemon's root (default: the remote's default).
	RootEnv = "HOSTEL_REMOTE_ROOT"
	// SSHOptsEnv holds extra ssh options, split on spaces; Nix's nix copy
	// reads the same variable, so one setting serves both.
	SSHOptsEnv = "NIX_SSHOPTS"
)

// SSH is a daemon on another machine, reached over SSH.
type SSH struct {
	// Target is [USER@]HOST.
	Target string
	// Bin is the hostel binary on the remote machine.
	Bin string
	// Root is the remote daemon's root; "" means the remote's default.
	Root string
	// Opts are extra ssh options ("-p 2222 -i key").
	Opts []string
}

// FromEnv returns the SSH transport to target configured by the environment.
func FromEnv(target string) SSH {
	s := SSH{Target: target, Bin: os.Getenv(BinEnv), Root: os.Getenv(RootEnv), Opts: strings.Fields(os.Getenv(SSHOptsEnv))}
	if s.Bin == "" {
		s.Bin = "hostel"
	}
	return s
}

// StoreURI is the Nix store of the target, for nix copy --to.
func (s SSH) StoreURI() string { return "ssh://" + s.Target }

// Name says where the daemon is, in messages.
func (s SSH) Name() string {
	if s.Root != "" {
		return "ssh://" + s.Target + s.Root
	}
	return "ssh://" + s.Target
}

// command is the remote command line (ssh hands it to the remote shell).
func (s SSH) command() string {
	cmd := []string{quote(s.Bin), "dial-stdio"}
	if s.Root != "" {
		cmd = append(cmd, "--root", quote(s.Root))
	}
	return strings.Join(cmd, " ")
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Dial opens a connection to the remote daemon's API: an ssh process whose
// stdin and stdout are the connection.
func (s SSH) Dial(ctx context.Context) (net.Conn, error) {
	args := append([]string{"-o", "BatchMode=yes", "-T"}, s.Opts...)
	args = append(args, "--", s.Target, s.command())
	cmd := exec.Command("ssh", args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	// Not cmd.StdoutPipe: Wait, which runs beside the reads, closes that
	// pipe as soon as ssh exits — the answer's last bytes still in it.
	out, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = w
	c := &conn{cmd: cmd, in: in, out: out, target: s.Target, done: make(chan struct{})}
	cmd.Stderr = &c.stderr
	err = cmd.Start()
	w.Close()
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("ssh %s: %w", s.Target, err)
	}
	go func() { c.waitErr = cmd.Wait(); close(c.done) }()
	return c, nil
}

// conn is a net.Conn over an ssh process's stdio.
type conn struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	out     io.ReadCloser
	target  string
	stderr  lockedBuffer
	done    chan struct{}
	waitErr error
	once    sync.Once
}

var _ net.Conn = (*conn)(nil)

// Read reads from ssh's stdout; when ssh failed before saying anything, its
// stderr is the error.
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.out.Read(p)
	if n == 0 && errors.Is(err, io.EOF) {
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
		}
		if msg := strings.TrimSpace(c.stderr.String()); msg != "" {
			return 0, fmt.Errorf("ssh %s: %s", c.target, msg)
		}
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) { return c.in.Write(p) }

// Close ends the ssh process: closing stdin lets the remote side finish.
func (c *conn) Close() error {
	c.once.Do(func() {
		c.in.Close()
		select {
		case <-c.done:
		case <-time.After(2 * time.Second):
			c.cmd.Process.Kill()
			<-c.done
		}
		c.out.Close()
	})
	return nil
}

func (c *conn) LocalAddr() net.Addr                { return addr("local") }
func (c *conn) RemoteAddr() net.Addr               { return addr(c.target) }
func (c *conn) SetDeadline(t time.Time) error      { return nil }
func (c *conn) SetReadDeadline(t time.Time) error  { return nil }
func (c *conn) SetWriteDeadline(t time.Time) error { return nil }

type addr string

func (a addr) Network() string { return "ssh" }
func (a addr) String() string  { return string(a) }

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Bridge connects in and out to the daemon's unix socket until the daemon
// closes its side: the remote end of Dial (`hostel dial-stdio`).
func Bridge(socket string, in io.Reader, out io.Writer) error {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return fmt.Errorf("cannot reach the hostel daemon at %s: %w", socket, err)
	}
	defer c.Close()
	go func() {
		io.Copy(c, in)
		c.(*net.UnixConn).CloseWrite()
	}()
	_, err = io.Copy(out, c)
	return err
}
