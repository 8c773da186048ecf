package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"hostel/internal/postgres/pgtest"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/storetest"
	"hostel/internal/store/storetest/backends"
	"hostel/internal/supervisor"
)

// runner is one daemon's worth of what runs a release step and provisions
// a database: its root, its own handle on the shared store, its machine
// key, its supervisor and its lease.
type runner struct {
	root string
	st   store.Store
	db   *databases
	rel  *releaser
	log  *lockedLog
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(&l.b, format+"\n", args...)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newRunner starts a runner with root on a new handle of b (a second
// runner on the same root is that root's daemon after a restart).
func newRunner(t *testing.T, b storetest.Backend, root string) *runner {
	t.Helper()
	r := &runner{root: root, st: b.Open(t), log: &lockedLog{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("runner %s:\n%s", root, r.log)
		}
	})
	sup := supervisor.New(supervisor.Options{Root: root, Logf: r.log.logf})
	keys := testKeys(t, root, r.st)
	r.db = newDatabases(root, r.st, keys, sup, false, r.log.logf)
	r.rel = newReleaser(r.db, newOwnLease(r.st, storetest.LeaseTTL), keys.PublicKey(), root)
	return r
}

// releaseSpec is a generation whose service api has a release step: a
// shell that writes "start" to the file runs, sleeps for seconds, then
// writes "end".
func releaseSpec(runs string, seconds int) (*spec.Generation, supervisor.Config) {
	script := fmt.Sprintf("echo start >> %s; sleep %d; echo end >> %s", runs, seconds, runs)
	svc := &spec.Service{Exec: []string{"/bin/sleep", "1000"}, Release: []string{"/bin/sh", "-c", script}}
	g := &spec.Generation{Spec: &spec.Spec{Services: map[string]*spec.Service{"api": svc}}, Versions: map[string]spec.Version{"api": "0123456789ab"}}
	return g, supervisor.Config{Service: "api", Version: "0123456789ab", Exec: svc.Exec}
}

func readRuns(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.Join(strings.Fields(string(b)), " ")
}

// checkRecorded checks that the release of api ran and its claim is gone.
func checkRecorded(t *testing.T, st store.Store) {
	t.Helper()
	key := releaseKey("api", "0123456789ab")
	if _, err := st.Record(t.Context(), store.KindRelease, key); err != nil {
		t.Errorf("release record: %v", err)
	}
	if c, err := st.Record(t.Context(), store.KindReleaseClaim, key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("release claim after the release: %s (%v), want none", c.Value, err)
	}
}

// TestReleaseOnce: two daemons on one store prepare the same version at
// once: its release runs once, on one of them; the other waits for the
// claim and skips it.
func TestReleaseOnce(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		runs := filepath.Join(t.TempDir(), "runs")
		g, cfg := releaseSpec(runs, 1)
		a, c := newRunner(t, b, t.TempDir()), newRunner(t, b, t.TempDir())
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, r := range []*runner{a, c} {
			wg.Go(func() {
				cfg := cfg
				errs[i] = r.rel.Prepare(t.Context(), g, "api", &cfg)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if got := readRuns(t, runs); got != "start end" {
			t.Errorf("the release ran %q, want once: start end", got)
		}
		if !strings.Contains(a.log.String()+c.log.String(), "waiting: claimed by the daemon of") {
			t.Errorf("neither daemon waited for the other's claim")
		}
		checkRecorded(t, a.st)
		// A later start (a restart, a rollback) skips it.
		cfg2 := cfg
		if err := c.rel.Prepare(t.Context(), g, "api", &cfg2); err != nil {
			t.Fatal(err)
		}
		if got := readRuns(t, runs); got != "start end" {
			t.Errorf("after another prepare the release ran %q, want once", got)
		}
	})
}

// TestReleaseRunnerDies: the daemon running a release dies (its handle
// stops renewing its lease, its release is cut short); the daemon waiting
// for its claim runs the release again once the lease has expired. The
// wait is measured: the lease's TTL after the last renewal.
func TestReleaseRunnerDies(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		runs := filepath.Join(t.TempDir(), "runs")
		g, cfg := releaseSpec(runs, 30)
		a, c := newRunner(t, b, t.TempDir()), newRunner(t, b, t.TempDir())
		actx, kill := context.WithCancel(t.Context())
		aDone := make(chan error, 1)
		go func() {
			cfg := cfg
			aDone <- a.rel.Prepare(actx, g, "api", &cfg)
		}()
		waitFor(t, "a's release to start", func() bool { return readRuns(t, runs) == "start" })

		cDone := make(chan error, 1)
		go func() {
			g, cfg := releaseSpec(runs, 0) // the same version; quicker
			cDone <- c.rel.Prepare(t.Context(), g, "api", &cfg)
		}()
		waitFor(t, "c to wait for a's claim", func() bool { return strings.Contains(c.log.String(), "waiting: claimed by") })
		// a dies: its handle is gone (no more renewals, no clean drop of
		// its claim), its release is cut short.
		died := time.Now()
		a.st.Close()
		kill()
		if err := <-aDone; err == nil {
			t.Fatal("a's cut release succeeded")
		}
		if err := <-cDone; err != nil {
			t.Fatal(err)
		}
		t.Logf("c ran the release %s after a died (lease TTL %s)", time.Since(died).Round(10*time.Millisecond), storetest.LeaseTTL)
		if got := readRuns(t, runs); got != "start start end" {
			t.Errorf("runs %q, want a's cut short, then c's whole: start start end", got)
		}
		if !strings.Contains(c.log.String(), "the claim of the daemon of "+a.root) {
			t.Errorf("c does not say the claim of a ended:\n%s", c.log)
		}
		checkRecorded(t, c.st)
	})
}

