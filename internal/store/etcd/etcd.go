// Package etcd is store.Store on etcd (go.etcd.io/etcd/client/v3): the
// cluster's state, and a single machine's when it runs on an etcd member
// of its own (StartMember). It passes the same conformance suite as the
// bbolt store.
//
// Keys live under a prefix (DefaultPrefix), so that one etcd may hold
// other data:
//
//	PREFIX seq                 the number of the last generation committed
//	PREFIX gen/N               a generation (N in 20 digits), as store.EncodeGeneration keeps it
//	PREFIX current/ENV         the number of ENV's current generation
//	PREFIX secret/DIGEST       a secret ciphertext, by store.SecretDigest
//	PREFIX record/KIND/KEY     a record; its revision is the key's ModRevision
//	PREFIX election/NAME/LEASE a candidacy (LEASE in hex), as etcd's concurrency package keeps it
//	PREFIX migrated            what Load moved in, and from where
//	PREFIX migrating           the records a Load writes, while it runs (cleared by a Load again)
//
// The store's revision is etcd's. Every write is one etcd transaction
// whose compares carry the store's compare-and-swaps — and, through a
// fenced view, that the leader's candidacy still has its create revision.
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"hostel/internal/store"
)

// DefaultPrefix is where hostel's keys live in etcd.
const DefaultPrefix = "/hostel/"

// Config says which etcd to use.
type Config struct {
	// Endpoints are the URLs of the etcd members (http://, https://,
	// unix://).
	Endpoints []string
	// TLS is the client's TLS configuration for https:// endpoints; nil
	// for none.
	TLS *tls.Config
	// Prefix is where the keys live; "" is DefaultPrefix.
	Prefix string
	// DialTimeout bounds how long Open waits for etcd to answer; 0 is
	// 10 seconds.
	DialTimeout time.Duration
}

// TLSConfig is the client TLS configuration from the files etcd's own
// client flags name (--cert, --key, --cacert): a client certificate and
// its key (both or neither), and the CA that signs the members'
// certificates ("": the system's roots).
func TLSConfig(cert, key, ca string) (*tls.Config, error) {
	if (cert == "") != (key == "") {
		return nil, errors.New("a client certificate needs its key, and a key its certificate")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", ca)
		}
	}
	return cfg, nil
}

// Store is one handle (one etcd client) on the keys under a prefix.
type Store struct {
	cli *clientv3.Client
	p   string
	h   *handle
	// fence, on a view made by Fenced, is the leadership every write
	// requires; nil on a handle.
	fence *fence
}

var _ store.Store = (*Store)(nil)

// handle is what a Store and its fenced views share.
type handle struct {
	closed chan struct{}
	once   sync.Once
}

// The client pings each member it is connected to every keepAlive, and
// drops the connection (talking to another member) when the answer takes
// over keepAliveTimeout: a member frozen or cut off without closing its
// connections is otherwise waited on until it answers again — its
// clients' reads, and the keep-alives of their leases. gRPC pings no
// more often than every 10 s (a shorter time is raised to it), which an
// etcd allows (its --grpc-keepalive-min-time is 5 s): a frozen member is
// left within 12 s, past a node's lease (NodeTTL, 6 s), which may end
// meanwhile (the node rejoins). A daemon with a member of its own talks
// to that one alone (Member.Endpoints), which is never frozen without it.
const (
	keepAlive        = 10 * time.Second
	keepAliveTimeout = 2 * time.Second
)

// Open connects to etcd and checks that it answers.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  cfg.TLS,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    keepAlive,
		DialKeepAliveTimeout: keepAliveTimeout,
		Logger:               zap.NewNop(),
		// A request may carry a commit's generation: up to the server's
		// 1.5 MiB, and a read may bring back every generation.
		MaxCallSendMsgSize: 2 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	s := &Store{cli: cli, p: cfg.Prefix, h: &handle{closed: make(chan struct{})}}
	cctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(cctx, s.kSeq()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return s, nil
}

// Close implements store.Store: the client closes, its watches end and
// its leases are no longer renewed. Closing a fenced view does nothing.
func (s *Store) Close() error {
	if s.fence != nil {
		return nil
	}
	var err error
	s.h.once.Do(func() {
		close(s.h.closed)
		err = s.cli.Close()
	})
	return err
}

// usable returns why s cannot be used now: ctx ended, or s is closed.
func (s *Store) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.h.closed:
		return store.ErrClosed
	default:
		return nil
	}
}

func (s *Store) kSeq() string                    { return s.p + "seq" }
func (s *Store) kGens() string                   { return s.p + "gen/" }
func (s *Store) kGen(n uint64) string            { return fmt.Sprintf("%sgen/%020d", s.p, n) }
func (s *Store) kCurrents() string               { return s.p + "current/" }
func (s *Store) kCurrent(env string) string      { return s.p + "current/" + env }
func (s *Store) kSecrets() string                { return s.p + "secret/" }
func (s *Store) kSecret(digest string) string    { return s.p + "secret/" + digest }
func (s *Store) kRecords(kind string) string     { return s.p + "record/" + kind + "/" }
func (s *Store) kRecord(kind, key string) string { return s.p + "record/" + kind + "/" + key }
func (s *Store) kElection(name string) string    { return s.p + "election/" + name + "/" }
func (s *Store) kMigrated() string               { return s.p + "migrated" }
func (s *Store) kMigrating() string              { return s.p + "migrating" }

