package etcd_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hostel/internal/store"
	"hostel/internal/store/etcd"
	"hostel/internal/store/etcd/etcdtest"
	"hostel/internal/store/storetest"
)

// cluster is a cluster of three members in this process, as three
// daemons with --etcd-embed --etcd-peers run them.
type cluster struct{ c *etcdtest.Cluster }

func (c cluster) config() etcd.Config    { return c.c.Config() }
func (c cluster) restart(t *testing.T)   { c.c.Restart(t) }
func startCluster(t *testing.T) *cluster { return &cluster{etcdtest.StartCluster(t, 3)} }

// TestClusterConformance runs the suite against three members over
// TLS, each handle a client of all three.
func TestClusterConformance(t *testing.T) {
	storetest.Run(t, fresh(startCluster(t)))
}

// TestClusterLosesMember: each member of three is lost in turn (and
// comes back before the next): meanwhile the store, a client of all
// three, goes on — commits, records — a watch opened before delivers
// every change, whichever member it was on, and a lease granted before
// lives on.
func TestClusterLosesMember(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st := c.Open(t)
	lease, err := st.Grant(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutRecord(ctx, "node", "n1", []byte("up"), 0); err != nil {
		t.Fatal(err)
	}
	events, err := st.Watch(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var from uint64
	for i, m := range c.Members {
		m.Stop(t)
		var want []uint64
		n, err := st.Commit(ctx, storetest.Gen(fmt.Sprintf("v%d", i)), from)
		if err != nil {
			t.Fatalf("commit without %s: %v", m.Name, err)
		}
		from = n
		for j := range 3 {
			rev, err := st.Txn(ctx, store.Write{Kind: "k", Key: fmt.Sprintf("%d-%d", i, j), Value: []byte("v"), Lease: lease.ID()})
			if err != nil {
				t.Fatalf("write without %s: %v", m.Name, err)
			}
			want = append(want, rev)
		}
		for _, rev := range want {
			for {
				select {
				case ev, ok := <-events:
					if !ok || ev.Err != nil {
						t.Fatalf("watch ended without %s: %v", m.Name, ev.Err)
					}
					if ev.Revision > rev {
						t.Fatalf("watch without %s: revision %d came before %d", m.Name, ev.Revision, rev)
					}
					if ev.Revision < rev {
						continue
					}
				case <-time.After(30 * time.Second):
					t.Fatalf("watch without %s: no event of revision %d", m.Name, rev)
				}
				break
			}
		}
		m.Start(t)
	}
	select {
	case <-lease.Done():
		t.Error("the lease ended while members were lost")
	default:
	}
	if recs, err := st.Records(ctx, "k"); err != nil || len(recs) != 9 {
		t.Errorf("records under the lease: %d, %v; want 9", len(recs), err)
	}
}

// TestClusterRejoins: a member stopped while the others write starts
// again on its data and rejoins: it serves what was written without it,
// and it counts in the quorum — with it back, the cluster goes on without
// another member.
func TestClusterRejoins(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st := c.Open(t)
	back := c.Members[2]
	back.Stop(t)
	if _, err := st.PutRecord(ctx, "k", "while-away", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	back.Start(t)
	only := c.Config()
	only.Endpoints = []string{back.Endpoint()}
	alone, err := etcd.Open(ctx, only)
	if err != nil {
		t.Fatal(err)
	}
	defer alone.Close()
	if r, err := alone.Record(ctx, "k", "while-away"); err != nil || string(r.Value) != "v" {
		t.Errorf("the rejoined member's record: %+v, %v", r, err)
	}
	c.Members[0].Stop(t)
	if _, err := alone.PutRecord(ctx, "k", "after", []byte("v"), 0); err != nil {
		t.Errorf("a write with the rejoined member and one other: %v", err)
	}
}

// TestClusterAuthenticated: the members' peer and client ports answer
// only a certificate of the cluster's CA.
func TestClusterAuthenticated(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	m := c.Members[0]
	other := etcdtest.NewCA(t, t.TempDir(), "other-ca")
	otherCert, otherKey := other.Node(t, "stranger", etcdtest.Loopback)
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(c.CA.CertFile)
	pool.AppendCertsFromPEM(ca)
	var self etcd.Peer
	for _, p := range m.Cluster.Peers {
		if p.Name == m.Name {
			self = p
		}
	}
	peerGet := func(cert, key string) error {
		tc := &tls.Config{RootCAs: pool}
		if cert != "" {
			pair, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := hc.Get(self.URL.String() + "/members")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(body), m.Name) {
			return fmt.Errorf("%s: %s", resp.Status, body)
		}
		return nil
	}
	if err := peerGet(m.Cluster.CertFile, m.Cluster.KeyFile); err != nil {
		t.Fatalf("peer port, with a member's certificate: %v", err)
	}
	clientOpen := func(cert, key string) error {
		tc, err := etcd.TLSConfig(cert, key, c.CA.CertFile)
		if err != nil {
			t.Fatal(err)
		}
		s, err := etcd.Open(t.Context(), etcd.Config{Endpoints: []string{m.Endpoint()}, TLS: tc, DialTimeout: 2 * time.Second})
		if err == nil {
			s.Close()
		}
		return err
	}
	for name, files := range map[string][2]string{"without a certificate": {"", ""}, "with another CA's certificate": {otherCert, otherKey}} {
		if err := peerGet(files[0], files[1]); err == nil {
			t.Errorf("peer port, %s: answered", name)
		}
		if err := clientOpen(files[0], files[1]); err == nil {
			t.Errorf("client port, %s: answered", name)
		}
	}
}

// TestClusterFencing: a leader elected through a client of all three
// members keeps leading, and its fenced writes go through, while each
// member is lost in turn — the raft leader among them — and a second
// candidate waits meanwhile; once the first resigns the second leads
// and the first's fenced writes fail.
func TestClusterFencing(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	a, b := c.Open(t), c.Open(t)
	campaign := func(st *etcd.Store) (store.Leadership, error) {
		l, err := st.Grant(ctx, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("grant a lease: %w", err)
		}
		return st.Campaign(ctx, "engine", l)
	}
	lead, err := campaign(a)
	if err != nil {
		t.Fatal(err)
	}
	fenced := a.Fenced(lead)
	second := make(chan store.Leadership, 1)
	go func() {
		// A request that lands on a member while it stops or starts
		// fails: the candidate campaigns again, as a daemon does
		// (daemon.leadLoop).
		for {
			ld, err := campaign(b)
			if err == nil {
				second <- ld
				return
			}
			if ctx.Err() != nil {
				t.Errorf("second candidate: %v", err)
				second <- nil
				return
			}
			t.Logf("second candidate: %v; campaigning again", err)
			time.Sleep(200 * time.Millisecond)
		}
	}()
	for i, m := range c.Members {
		m.Stop(t)
		if _, err := fenced.PutRecord(ctx, "k", fmt.Sprint(i), []byte("v"), 0); err != nil {
			t.Fatalf("fenced write without %s: %v", m.Name, err)
		}
		select {
		case <-lead.Done():
			t.Fatalf("leadership lost without %s", m.Name)
		case <-second:
			t.Fatalf("the second candidate leads without %s", m.Name)
		default:
		}
		m.Start(t)
	}
	if err := lead.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case ld := <-second:
		if ld == nil {
			t.FailNow()
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the second candidate does not lead after the first resigned")
	}
	if _, err := fenced.PutRecord(ctx, "k", "after", []byte("v"), 0); !errors.Is(err, store.ErrNotLeader) {
		t.Errorf("fenced write after resigning: %v, want ErrNotLeader", err)
	}
}

// TestClusterShortestLease: a cluster's members elect a leader
// within 0.5–1 s of the last one's heartbeat (etcd.StartClusterMember's
// ticks), so they grant leases as short as 1 s — etcd's least is 1.5
// election timeouts. The member that takes the lead renews every lease
// for its TTL and an election timeout: with etcd's own ticks (an
// election after 1–2 s) a lease granted for 1 s was 2 s, and a node
// whose member led the raft and died was taken for alive a second
// longer than now.
func TestClusterShortestLease(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	st := c.Open(t)
	l, err := st.Grant(t.Context(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.TTL(), time.Second; got != want {
		t.Errorf("a lease asked for 1 s lives %s, want %s", got, want)
	}
	if err := l.Revoke(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestMemberDirs: a member's data directory is its own: a single
// member's (StartMember) is no cluster member's, nor one cluster
// member's another's, and each refuses the other's with an error that
// says what to do.
func TestMemberDirs(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	urls := etcdtest.PeerURLs(t, "http", etcdtest.Loopback)
	alone := etcd.Cluster{Name: "a", Peers: []etcd.Peer{{Name: "a", URL: urls[0]}}}
	renamed := etcd.Cluster{Name: "b", Peers: []etcd.Peer{{Name: "b", URL: urls[0]}}}
	clusterDir, singleDir := filepath.Join(t.TempDir(), "etcd"), filepath.Join(t.TempDir(), "etcd")
	var log lockedBuffer
	m, err := etcd.StartClusterMember(ctx, clusterDir, alone, log.logf)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if m, err = etcd.StartMember(singleDir, log.logf); err != nil {
		t.Fatal(err)
	}
	m.Close()

	for _, tc := range []struct {
		name  string
		start func() (*etcd.Member, error)
		err   string
	}{
		{"single on a cluster member's", func() (*etcd.Member, error) { return etcd.StartMember(clusterDir, log.logf) }, "holds member a of a cluster"},
		{"cluster member on a single's", func() (*etcd.Member, error) { return etcd.StartClusterMember(ctx, singleDir, alone, log.logf) }, "holds a single member's data"},
		{"another member on a member's", func() (*etcd.Member, error) { return etcd.StartClusterMember(ctx, clusterDir, renamed, log.logf) }, "holds member a at " + urls[0].String() + ", not b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.start()
			if err == nil {
				m.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("start: %v; want an error with %q", err, tc.err)
			}
		})
	}
	// Its own member starts again on it.
	if m, err = etcd.StartClusterMember(ctx, clusterDir, alone, log.logf); err != nil {
		t.Fatalf("restart: %v\n%s", err, log.String())
	}
	m.Close()
}

// TestMemberGivesUpWaiting: a member whose peers never come waits for
// them until its context ends, and then stops and returns (a daemon
// interrupted while it waits for its cluster exits), its directory
// ready for a next start.
func TestMemberGivesUpWaiting(t *testing.T) {
	urls := etcdtest.PeerURLs(t, "http", etcdtest.Loopback, etcdtest.Loopback)
	c := etcd.Cluster{Name: "a", Peers: []etcd.Peer{{Name: "a", URL: urls[0]}, {Name: "b", URL: urls[1]}}}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	var log lockedBuffer
	done := make(chan error, 1)
	go func() {
		m, err := etcd.StartClusterMember(ctx, filepath.Join(t.TempDir(), "etcd"), c, log.logf)
		if err == nil {
			m.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not ready") {
			t.Errorf("StartClusterMember without its peer: %v, want not ready: %v", err, context.DeadlineExceeded)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("StartClusterMember without its peer: still there 28 s after its context ended\n%s", log.String())
	}
}
