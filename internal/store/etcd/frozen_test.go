package etcd_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/store/etcd"
	"hostel/internal/store/etcd/etcdtest"
)

// freezer is a TCP proxy in front of an address that can stop passing
// bytes while it keeps its connections open: a member frozen (SIGSTOP)
// or cut off, as its clients see it.
type freezer struct {
	ln     net.Listener
	frozen atomic.Bool
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, to string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln}
	var conns []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		f.frozen.Store(false)
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		f.wg.Wait()
	})
	f.wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			f.wg.Go(func() { f.pipe(out, in) })
			f.wg.Go(func() { f.pipe(in, out) })
		}
	})
	return f
}

// pipe copies from src to dst, holding what it read while frozen.
func (f *freezer) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for f.frozen.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestClusterLeavesFrozenMember: one member of three stops answering
// without closing its connections; the client leaves it once a ping goes
// unanswered. gRPC pings only while a request is under way on the
// connection (and no more often than every 10 s): a read that lands on
// the frozen member fails within 12 s (keepAlive, keepAliveTimeout),
// not waiting for it to answer, and the reads after it go through.
func TestClusterLeavesFrozenMember(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cfg := c.Config()
	var proxies []*freezer
	for i, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			t.Fatal(err)
		}
		proxies = append(proxies, newFreezer(t, u.Host))
		u.Host = proxies[i].ln.Addr().String()
		cfg.Endpoints[i] = u.String()
	}
	st, err := etcd.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Connections to every member first, then one freezes.
	for range 6 {
		if _, err := st.Records(t.Context(), "k"); err != nil {
			t.Fatal(err)
		}
	}
	proxies[0].frozen.Store(true)
	frozenAt := time.Now()
	var failed []string
	for i := range 12 {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		t0 := time.Now()
		_, err := st.Records(ctx, "k")
		cancel()
		took := time.Since(t0)
		switch {
		case err != nil && took > 13*time.Second:
			t.Fatalf("read %d, %s after a member froze, waited on it %s: %v", i, time.Since(frozenAt).Round(time.Millisecond), took.Round(time.Millisecond), err)
		case err != nil:
			failed = append(failed, fmt.Sprintf("read %d after %s: %v", i, took.Round(time.Millisecond), err))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("reads that landed on the frozen member: %v", failed)
	if len(failed) > 1 {
		t.Errorf("%d reads failed after a member froze, want the one that found it frozen at most: %v", len(failed), failed)
	}
}
