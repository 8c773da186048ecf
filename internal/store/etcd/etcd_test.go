package etcd_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"hostel/internal/store"
	"hostel/internal/store/etcd"
	"hostel/internal/store/storetest"
)

// server is an etcd the suite runs against: a member in this process, or
// Debian's etcd binary.
type server interface {
	// config is a client's configuration for it.
	config() etcd.Config
	// restart stops the server and starts it again on its data.
	restart(t *testing.T)
}

// backend is a fresh prefix on a server, for one test of the suite.
type backend struct {
	srv     server
	prefix  string
	handles []*etcd.Store
}

func (b *backend) Open(t *testing.T) store.Store {
	t.Helper()
	cfg := b.srv.config()
	cfg.Prefix = b.prefix
	s, err := etcd.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	b.handles = append(b.handles, s)
	return s
}

func (b *backend) Reopen(t *testing.T) {
	for _, h := range b.handles {
		h.Close()
	}
	b.handles = nil
	b.srv.restart(t)
}

var prefixes atomic.Int64

// fresh returns a backend on srv under a prefix no test used.
func fresh(srv server) func(t *testing.T) storetest.Backend {
	return func(t *testing.T) storetest.Backend {
		return &backend{srv: srv, prefix: fmt.Sprintf("/test-%d/hostel/", prefixes.Add(1))}
	}
}

// member is an etcd member in this process (StartMember, what hostel
// serve --etcd-embed runs).
type member struct {
	dir string
	m   *etcd.Member
	log *lockedBuffer
}

func startMember(t *testing.T) *member {
	t.Helper()
	m := &member{dir: filepath.Join(t.TempDir(), "etcd"), log: &lockedBuffer{}}
	m.start(t)
	t.Cleanup(func() {
		m.m.Close()
		if t.Failed() {
			t.Logf("etcd member log:\n%s", m.log.String())
		}
	})
	return m
}

func (m *member) start(t *testing.T) {
	t.Helper()
	var err error
	if m.m, err = etcd.StartMember(m.dir, m.log.logf); err != nil {
		t.Fatal(err)
	}
}

func (m *member) config() etcd.Config { return etcd.Config{Endpoints: m.m.Endpoints()} }

func (m *member) restart(t *testing.T) {
	t.Helper()
	if err := m.m.Close(); err != nil {
		t.Fatal(err)
	}
	m.start(t)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) logf(format string, args ...any) { fmt.Fprintf(l, format+"\n", args...) }

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestMemberConformance runs the suite against an etcd member in this
// process.
func TestMemberConformance(t *testing.T) {
	storetest.Run(t, fresh(startMember(t)))
}

// binary is Debian's etcd (package etcd-server), run by the test on free
// loopback ports in a temporary directory.
type binary struct {
	dir          string
	client, peer int
	cmd          *exec.Cmd
	exited       chan struct{}
	log          *lockedBuffer
}

func startBinary(t *testing.T) *binary {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		if os.Getenv("HOSTEL_REQUIRE_ETCD") != "" {
			t.Fatal("etcd is not installed (apt-get install etcd-server)")
		}
		t.Skip("etcd is not installed (apt-get install etcd-server)")
	}
	b := &binary{dir: t.TempDir(), log: &lockedBuffer{}}
	b.client, b.peer = freePort(t), freePort(t)
	b.start(t)
	t.Cleanup(func() {
		b.stop(t)
		if t.Failed() {
			t.Logf("etcd log (tail):\n%s", tail(b.log.String(), 8000))
		}
	})
	return b
}

func (b *binary) start(t *testing.T) {
	t.Helper()
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", b.client), fmt.Sprintf("http://127.0.0.1:%d", b.peer)
	b.cmd = exec.Command("etcd", "--name", "t", "--data-dir", filepath.Join(b.dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "t="+peer,
		// Short ticks: the member elects itself sooner at each (re)start.
		"--heartbeat-interval", "10", "--election-timeout", "100")
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b.exited = make(chan struct{})
	go func() { b.cmd.Wait(); close(b.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		cfg := b.config()
		cfg.DialTimeout = time.Second
		s, err := etcd.Open(t.Context(), cfg)
		if err == nil {
			s.Close()
			return
		}
		select {
		case <-b.exited:
			t.Fatalf("etcd exited:\n%s", b.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd does not answer: %v\n%s", err, b.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *binary) stop(t *testing.T) {
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(20 * time.Second):
		b.cmd.Process.Kill()
		<-b.exited
	}
}

func (b *binary) config() etcd.Config {
	return etcd.Config{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", b.client)}}
}

func (b *binary) restart(t *testing.T) {
	b.stop(t)
	b.start(t)
}

// TestBinaryConformance runs the suite against Debian's etcd.
func TestBinaryConformance(t *testing.T) {
	storetest.Run(t, fresh(startBinary(t)))
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
