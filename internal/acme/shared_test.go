package acme_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/acme"
	"hostel/internal/acme/pebbletest"
	"hostel/internal/keyring"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/etcd"
	"hostel/internal/store/storetest"
	"hostel/internal/store/storetest/backends"
)

// TestTwoDaemonsOneOrder: two daemons on one store manage the same hosts
// at the same time: each certificate is ordered once, by one of them (the
// other waits for its lock and finds it in the store), and both serve it.
func TestTwoDaemonsOneOrder(t *testing.T) {
	t.Parallel()
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ln := listen(t)
		p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(ln.http.Addr().String()), TLSPort: port(ln.https.Addr().String()), NoSleep: true})
		a := start(t, newDaemon(t, b), ln, acme.Options{DisableTLSALPN: true})
		c := start(t, newDaemon(t, b), listen(t), acme.Options{DisableTLSALPN: true})
		hosts := []string{"one.example.test", "two.example.test", "three.example.test"}
		services := map[string]*spec.Service{}
		for i, h := range hosts {
			services[fmt.Sprintf("s%d", i)] = &spec.Service{Domains: []string{h}}
		}
		g := generation(pebbleACME(p), services)
		_, h := tableOf(g)
		var wg sync.WaitGroup
		for _, s := range []*server{a, c} {
			wg.Go(func() { s.m.Follow(h) })
		}
		wg.Wait()
		awaitValid(t, a, 60*time.Second)
		awaitValid(t, c, 60*time.Second)
		for _, h := range hosts {
			if n := strings.Count(a.Log(), h+": obtained") + strings.Count(c.Log(), h+": obtained"); n != 1 {
				t.Errorf("%s ordered %d times, want once", h, n)
			}
			if sa, sc := a.peerSerial(t, p.Roots, h), c.peerSerial(t, p.Roots, h); sa != sc {
				t.Errorf("%s: the daemons serve certificates %s and %s, want the one ordered", h, sa, sc)
			}
		}
		if a.m.InternalCA() != c.m.InternalCA() {
			t.Error("the daemons have internal CAs of their own, want the deployment's")
		}
	})
}

// answerer is what TestAnswerAnothersChallenge tells the daemon it runs in
// another process.
type answerer struct {
	Endpoints []string
	Root      string
	ACME      *spec.ACME
	Host      string
}

const answererEnv = "HOSTEL_ACME_ANSWERER"

