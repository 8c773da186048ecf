package etcd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"hostel/internal/atomicfile"
	"hostel/internal/store"
)

// Member is an etcd member run inside this process (hostel serve
// --etcd-embed): alone, a single machine's store on etcd without an etcd
// to run beside it (StartMember); or one of a cluster's, each member in a
// daemon, so that three daemons are a cluster with nothing else to run
// (StartClusterMember, --etcd-peers).
type Member struct {
	e         *embed.Etcd
	endpoints []string
	tls       *tls.Config
	closing   *atomic.Bool
}

// ClientSocket is where a member with data in dir answers clients.
func ClientSocket(dir string) string { return filepath.Join(dir, "client.sock") }

// clusterFile, in a cluster member's data directory, says which member
// of which cluster the data is (clusterRecord): a member keeps its name
// and peer URL, and a single member's data is not a cluster member's.
const clusterFile = "cluster.json"

// clusterRecord is what clusterFile holds.
type clusterRecord struct {
	Name    string `json:"name"`
	PeerURL string `json:"peer_url"`
	// Initial is the list of members the cluster started with.
	Initial string `json:"initial_cluster"`
}

// StartMember starts a member with its data in dir (made 0700), answering
// clients only on the unix socket ClientSocket(dir): no TCP port that
// another user of the machine — a service — could reach, and no peer
// port at all. It keeps the last store.LogRevisions revisions of history
// (revision auto-compaction). logf gets etcd's warnings and errors. It
// refuses a dir that holds a cluster member's data.
func StartMember(dir string, logf func(string, ...any)) (*Member, error) {
	if err := makeDir(dir); err != nil {
		return nil, err
	}
	if rec, err := readCluster(dir); err != nil {
		return nil, err
	} else if rec != nil && initialized(dir) {
		return nil, fmt.Errorf("%s holds member %s of a cluster (%s): start it with --etcd-peers, as node %s", dir, rec.Name, rec.Initial, rec.Name)
	} else if rec != nil {
		// A cluster member's first start that never made its data:
		// the data this start makes is a single member's.
		if err := os.Remove(filepath.Join(dir, clusterFile)); err != nil {
			return nil, err
		}
	}
	closing := &atomic.Bool{}
	cfg := baseConfig(dir, logf, closing)
	cfg.Name = "hostel"
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
	m := &Member{endpoints: []string{"unix://" + client.Path}, closing: closing}
	if err := m.start(context.Background(), cfg, time.Minute, nil); err != nil {
		return nil, fmt.Errorf("etcd member in %s: %w", dir, err)
	}
	return m, nil
}

// StartClusterMember starts member c.Name of the cluster c.Peers, its
// data in dir (made 0700): it listens for its peers on its peer URL and
// for clients on ClientURL of it, both with c's certificate on https://,
// accepting only peers and clients with a certificate of c's CA. The
// first start makes the member with c.Peers as the initial cluster; a
// later one (dir holds its data) rejoins the cluster with it, whatever
// c.Peers says of the others then — the cluster's membership is its own
// after its start — but refuses a dir that holds another member's data,
// or a single member's (StartMember). It returns once the member serves,
// which takes a quorum of the cluster (two of three): until then it
// waits, saying so every waitLog, or until ctx ends. The daemon's client
// talks to this member alone (Endpoints, TLS).
func StartClusterMember(ctx context.Context, dir string, c Cluster, logf func(string, ...any)) (*Member, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	self, _ := c.self()
	tc, err := c.clientTLS()
	if err != nil {
		return nil, err
	}
	if err := makeDir(dir); err != nil {
		return nil, err
	}
	rec := clusterRecord{Name: c.Name, PeerURL: self.URL.String(), Initial: c.initialCluster()}
	if err := claimDir(dir, rec); err != nil {
		return nil, err
	}
	closing := &atomic.Bool{}
	cfg := baseConfig(dir, logf, closing)
	cfg.Name = c.Name
	client := ClientURL(self.URL)
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{self.URL}, []url.URL{self.URL}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.InitialCluster, cfg.InitialClusterToken = rec.Initial, c.token()
	cfg.ClusterState = embed.ClusterStateFlagNew
	// Clients speak gRPC (etcd's v3 API): no JSON gateway beside it.
	cfg.EnableGRPCGateway = false
	if c.secure() {
		info := transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile, TrustedCAFile: c.CAFile, ClientCertAuth: true}
		cfg.PeerTLSInfo, cfg.ClientTLSInfo = info, info
	}
	// A member that takes the raft's lead renews every lease for its
	// whole TTL plus an election timeout, as it cannot know when the
	// last leader renewed each: a node whose member led the raft and
	// died is taken for alive that much longer than another (its
	// instances fail over later), and renewals of the others' leases
	// wait for the election. So elections are quicker than etcd's own
	// (a heartbeat every 100 ms, an election after 1–2 s without one):
	// a heartbeat every 50 ms, an election after 0.5–1 s — ten
	// heartbeats missed: ample for machines on one network, a few
	// milliseconds apart, not for members continents apart. They make
	// the shortest lease 1 s (TestClusterShortestLease).
	cfg.TickMs, cfg.ElectionMs = clusterTick, clusterElection
	m := &Member{endpoints: []string{client.String()}, tls: tc, closing: closing}
	waiting := func(waited time.Duration) {
		if logf == nil {
			return
		}
		logf("etcd member %s: waiting for the other members (%s) for %s: a cluster of %d serves once %d are up",
			c.Name, rec.Initial, waited.Round(time.Second), len(c.Peers), len(c.Peers)/2+1)
	}
	if err := m.start(ctx, cfg, 0, waiting); err != nil {
		return nil, fmt.Errorf("etcd member %s in %s: %w", c.Name, dir, err)
	}
	return m, nil
}

