// Package backends gives the tests of the store's users the stores they
// run against: a bbolt file and an etcd member in the test's process, each
// a storetest.Backend on which a test opens as many handles as it has
// daemons; and, for the tests that run on one store at a time, the store
// HOSTEL_TEST_STORE chooses, kept under a daemon's root (OpenRoot). It is
// test code, imported only by tests.
package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"hostel/internal/store"
	"hostel/internal/store/etcd"
	"hostel/internal/store/storetest"
)

// Each runs fn as a subtest on each backend — "bbolt", then "etcd" — each
// fresh and empty.
func Each(t *testing.T, fn func(t *testing.T, b storetest.Backend)) {
	t.Helper()
	for _, tc := range []struct {
		name  string
		fresh func(t *testing.T) storetest.Backend
	}{{"bbolt", Bolt}, {"etcd", Etcd}} {
		t.Run(tc.name, func(t *testing.T) { fn(t, tc.fresh(t)) })
	}
}

// Bolt is a bbolt file in a temporary directory: its first handle opens
// the file, the next ones share it (Bolt.Handle), as several daemons'
// handles on one backend.
func Bolt(t *testing.T) storetest.Backend {
	return &bolt{path: filepath.Join(t.TempDir(), "state.db")}
}

type bolt struct {
	mu      sync.Mutex
	path    string
	handles []*store.Bolt
}

func (b *bolt) Open(t *testing.T) store.Store {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var s *store.Bolt
	for _, h := range b.handles {
		if hs, err := h.Handle(); err == nil {
			s = hs
			break
		}
	}
	if s == nil {
		var err error
		if s, err = store.OpenBolt(b.path); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { s.Close() })
	b.handles = append(b.handles, s)
	return s
}

func (b *bolt) Reopen(t *testing.T) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, h := range b.handles {
		h.Close()
	}
	b.handles = nil
}

// Etcd is an etcd member started in this process for the test (what hostel
// serve --etcd-embed runs); each handle is a client of its own.
func Etcd(t *testing.T) storetest.Backend {
	t.Helper()
	e := &etcdBackend{dir: filepath.Join(t.TempDir(), "etcd")}
	e.start(t)
	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.m.Close()
		if t.Failed() {
			t.Logf("etcd member log:\n%s", e.log.String())
		}
	})
	return e
}

type etcdBackend struct {
	dir     string
	log     logBuffer
	mu      sync.Mutex
	m       *etcd.Member
	handles []*etcd.Store
}

func (e *etcdBackend) start(t *testing.T) {
	t.Helper()
	m, err := etcd.StartMember(e.dir, e.log.logf)
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
}

// Endpoints are the member's client URLs, for a process of the test's
// own (hostel serve --etcd) to share it.
func Endpoints(b storetest.Backend) []string {
	if e, ok := b.(*etcdBackend); ok {
		return e.m.Endpoints()
	}
	return nil
}

func (e *etcdBackend) Open(t *testing.T) store.Store {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	s, err := etcd.Open(t.Context(), etcd.Config{Endpoints: e.m.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e.handles = append(e.handles, s)
	return s
}

func (e *etcdBackend) Reopen(t *testing.T) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, h := range e.handles {
		h.Close()
	}
	e.handles = nil
	if err := e.m.Close(); err != nil {
		t.Fatal(err)
	}
	e.start(t)
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(&l.b, format+"\n", args...)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// EnvVar names the environment variable that chooses the backend of the
// tests that run on one store at a time (the deploy engine's, the
// end-to-end suite's): "bbolt" (the default, also when unset) or "etcd"
// (an etcd member in the test's process, as hostel serve --etcd-embed
// runs). `make test` runs their core a second time with etcd.
const EnvVar = "HOSTEL_TEST_STORE"

// Chosen returns the backend EnvVar chooses, "bbolt" or "etcd"; any other
// value fails the test, so that a typo never runs the suite on bbolt
// unnoticed.
func Chosen(t testing.TB) string {
	t.Helper()
	switch v := os.Getenv(EnvVar); v {
	case "", "bbolt":
		return "bbolt"
	case "etcd":
		return "etcd"
	default:
		t.Fatalf("%s=%s: want bbolt or etcd", EnvVar, v)
		return ""
	}
}

// OpenRoot opens the store of the backend EnvVar chooses, kept under root
// as a daemon keeps its own: the bbolt file root/state.db, or an etcd
// member started in this process with its data in root/etcd and a client
// of it. Closing the store closes both (closing twice is harmless), as a
// daemon's stop does; the next OpenRoot on root is the next daemon's
// store and finds what the last one left. What is left open is closed
// when the test ends.
func OpenRoot(t testing.TB, root string) store.Store {
	t.Helper()
	return OpenRootOf(t, Chosen(t), root)
}

// OpenRootOf is OpenRoot on backend, "bbolt" or "etcd", whatever EnvVar
// says: a test that reads the store a daemon of its own kept under root
// (hostel serve, or serve --etcd-embed) once it stopped.
func OpenRootOf(t testing.TB, backend, root string) store.Store {
	t.Helper()
	switch backend {
	case "bbolt", "etcd":
	default:
		t.Fatalf("backend %q: want bbolt or etcd", backend)
	}
	if backend == "bbolt" {
		s, err := store.OpenBolt(filepath.Join(root, "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	var log logBuffer
	m, err := etcd.StartMember(filepath.Join(root, "etcd"), log.logf)
	if err != nil {
		t.Fatal(err)
	}
	s, err := etcd.Open(context.Background(), etcd.Config{Endpoints: m.Endpoints()})
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	ms := &memberStore{Store: s, m: m}
	t.Cleanup(func() {
		ms.Close()
		if t.Failed() && log.String() != "" {
			t.Logf("etcd member log (%s):\n%s", root, log.String())
		}
	})
	return ms
}

// memberStore is a client of an etcd member that the store's Close stops
// too.
type memberStore struct {
	store.Store
	m    *etcd.Member
	once sync.Once
	err  error
}

func (s *memberStore) Close() error {
	s.once.Do(func() { s.err = errors.Join(s.Store.Close(), s.m.Close()) })
	return s.err
}