// TestAnswerAnothersChallenge: a daemon answers the HTTP-01 challenge of
// an order another daemon of the deployment placed — from the token in the
// store, as it runs in a process of its own that never saw the order —
// and then serves the certificate without ordering it. Pebble reaches only
// the answering daemon; the ordering one gets its certificate. certmagic
// keeps the challenges a process presents in a memory of the process, from
// which a second Manager in the test's process would answer: the answering
// daemon runs in a process of its own, so on etcd (a bbolt file is not
// shared by two processes).
func TestAnswerAnothersChallenge(t *testing.T) {
	t.Parallel()
	b := backends.Etcd(t)
	// Pebble validates through a proxy to the answering daemon, which
	// starts once the ordering one holds the lock: it cannot order first.
	proxy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port(proxy.Addr().String()), TLSPort: pebbletest.FreePort(t), NoSleep: true})
	const host = "shared.example.test"
	g := generation(pebbleACME(p), map[string]*spec.Service{"shared": {Domains: []string{host}}})

	orderer := start(t, newDaemon(t, b), listen(t), acme.Options{DisableTLSALPN: true})
	orderer.deploy(t, g)
	waitLocked(t, orderer.st, "issue_cert_"+host)

	cfg, _ := json.Marshal(answerer{Endpoints: backends.Endpoints(b), Root: t.TempDir(), ACME: pebbleACME(p), Host: host})
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAnswerer$", "-test.v")
	cmd.Env = append(os.Environ(), answererEnv+"="+string(cfg))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var helperLog strings.Builder
	cmd.Stderr = &helperLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	defer func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("answering daemon:\n%s", helperLog.String())
		}
	}()
	lines := bufio.NewScanner(stdout)
	var addr string
	for lines.Scan() {
		if a, ok := strings.CutPrefix(lines.Text(), "ready "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		t.Fatalf("the answering daemon did not start:\n%s", helperLog.String())
	}
	var out strings.Builder
	go func() {
		for lines.Scan() {
			out.WriteString(lines.Text() + "\n")
		}
		cmd.Wait()
		close(exited)
	}()
	var proxied atomic.Int32
	go func() {
		for {
			c, err := proxy.Accept()
			if err != nil {
				return
			}
			proxied.Add(1)
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				io.Copy(c, u)
			}()
		}
	}()

	awaitValid(t, orderer, 60*time.Second)
	if !strings.Contains(orderer.Log(), host+": obtained") {
		t.Errorf("the ordering daemon did not obtain %s:\n%s", host, orderer.Log())
	}
	if proxied.Load() == 0 {
		t.Error("Pebble never reached the answering daemon")
	}
	// The answering daemon took the lock after the order and found the
	// certificate: it serves it and never ordered.
	stdin.Close()
	<-exited
	if !strings.Contains(out.String(), "serves "+orderer.peerSerial(t, p.Roots, host)) {
		t.Errorf("the answering daemon does not serve the ordered certificate: %s", out.String())
	}
	if strings.Contains(helperLog.String(), "obtained") {
		t.Errorf("the answering daemon ordered too:\n%s", helperLog.String())
	}
}

// waitLocked waits until the lock name is held.
func waitLocked(t *testing.T, st store.Store, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := st.Record(t.Context(), store.KindCertLock, name); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lock %s not taken within 30s", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHelperAnswerer is the answering daemon of
// TestAnswerAnothersChallenge, in a process of its own: it manages the
// host on the shared store, serves HTTP, prints "ready ADDR", and once
// its standard input closes prints "serves SERIAL" (the certificate it has
// for the host) and exits. Its log goes to standard error.
func TestHelperAnswerer(t *testing.T) {
	raw := os.Getenv(answererEnv)
	if raw == "" {
		t.Skip("the answering daemon of TestAnswerAnothersChallenge")
	}
	var c answerer
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := etcd.Open(ctx, etcd.Config{Endpoints: c.Endpoints})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	hk, err := secrets.EnsureHostKey(c.Root)
	if err != nil {
		t.Fatal(err)
	}
	keys := keyring.New(st, hk)
	if err := keys.Join(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := st.Grant(ctx, storetest.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	m, err := acme.New(ctx, acme.Options{Store: st, Keys: keys, Owner: "answerer", Root: c.Root,
		Lease:    func(context.Context) (store.Lease, error) { return l, nil },
		HTTPAddr: ln.http.Addr().String(), HTTPSAddr: ln.https.Addr().String(), DisableTLSALPN: true, Logf: logf})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	go http.Serve(ln.http, m.HTTPHandler(http.NotFoundHandler()))
	go (&http.Server{Handler: http.NotFoundHandler(), TLSConfig: m.TLSConfig()}).ServeTLS(ln.https, "", "")
	_, h := tableOf(generation(c.ACME, map[string]*spec.Service{"shared": {Domains: []string{c.Host}}}))
	m.Follow(h)
	fmt.Printf("ready %s\n", ln.http.Addr())
	io.Copy(io.Discard, os.Stdin)
	m.Await(ctx, 30*time.Second, logf)
	conn, err := tls.Dial("tcp", ln.https.Addr().String(), &tls.Config{ServerName: c.Host, InsecureSkipVerify: true})
	if err != nil {
		fmt.Printf("serves nothing: %v\n", err)
		return
	}
	defer conn.Close()
	fmt.Printf("serves %s\n", conn.ConnectionState().PeerCertificates[0].SerialNumber)
}
