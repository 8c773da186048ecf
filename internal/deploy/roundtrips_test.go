package deploy

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/node/nodetest"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest/backends"
)

// Round trips to the store, by what they do.
const (
	tripRead  = "read"  // Read, Record, Records, Get, Current, Currents, List, Secret
	tripWrite = "write" // Txn, Commit, SetCurrent, SetConfirm, PutRecord, DeleteRecord, Delete, DropEnv
	tripWatch = "watch" // Watch: a stream opened
)

// countingStore counts a handle's round trips to its store, by method and
// by kind (tripRead, tripWrite, tripWatch), and the time spent in those
// that are not watches.
type countingStore struct {
	store.Store
	mu     sync.Mutex
	counts map[string]int
	spent  time.Duration
}

func newCountingStore(st store.Store) *countingStore {
	return &countingStore{Store: st, counts: map[string]int{}}
}

// trip counts one round trip of method, of kind, started at start.
func (s *countingStore) trip(kind, method string, start time.Time) {
	d := time.Since(start)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[kind]++
	s.counts[method]++
	if kind != tripWatch {
		s.spent += d
	}
}

// snapshot returns the counts so far and the time spent.
func (s *countingStore) snapshot() (map[string]int, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out, s.spent
}

func (s *countingStore) Read(ctx context.Context, kinds ...string) (*store.Snapshot, error) {
	defer s.trip(tripRead, "Read", time.Now())
	return s.Store.Read(ctx, kinds...)
}

func (s *countingStore) Record(ctx context.Context, kind, key string) (store.Record, error) {
	defer s.trip(tripRead, "Record", time.Now())
	return s.Store.Record(ctx, kind, key)
}

func (s *countingStore) Records(ctx context.Context, kind string) ([]store.Record, error) {
	defer s.trip(tripRead, "Records", time.Now())
	return s.Store.Records(ctx, kind)
}

func (s *countingStore) Get(ctx context.Context, n uint64) (*spec.Generation, error) {
	defer s.trip(tripRead, "Get", time.Now())
	return s.Store.Get(ctx, n)
}

func (s *countingStore) Current(ctx context.Context, env string) (*spec.Generation, error) {
	defer s.trip(tripRead, "Current", time.Now())
	return s.Store.Current(ctx, env)
}

func (s *countingStore) Currents(ctx context.Context) (map[string]*spec.Generation, error) {
	defer s.trip(tripRead, "Currents", time.Now())
	return s.Store.Currents(ctx)
}

func (s *countingStore) List(ctx context.Context) ([]*spec.Generation, error) {
	defer s.trip(tripRead, "List", time.Now())
	return s.Store.List(ctx)
}

func (s *countingStore) Secret(ctx context.Context, digest string) ([]byte, error) {
	defer s.trip(tripRead, "Secret", time.Now())
	return s.Store.Secret(ctx, digest)
}

func (s *countingStore) Txn(ctx context.Context, w ...store.Write) (uint64, error) {
	defer s.trip(tripWrite, "Txn", time.Now())
	return s.Store.Txn(ctx, w...)
}

func (s *countingStore) Commit(ctx context.Context, g *spec.Generation, from uint64, also ...store.Write) (uint64, error) {
	defer s.trip(tripWrite, "Commit", time.Now())
	return s.Store.Commit(ctx, g, from, also...)
}

func (s *countingStore) SetCurrent(ctx context.Context, from, to uint64, also ...store.Write) error {
	defer s.trip(tripWrite, "SetCurrent", time.Now())
	return s.Store.SetCurrent(ctx, from, to, also...)
}

func (s *countingStore) SetConfirm(ctx context.Context, n uint64, c *spec.Confirm, from, to uint64, also ...store.Write) error {
	defer s.trip(tripWrite, "SetConfirm", time.Now())
	return s.Store.SetConfirm(ctx, n, c, from, to, also...)
}

func (s *countingStore) PutRecord(ctx context.Context, kind, key string, value []byte, rev uint64) (uint64, error) {
	defer s.trip(tripWrite, "PutRecord", time.Now())
	return s.Store.PutRecord(ctx, kind, key, value, rev)
}

func (s *countingStore) DeleteRecord(ctx context.Context, kind, key string, rev uint64) error {
	defer s.trip(tripWrite, "DeleteRecord", time.Now())
	return s.Store.DeleteRecord(ctx, kind, key, rev)
}