// TestReleaseTakeOver: a daemon that restarts on the root of the one that
// died mid-release finds that daemon's claim, whose lease still lives
// (etcd and bbolt renew a lease they find at start), and runs the release
// at once rather than waiting for it.
func TestReleaseTakeOver(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		runs := filepath.Join(t.TempDir(), "runs")
		g, cfg := releaseSpec(runs, 0)
		root := t.TempDir()
		dead := newRunner(t, b, root)
		if rev, err := dead.rel.claim(t.Context(), releaseKey("api", cfg.Version)); err != nil || rev == 0 {
			t.Fatalf("claim: %d, %v", rev, err)
		}
		// dead's handle stays open: its lease lives on. Waiting for it
		// would last until the guard below.
		restarted := newRunner(t, b, root)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := restarted.rel.Prepare(ctx, g, "api", &cfg); err != nil {
			t.Fatal(err)
		}
		if got := readRuns(t, runs); got != "start end" {
			t.Errorf("runs %q, want start end", got)
		}
		if !strings.Contains(restarted.log.String(), "which is gone (this daemon restarted on its root)") {
			t.Errorf("the restarted daemon does not say it took its own claim over:\n%s", restarted.log)
		}
		checkRecorded(t, restarted.st)

		// Another root's daemon waits for a live claim instead.
		dead2 := newRunner(t, b, root)
		key2 := releaseKey("api", "ba9876543210")
		if _, err := dead2.rel.claim(t.Context(), key2); err != nil {
			t.Fatal(err)
		}
		other := newRunner(t, b, t.TempDir())
		wctx, wcancel := context.WithTimeout(t.Context(), 2*storetest.LeaseTTL)
		defer wcancel()
		if _, err := other.rel.claim(wctx, key2); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("another root's daemon took a live claim over: %v", err)
		}
	})
}

// TestPasswordInStore: two daemons on one store provision the same
// service's database at once, with a password (a server over TCP): they
// agree on one password, kept in the store sealed (not in plaintext, not
// in a file under either root), and it is the role's.
func TestPasswordInStore(t *testing.T) {
	pg := pgtest.Start(t)
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		a, c := newRunner(t, b, t.TempDir()), newRunner(t, b, t.TempDir())
		s := &spec.Spec{Postgres: &spec.PostgresAdmin{Admin: pg.AdminTCP()},
			Services: map[string]*spec.Service{"api": {Exec: []string{"/bin/true"}, Postgres: &spec.Database{Database: "pw_" + strings.ReplaceAll(t.Name()[len("TestPasswordInStore/"):], "-", "_")}}}}
		g := &spec.Generation{Spec: s}
		var wg sync.WaitGroup
		pws := make([]string, 2)
		errs := make([]error, 2)
		for i, r := range []*runner{a, c} {
			wg.Go(func() {
				_, d, _, err := r.db.ensure(t.Context(), g, "api")
				pws[i], errs[i] = d.Password, err
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if pws[0] == "" || pws[0] != pws[1] {
			t.Fatalf("passwords %q and %q: want one, the same", pws[0], pws[1])
		}
		rec, err := a.st.Record(t.Context(), store.KindPassword, "api")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(rec.Value, []byte(pws[0])) {
			t.Errorf("the password is in the store in plaintext")
		}
		for _, root := range []string{a.root, c.root} {
			filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
				if b, _ := os.ReadFile(path); err == nil && !d.IsDir() && bytes.Contains(b, []byte(pws[0])) {
					t.Errorf("%s holds the password", path)
				}
				return nil
			})
		}
		srv, d, err := c.db.lookup(t.Context(), "api")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(t.Context(), srv.URL(d))
		if err != nil {
			t.Fatalf("connecting with the stored password: %v", err)
		}
		conn.Close(context.Background())
		if err := c.db.forget(t.Context(), "api"); err != nil {
			t.Fatal(err)
		}
		if _, err := a.st.Record(t.Context(), store.KindPassword, "api"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the password after db drop: %v, want it gone", err)
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