// number decodes a number kept as a value (seq, a current generation);
// 0 for a missing key.
func number(kv *mvccpb.KeyValue) (uint64, error) {
	if kv == nil {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(kv.Value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("etcd key %s: %q is not a number", kv.Key, kv.Value)
	}
	return n, nil
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// modRev is the ModRevision of kv, 0 for a missing key (which is what a
// compare of ModRevision finds for one).
func modRev(kv *mvccpb.KeyValue) int64 {
	if kv == nil {
		return 0
	}
	return kv.ModRevision
}

// first returns the first key of a range response, or nil.
func first(r *clientv3.GetResponse) *mvccpb.KeyValue {
	if len(r.Kvs) == 0 {
		return nil
	}
	return r.Kvs[0]
}

// ranges returns the range responses of a transaction, in order.
func ranges(resp *clientv3.TxnResponse) []*clientv3.GetResponse {
	out := make([]*clientv3.GetResponse, len(resp.Responses))
	for i, r := range resp.Responses {
		out[i] = (*clientv3.GetResponse)(r.GetResponseRange())
	}
	return out
}

// get reads keys in one transaction: a consistent view, at the revision
// of its header.
func (s *Store) get(ctx context.Context, ops ...clientv3.Op) ([]*clientv3.GetResponse, int64, error) {
	if err := s.usable(ctx); err != nil {
		return nil, 0, err
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, 0, wrap(err)
	}
	return ranges(resp), resp.Header.Revision, nil
}

// wrap turns the etcd errors the store knows into its own.
func wrap(err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return fmt.Errorf("%w: %w", err, store.ErrNotFound)
	case errors.Is(err, rpctypes.ErrTooManyOps):
		return fmt.Errorf("%w (more than %d keys in one change)", err, store.MaxTxnOps)
	case errors.Is(err, rpctypes.ErrRequestTooLarge):
		return fmt.Errorf("%w (a generation may hold %d bytes, and a change 1.5 MiB)", err, store.MaxGenerationSize)
	}
	return err
}

// attempt is what one try of a write decided from what it read: the
// compares under which it holds, and its changes.
type attempt struct {
	cmps []clientv3.Cmp
	ops  []clientv3.Op
}

// maxTries bounds the tries of a write whose reads keep being
// overtaken.
const maxTries = 100

// write makes a change: decide reads and decides (or returns why not);
// its attempt, the record writes in also and the fence are one
// transaction. While only decide's own compares fail — what it read has
// moved — it decides again, and then finds a conflict itself or tries
// again; a failed write in also, or the fence, is the answer at once.
// It returns the store's revision after the change.
func (s *Store) write(ctx context.Context, decide func(ctx context.Context) (*attempt, error), also []store.Write) (uint64, error) {
	if err := s.usable(ctx); err != nil {
		return 0, err
	}
	if err := store.CheckWrites(also); err != nil {
		return 0, err
	}
	if s.fence != nil && s.fence.key == "" {
		return 0, fmt.Errorf("write as leader of %s, a leadership of another store: %w", s.fence.name, store.ErrNotLeader)
	}
	for range maxTries {
		a, err := decide(ctx)
		if err != nil {
			return 0, err
		}
		cmps, ops := a.cmps, a.ops
		var guards []clientv3.Op
		for _, w := range also {
			cmps = append(cmps, s.writeCmps(w)...)
			ops = append(ops, s.writeOp(w))
			guards = append(guards, clientv3.OpGet(s.kRecord(w.Kind, w.Key)))
		}
		if s.fence != nil {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.fence.key), "=", s.fence.rev))
			guards = append(guards, clientv3.OpGet(s.fence.key))
		}
		if len(ops) > store.MaxTxnOps || len(cmps) > store.MaxTxnOps {
			return 0, fmt.Errorf("%d changes under %d compares: more than etcd's %d in one transaction", len(ops), len(cmps), store.MaxTxnOps)
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(guards...).Commit()
		if err != nil {
			return 0, wrap(err)
		}
		if resp.Succeeded {
			return uint64(resp.Header.Revision), nil
		}
		got := ranges(resp)
		if s.fence != nil {
			if kv := first(got[len(got)-1]); kv == nil || kv.CreateRevision != s.fence.rev {
				return 0, fmt.Errorf("write as leader of %s: %w", s.fence.name, store.ErrNotLeader)
			}
		}
		for i, w := range also {
			kv := first(got[i])
			if err := w.Check(kv != nil, uint64(modRev(kv))); err != nil {
				return 0, err
			}
		}
	}
	return 0, fmt.Errorf("gave up after %d tries: others change the store too fast: %w", maxTries, store.ErrConflict)
}

// writeCmps are the compares under which w holds.
func (s *Store) writeCmps(w store.Write) []clientv3.Cmp {
	if w.Rev == store.AnyRevision {
		return nil
	}
	k := s.kRecord(w.Kind, w.Key)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", int64(w.Rev))}
	if w.Delete {
		// A delete needs the record; with Rev 0 the two compares never
		// both hold, and Check says why.
		cmps = append(cmps, clientv3.Compare(clientv3.Version(k), ">", 0))
	}
	return cmps
}

// writeOp is the change w makes.
func (s *Store) writeOp(w store.Write) clientv3.Op {
	k := s.kRecord(w.Kind, w.Key)
	if w.Delete {
		return clientv3.OpDelete(k)
	}
	if w.Lease != 0 {
		return clientv3.OpPut(k, string(w.Value), clientv3.WithLease(clientv3.LeaseID(w.Lease)))
	}
	return clientv3.OpPut(k, string(w.Value))
}

// checkFence is a write that changes nothing: it fails with
// ErrNotLeader through a view whose leadership is lost, as every write
// through it does.
func (s *Store) checkFence(ctx context.Context) error {
	if s.fence == nil {
		return nil
	}
	_, err := s.write(ctx, func(context.Context) (*attempt, error) { return &attempt{}, nil }, nil)
	return err
}