// The raft's ticks of a cluster's members (StartClusterMember).
const (
	clusterTick     = 50  // ms between the leader's heartbeats
	clusterElection = 500 // ms without one before a member calls an election (to twice that)
)

// waitLog is how often a member that waits for its cluster says so.
const waitLog = 10 * time.Second

// makeDir makes dir, 0700 whatever it was.
func makeDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// initialized reports whether dir holds a member's data (as etcd tells:
// its write-ahead log).
func initialized(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "member", "wal"))
	return err == nil
}

// readCluster reads dir's clusterFile; nil if there is none.
func readCluster(dir string) (*clusterRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, clusterFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var rec clusterRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, clusterFile), err)
	}
	return &rec, nil
}

// claimDir checks that dir is member rec's to start: empty (it records
// rec there), or holding that member's data.
func claimDir(dir string, rec clusterRecord) error {
	old, err := readCluster(dir)
	if err != nil {
		return err
	}
	if !initialized(dir) {
		b, _ := json.Marshal(rec)
		return atomicfile.WriteFile(filepath.Join(dir, clusterFile), append(b, '\n'), 0o600)
	}
	switch {
	case old == nil:
		return fmt.Errorf("%s holds a single member's data (--etcd-embed without --etcd-peers), not a cluster member's: a cluster's members start empty", dir)
	case old.Name != rec.Name || old.PeerURL != rec.PeerURL:
		return fmt.Errorf("%s holds member %s at %s, not %s at %s: a member keeps its name (--node) and its peer URL", dir, old.Name, old.PeerURL, rec.Name, rec.PeerURL)
	}
	return nil
}

// baseConfig is what every member of hostel's is: data in dir, history
// compacted to store.LogRevisions, etcd's errors to logf until the
// member closes.
func baseConfig(dir string, logf func(string, ...any), closing *atomic.Bool) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.AutoCompactionMode = embed.CompactorModeRevision
	cfg.AutoCompactionRetention = strconv.Itoa(store.LogRevisions)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(zapcore.NewCore(
		zapcore.NewConsoleEncoder(zapcore.EncoderConfig{LevelKey: "level", MessageKey: "msg",
			EncodeLevel: zapcore.LowercaseLevelEncoder, ConsoleSeparator: " "}),
		zapcore.AddSync(logWriter{logf, closing}), zapcore.ErrorLevel)))
	return cfg
}

// start starts etcd with cfg and waits until it serves: at most limit
// (0: no limit), until ctx ends, or until etcd fails. waiting, if not
// nil, is called every waitLog meanwhile.
func (m *Member) start(ctx context.Context, cfg *embed.Config, limit time.Duration, waiting func(time.Duration)) error {
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		m.closing.Store(true)
		// Close waits for the client servers, which start once the
		// member is ready — never, for one without a quorum — unless
		// the server stops first.
		e.Server.HardStop()
		e.Close()
		return err
	}
	var deadline <-chan time.Time
	if limit > 0 {
		deadline = time.After(limit)
	}
	tick := time.NewTicker(waitLog)
	defer tick.Stop()
	t0 := time.Now()
	for {
		select {
		case <-e.Server.ReadyNotify():
			m.e = e
			return nil
		case err := <-e.Err():
			return fail(err)
		case <-ctx.Done():
			return fail(fmt.Errorf("not ready: %w", ctx.Err()))
		case <-deadline:
			return fail(fmt.Errorf("not ready after %s", limit))
		case <-tick.C:
			if waiting != nil {
				waiting(time.Since(t0))
			}
		}
	}
}

// Endpoints are the URLs the daemon's client reaches the cluster at: the
// member's unix socket, or a cluster member's own client URL — not every
// member's. The member is in the daemon's process: it is frozen, killed
// or cut off with the daemon, never without it, and passes on to the
// others what they must answer (a write or a lease's renewal to the
// raft's leader, a linearizable read's index from it). A client of
// every member would also send requests to a member frozen or cut off
// without closing its connections, which holds them until a gRPC
// keep-alive ping goes unanswered, up to 12 s (keepAlive,
// TestClusterLeavesFrozenMember); raft leaves such a member within its
// election timeout (1 s).
func (m *Member) Endpoints() []string { return m.endpoints }

// TLS is the client's TLS configuration for Endpoints: this member's
// certificate, trusting the cluster's CA; nil without TLS.
func (m *Member) TLS() *tls.Config { return m.tls }

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