func (s *countingStore) Delete(ctx context.Context, ns ...uint64) error {
	defer s.trip(tripWrite, "Delete", time.Now())
	return s.Store.Delete(ctx, ns...)
}

func (s *countingStore) DropEnv(ctx context.Context, env string, from uint64, also ...store.Write) error {
	defer s.trip(tripWrite, "DropEnv", time.Now())
	return s.Store.DropEnv(ctx, env, from, also...)
}

func (s *countingStore) Watch(ctx context.Context, from uint64) (<-chan store.Event, error) {
	defer s.trip(tripWatch, "Watch", time.Now())
	return s.Store.Watch(ctx, from)
}

// countsSince returns what changed between two snapshots of the counts.
func countsSince(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// formatCounts prints counts by method, sorted: "Read 3, Txn 1".
func formatCounts(c map[string]int) string {
	var parts []string
	for k, v := range c {
		if k != tripRead && k != tripWrite && k != tripWatch {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// BenchmarkDeploy measures the engine deploying one changed service of
// three — a real node following the store (supervisor, router, a process
// per version) in this process — on each store (bbolt; an etcd member in
// this process, as serve --etcd-embed), without a confirm window and with
// a short one, and counts the engine's round trips to the store per
// deploy (its reads, its writes, the watches it opens: its waits for the
// nodes and the routers, and its view of the reports, included) and the
// time they took. The node's own round trips are not counted.
//
//	go test -run '^$' -bench Deploy -benchtime 20x ./internal/deploy/
func BenchmarkDeploy(b *testing.B) {
	for _, backend := range []string{"bbolt", "etcd"} {
		for _, window := range []time.Duration{0, 300 * time.Millisecond} {
			name := fmt.Sprintf("%s/window=%s", backend, window)
			b.Run(name, func(b *testing.B) { benchmarkDeploy(b, backend, window) })
		}
	}
}

func benchmarkDeploy(b *testing.B, backend string, window time.Duration) {
	root := b.TempDir()
	raw := backends.OpenRootOf(b, backend, root)
	counted := newCountingStore(raw)
	logf := func(string, ...any) {}
	n := nodetest.New(b, raw, root, nodetest.Options{Logf: logf})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := New(counted, Options{Node: n.Name, Logf: logf})
	if err := e.Start(ctx); err != nil {
		b.Fatal(err)
	}
	if err := e.Recover(ctx, logf); err != nil {
		b.Fatal(err)
	}
	n.Start(b)
	defer n.Shutdown()
	if err := e.Resume(ctx, logf); err != nil {
		b.Fatal(err)
	}
	svc := func(id string, opts ...svcOpt) *spec.Service {
		s := app(id, opts...)
		s.StopGrace = spec.Duration(spec.MinGrace)
		return s
	}
	deploy := func(i int) {
		s := mkSpec(map[string]*spec.Service{"db": svc("db"), "api": svc("api", needs("db")), "web": svc(fmt.Sprintf("web-%d", i))})
		s.Services["web"].Domains = []string{"web.test"}
		res, err := e.Deploy(ctx, Request{Source: "bench.json", Spec: s, Confirm: window}, logf)
		if err != nil {
			b.Fatalf("deploy %d: %v", i, err)
		}
		if i > 0 && (len(res.Started) != 1 || len(res.Stopped) != 1) {
			b.Fatalf("deploy %d started %v and stopped %v, want web's new version and its old one", i, res.Started, res.Stopped)
		}
	}
	// The first deploys start all three, and one replaces web with a
	// window: what every later deploy finds.
	deploy(0)
	deploy(1)
	before, spentBefore := counted.snapshot()
	b.ResetTimer()
	for i := range b.N {
		deploy(i + 2)
	}
	b.StopTimer()
	after, spentAfter := counted.snapshot()
	diff := countsSince(before, after)
	per := func(k string) float64 { return float64(diff[k]) / float64(b.N) }
	b.ReportMetric(per(tripRead), "reads/op")
	b.ReportMetric(per(tripWrite), "writes/op")
	b.ReportMetric(per(tripWatch), "watches/op")
	b.ReportMetric(float64((spentAfter-spentBefore).Microseconds())/1000/float64(b.N), "store-ms/op")
	b.Logf("%s, window %s, %d deploys: %s", backend, window, b.N, formatCounts(diff))
}
