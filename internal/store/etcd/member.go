package etcd

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"hostel/internal/store"
)

// Member is an etcd member run inside this process: a single machine's
// store on etcd without an etcd to run beside it (hostel serve
// --etcd-embed). It is the only member; a cluster's peers come later.
type Member struct {
	e       *embed.Etcd
	socket  string
	closing *atomic.Bool
}

// ClientSocket is where a member with data in dir answers clients.
func ClientSocket(dir string) string { return filepath.Join(dir, "client.sock") }

// StartMember starts a member with its data in dir (made 0700), answering
// clients only on the unix socket ClientSocket(dir): no TCP port that
// another user of the machine — a service — could reach, and no peer
// port at all. It keeps the last store.LogRevisions revisions of history
// (revision auto-compaction). logf gets etcd's warnings and errors.
func StartMember(dir string, logf func(string, ...any)) (*Member, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	closing := &atomic.Bool{}
	cfg := embed.NewConfig()
	cfg.Name = "hostel"
	cfg.Dir = dir
	client := url.URL{Scheme: "unix", Path: ClientSocket(dir)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	// A single member needs no peer listener; the advertised peer URL
	// only names the member in the cluster's membership.
	cfg.ListenPeerUrls = nil
	cfg.AdvertisePeerUrls = []url.URL{{Scheme: "unix", Path: filepath.Join(dir, "peer.sock")}}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Alone, the member elects itself at once: shorter ticks start it
	// sooner, and let leases be as short as a second.
	cfg.TickMs, cfg.ElectionMs = 50, 500
	cfg.AutoCompactionMode = embed.CompactorModeRevision
	cfg.AutoCompactionRetention = strconv.Itoa(store.LogRevisions)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(zapcore.NewCore(
		zapcore.NewConsoleEncoder(zapcore.EncoderConfig{LevelKey: "level", MessageKey: "msg",
			EncodeLevel: zapcore.LowercaseLevelEncoder, ConsoleSeparator: " "}),
		zapcore.AddSync(logWriter{logf, closing}), zapcore.ErrorLevel)))
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd member in %s: %w", dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcd member in %s: %w", dir, err)
	case <-time.After(time.Minute):
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcd member in %s: not ready after a minute", dir)
	}
	return &Member{e: e, socket: client.Path, closing: closing}, nil
}

// Endpoints are the URLs a client reaches the member at.
func (m *Member) Endpoints() []string { return []string{"unix://" + m.socket} }

// Close stops the member; its data stays.
func (m *Member) Close() error {
	if m == nil {
		return nil
	}
	m.closing.Store(true) // etcd logs its listeners closing as errors
	m.e.Close()
	select {
	case err := <-m.e.Err():
		if err != nil && !errors.Is(err, os.ErrClosed) {
			return err
		}
	default:
	}
	return nil
}

// logWriter hands etcd's log lines to logf, until the member closes.
type logWriter struct {
	logf    func(string, ...any)
	closing *atomic.Bool
}

func (w logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	// A member's first start cannot read a storage version it has not
	// written yet, and says so as an error.
	benign := strings.Contains(line, "failed to update storage version") && strings.Contains(line, "missing term information")
	if !w.closing.Load() && w.logf != nil && !benign {
		w.logf("etcd: %s", line)
	}
	return len(p), nil
}
