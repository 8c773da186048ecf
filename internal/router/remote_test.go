package router

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/front/fronttest"
	"hostel/internal/peer"
	"hostel/internal/spec"
)

// testNode is one node of a cluster on this machine: its router, served
// on a public listener and on a peer listener that takes only the
// cluster's nodes.
type testNode struct {
	name string
	r    *Router
	pub  string // the public listener's URL
	peer string // the peer listener's address
	id   *peer.Identity
}

// startNodes starts nodes of one cluster (their certificates from one
// CA), each with opts (Peers set here).
func startNodes(t *testing.T, opts Options, names ...string) []*testNode {
	t.Helper()
	ca, err := peer.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	var out []*testNode
	for _, name := range names {
		id, err := ca.Identity(name, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		o := opts
		o.Peers = id.Transport()
		r, pub := startRouter(t, o)
		ln, err := id.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(r.ServePeer)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		out = append(out, &testNode{name: name, r: r, pub: pub, peer: ln.Addr().String(), id: id})
	}
	return out
}

// on is the replica of an instance on n, ready.
func (n *testNode) on() Remote { return Remote{Node: n.name, Addr: n.peer, Ready: true} }

// TestRemoteRoutes: an instance that runs on another node answers on
// this node's router by domain, by a preview's name, by its immutable
// name and through a <NEED>_URL endpoint, all through the peer; the
// instance the request goes to is the one this node decided, whatever
// the client sent; the app sees the client's scheme.
func TestRemoteRoutes(t *testing.T) {
	nodes := startNodes(t, Options{}, "a", "b")
	a, b := nodes[0], nodes[1]
	a.r.AddBackend(apiV1, fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend api-v1 host=%s proto=%s peer-fields=%q", r.Host, r.Header.Get("X-Forwarded-Proto"), r.Header.Values("Hostel-Peer-Instance"))
	})))
	a.r.AddBackend(webV1, fronttest.StartBackend(t, "web-v1"))
	preview := spec.VersionKey(string(apiV1) + "@pr-1")
	a.r.AddBackend(preview, fronttest.StartBackend(t, "api-v1@pr-1"))
	tab := Table{Domains: map[string]spec.VersionKey{host: apiV1, "web.example.org": webV1},
		Internal: map[string]spec.VersionKey{"api.pr-1." + zone: preview}}
	for _, n := range nodes {
		mustSwap(t, n.r, tab)
	}
	b.r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {a.on()}, webV1: {a.on()}, preview: {a.on()}})
	ep, err := b.r.OpenEndpoint(apiV1, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("an endpoint for an instance on another node: %v", err)
	}

	for _, tc := range []struct {
		name, url, host, want string
	}{
		{"domain", b.pub, host, `backend api-v1 host=api.example.org proto=http peer-fields=[]`},
		{"another domain", b.pub, "web.example.org", "backend web-v1"},
		{"preview name", b.pub, "api.pr-1." + zone, "backend api-v1@pr-1"},
		{"immutable name", b.pub, spec.VersionHost("api", "111111111111", zone), "backend api-v1"},
		{"endpoint", ep, "", "backend api-v1 host=127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := fronttest.Get(t, tc.url+"/x", tc.host)
			if status != 200 || !strings.HasPrefix(body, tc.want) {
				t.Errorf("got %d %q, want 200 %q…", status, body, tc.want)
			}
		})
	}

	t.Run("a client naming an instance", func(t *testing.T) {
		req, _ := http.NewRequest("GET", b.pub+"/", nil)
		req.Host = host
		req.Header.Set("Hostel-Peer-Instance", string(webV1))
		req.Header.Set("Hostel-Peer-Proto", "https")
		_, body := fronttest.Send(t, fronttest.Client, req)
		if want := `backend api-v1 host=api.example.org proto=http peer-fields=[]`; string(body) != want {
			t.Errorf("got %q, want %q: the instance and scheme this node decided", body, want)
		}
	})

	t.Run("not a client of the internal zone", func(t *testing.T) {
		// The peer is not where immutable names are decided: b is, for
		// its client.
		if rt := b.r.decide(spec.VersionHost("api", "111111111111", zone), "203.0.113.9:1", false, "/"); rt.b != nil || rt.remote != nil {
			t.Errorf("an outside client reaches an immutable name through a peer: %+v", rt)
		}
	})

	t.Run("local wins", func(t *testing.T) {
		b.r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1 on b"))
		defer b.r.RemoveBackend(apiV1)
		if _, _, body := fronttest.Get(t, b.pub+"/", host); !strings.HasPrefix(body, "backend api-v1 on b") {
			t.Errorf("with a backend here: %q, want it served here", body)
		}
	})
	// Removed here, the endpoint stays open and reaches a again.
	if _, _, body := fronttest.Get(t, ep+"/", ""); !strings.HasPrefix(body, "backend api-v1") {
		t.Errorf("endpoint after the backend here went: %q", body)
	}
}

// TestServePeer: the peer listener serves the instance a request names
// with the client address and scheme the forwarding node gave, never
// forwards it again, and refuses a request that names no instance.
func TestServePeer(t *testing.T) {
	nodes := startNodes(t, Options{}, "a", "b")
	a, b := nodes[0], nodes[1]
	a.r.AddBackend(apiV1, fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "for=%s proto=%s", r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
	})))
	// Both think the other runs webV1: neither does.
	a.r.SetRemotes(map[spec.VersionKey][]Remote{webV1: {b.on()}})
	b.r.SetRemotes(map[spec.VersionKey][]Remote{webV1: {a.on()}})
	mustSwap(t, a.r, Table{Domains: map[string]spec.VersionKey{host: apiV1, "web.example.org": webV1}})
	c := &http.Client{Transport: b.id.Transport(), Timeout: 10 * time.Second}
	for _, tc := range []struct {
		name   string
		fields map[string]string
		code   int
		want   string
	}{
		{"client and scheme", map[string]string{"Hostel-Peer-Instance": string(apiV1), "Hostel-Peer-Client": "203.0.113.9:1234", "Hostel-Peer-Proto": "https"},
			200, "for=203.0.113.9 proto=https"},
		{"plain HTTP client", map[string]string{"Hostel-Peer-Instance": string(apiV1), "Hostel-Peer-Client": "[2001:db8::1]:80", "Hostel-Peer-Proto": "http"},
			200, "for=2001:db8::1 proto=http"},
		{"no instance", map[string]string{"Hostel-Peer-Client": "203.0.113.9:1234"}, 400, "hostel: a request between nodes must name an instance"},
		{"an instance not here", map[string]string{"Hostel-Peer-Instance": string(webV1), "Host": "web.example.org"}, 503, "hostel: the service is not running"},
		// The forwarding node decided before its table switched; here
		// the instance drained and went meanwhile: what serves its host
		// here now answers, as a request held here would be routed again.
		{"an instance gone, its host served here", map[string]string{"Hostel-Peer-Instance": string(spec.Key("api", "999999999999")), "Hostel-Peer-Client": "203.0.113.9:1234"},
			200, "for=203.0.113.9 proto=http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "https://"+a.peer+"/", nil)
			req.Host = host
			for k, v := range tc.fields {
				if k == "Host" {
					req.Host = v
					continue
				}
				req.Header.Set(k, v)
			}
			resp, body := fronttest.Send(t, c, req)
			if resp.StatusCode != tc.code || strings.TrimSpace(string(body)) != tc.want {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, body, tc.code, tc.want)
			}
		})
	}
	// Through b's router: a answers 503 rather than send it back.
	mustSwap(t, b.r, Table{Domains: map[string]spec.VersionKey{"web.example.org": webV1}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if status, _, _ := fronttest.Get(t, b.pub+"/", "web.example.org"); status != 503 {
			t.Errorf("an instance each node thinks the other runs: %d, want 503", status)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a request for an instance each node thinks the other runs loops")
	}
}

// TestRemoteGate: a request forwarded to the node that runs its instance
// is that node's — counted in flight there (a drain waits for it), held
// there while the instance sleeps, woken there once for all requests, and
// held while it is paused there.
func TestRemoteGate(t *testing.T) {
	w := &testWaker{t: t, release: make(chan struct{})}
	nodes := startNodes(t, Options{Waker: w}, "a", "b")
	a, b := nodes[0], nodes[1]
	gate := fronttest.NewGate()
	a.r.AddBackend(apiV1, fronttest.StartHandler(t, gate))
	for _, n := range nodes {
		mustSwap(t, n.r, Table{Domains: map[string]spec.VersionKey{host: apiV1, "web.example.org": webV1}})
	}
	b.r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {a.on()}, webV1: {a.on()}})

	// Counted on a while it runs.
	done := make(chan string, 1)
	go func() { _, _, body := fronttest.Get(t, b.pub+"/", host); done <- body }()
	<-gate.Entered
	if n := a.r.InFlight(apiV1); n != 1 {
		t.Errorf("in flight on a: %d, want 1", n)
	}
	idle := make(chan error, 1)
	go func() { idle <- a.r.WaitIdle(t.Context(), apiV1) }()
	select {
	case err := <-idle:
		t.Fatalf("a's drain did not wait for the forwarded request: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(gate.Release)
	if body := <-done; body != "slow done" {
		t.Errorf("got %q", body)
	}
	if err := <-idle; err != nil {
		t.Fatal(err)
	}

	// Asleep on a: held there, one wake for every request.
	a.r.AddSleepingBackend(webV1)
	const n = 8
	var wg sync.WaitGroup
	bodies := make(chan string, n)
	for range n {
		wg.Go(func() {
			_, _, body := fronttest.Get(t, b.pub+"/path", "web.example.org")
			bodies <- body
		})
	}
	fronttest.WaitFor(t, "the wake on a", func() bool { return w.wakes.Load() == 1 })
	close(w.release)
	wg.Wait()
	close(bodies)
	for body := range bodies {
		if !strings.HasPrefix(body, "/path 0 ") {
			t.Errorf("a held request got %q", body)
		}
	}
	if got := w.wakes.Load(); got != 1 {
		t.Errorf("%d wakes for %d requests, want 1", got, n)
	}

	// Paused on a: held there until a's table lifts the pause.
	mustSwap(t, a.r, Table{Domains: map[string]spec.VersionKey{host: apiV1}, Paused: map[string]time.Duration{"web": time.Minute}})
	held := make(chan string, 1)
	go func() { _, _, body := fronttest.Get(t, b.pub+"/p", "web.example.org"); held <- body }()
	fronttest.WaitFor(t, "the request held on a", func() bool { sl, _ := a.r.Sleeping(webV1); return sl.Paused })
	select {
	case body := <-held:
		t.Fatalf("a paused instance answered %q", body)
	case <-time.After(100 * time.Millisecond):
	}
	mustSwap(t, a.r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	if body := <-held; !strings.HasPrefix(body, "/p 0 ") {
		t.Errorf("released: %q", body)
	}
}

// TestRemoteChoice: of an instance's replicas, a request goes to a ready
// one with the fewest requests this node forwards to it now — equally
// busy ones in turn — and past a node that refuses connections (it died)
// to another; when none is left it is answered 503, at once.
func TestRemoteChoice(t *testing.T) {
	nodes := startNodes(t, Options{}, "a", "b", "c")
	a, b, c := nodes[0], nodes[1], nodes[2]
	gates := map[string]*fronttest.Gate{}
	for _, n := range []*testNode{a, c} {
		g := fronttest.NewGate()
		gates[n.name] = g
		name := n.name
		n.r.AddBackend(apiV1, fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				g.ServeHTTP(w, r)
				return
			}
			io.WriteString(w, name)
		})))
	}
	b.r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {a.on(), c.on()}})
	mustSwap(t, b.r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})

	count := func(k int) map[string]int {
		got := map[string]int{}
		for range k {
			_, _, body := fronttest.Get(t, b.pub+"/", host)
			got[body]++
		}
		return got
	}
	if got := count(10); got["a"] != 5 || got["c"] != 5 {
		t.Errorf("10 requests one at a time: %v, want 5 each (equally busy: in turn)", got)
	}

	// One request held on a: the next ones go to c, the less busy.
	slow := make(chan struct{})
	go func() { defer close(slow); fronttest.Get(t, b.pub+"/slow", host) }()
	var busy string
	select {
	case <-gates["a"].Entered:
		busy = "a"
	case <-gates["c"].Entered:
		busy = "c"
	}
	if got := count(4); got[busy] != 0 {
		t.Errorf("with one request in flight to %s: %v, want every one on the other", busy, got)
	}
	close(gates[busy].Release)
	<-slow

	// Not ready (starting, failed): only when no ready one is left.
	b.r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {{Node: "a", Addr: a.peer}, c.on()}})
	if got := count(4); got["c"] != 4 {
		t.Errorf("a not ready: %v, want every request on c", got)
	}
	b.r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {{Node: "a", Addr: a.peer}}})
	if got := count(2); got["a"] != 2 {
		t.Errorf("a alone, not ready: %v, want it tried", got)
	}

	// A node that died: its port refuses.
	dead := deadAddr(t)
	b.r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {{Node: "a", Addr: dead, Ready: true}, c.on()}})
	if got := count(6); got["c"] != 6 {
		t.Errorf("a dead: %v, want every request on c", got)
	}
	b.r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {{Node: "a", Addr: dead, Ready: true}}})
	t0 := time.Now()
	if status, _, body := fronttest.Get(t, b.pub+"/", host); status != 503 || body != "hostel: the service is not running\n" {
		t.Errorf("the only node dead: %d %q, want 503", status, body)
	}
	resp, body := fronttest.Do(t, fronttest.Client, "POST", b.pub+"/", strings.NewReader("body"))
	if resp.StatusCode != 503 {
		t.Errorf("a POST to the only node, dead: %d %q, want 503", resp.StatusCode, body)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("503s for a dead node took %s", d)
	}
	// Gone from the store: the domain's version runs nowhere.
	b.r.SetRemotes(nil)
	if status, _, _ := fronttest.Get(t, b.pub+"/", host); status != 503 {
		t.Errorf("no replica: %d, want 503", status)
	}
	if status, _, _ := fronttest.Get(t, b.pub+"/", spec.VersionHost("api", "111111111111", zone)); status != 404 {
		t.Errorf("no replica, by immutable name: %d, want 404", status)
	}
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestNoPeers: a router without peers reaches no other node: remotes are
// ignored, and an endpoint needs a backend here.
func TestNoPeers(t *testing.T) {
	r, pub := startRouter(t, Options{})
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {{Node: "a", Addr: "127.0.0.1:1", Ready: true}}})
	if status, _, _ := fronttest.Get(t, pub+"/", host); status != 503 {
		t.Errorf("got %d, want 503", status)
	}
	if _, err := r.OpenEndpoint(apiV1, "127.0.0.1:0"); err == nil {
		t.Error("an endpoint opened for a version with no backend on a router without peers")
	}
}

// TestRetire: a version about to stop takes no request once it is
// retired, whichever path brings one — another node's forwarding,
// decided before its table switched and arriving late, or this node's
// own by domain — it goes to the version that replaced it; one by the
// retired version's immutable name gets 503; a request in flight
// finishes, and WaitIdle waits for it.
func TestRetire(t *testing.T) {
	nodes := startNodes(t, Options{}, "a", "b")
	a, b := nodes[0], nodes[1]
	gate := fronttest.NewGate()
	a.r.AddBackend(apiV1, fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			gate.ServeHTTP(w, r)
			return
		}
		io.WriteString(w, "v1")
	})))
	a.r.AddBackend(apiV2, fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v2") })))
	mustSwap(t, a.r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	slow := make(chan string, 1)
	go func() { _, _, body := fronttest.Get(t, a.pub+"/slow", host); slow <- body }()
	<-gate.Entered

	// The switch: a's table moves to v2, v1 is retired to drain.
	mustSwap(t, a.r, Table{Domains: map[string]spec.VersionKey{host: apiV2}})
	a.r.Retire(apiV1)
	c := &http.Client{Transport: b.id.Transport(), Timeout: 10 * time.Second}
	for _, tc := range []struct {
		name   string
		send   func() (int, string)
		code   int
		prefix string
	}{
		{"forwarded for v1 by a node that decided before its switch", func() (int, string) {
			req, _ := http.NewRequest("GET", "https://"+a.peer+"/", nil)
			req.Host = host
			req.Header.Set("Hostel-Peer-Instance", string(apiV1))
			resp, body := fronttest.Send(t, c, req)
			return resp.StatusCode, string(body)
		}, 200, "v2"},
		{"by domain here", func() (int, string) { code, _, body := fronttest.Get(t, a.pub+"/", host); return code, body }, 200, "v2"},
		{"by v1's immutable name", func() (int, string) {
			code, _, body := fronttest.Get(t, a.pub+"/", spec.VersionHost("api", "111111111111", zone))
			return code, body
		}, 503, "hostel: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := tc.send(); code != tc.code || !strings.HasPrefix(body, tc.prefix) {
				t.Errorf("got %d %q, want %d %q…", code, body, tc.code, tc.prefix)
			}
		})
	}
	idle := make(chan error, 1)
	go func() { idle <- a.r.WaitIdle(t.Context(), apiV1) }()
	select {
	case err := <-idle:
		t.Fatalf("WaitIdle returned (%v) with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(gate.Release)
	if body := <-slow; body != "slow done" {
		t.Errorf("the request in flight: %q", body)
	}
	if err := <-idle; err != nil {
		t.Fatal(err)
	}
}

// TestRetiredGivesWay: an instance retired here — it drains before it
// stops, its node drained or the instance moved — while a replica of it
// runs on another node: a request that comes now, by domain or by its
// immutable name, goes to the replica, not to a gate closed for good.
func TestRetiredGivesWay(t *testing.T) {
	nodes := startNodes(t, Options{}, "a", "b")
	a, b := nodes[0], nodes[1]
	a.r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1 on a"))
	b.r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1 on b"))
	for _, n := range nodes {
		mustSwap(t, n.r, Table{Domains: map[string]spec.VersionKey{host: apiV1}})
	}
	a.r.SetRemotes(map[spec.VersionKey][]Remote{apiV1: {b.on()}})
	a.r.Retire(apiV1)
	for _, h := range []string{host, spec.VersionHost("api", "111111111111", zone)} {
		if code, _, body := fronttest.Get(t, a.pub+"/", h); code != 200 || !strings.HasPrefix(body, "backend api-v1 on b") {
			t.Errorf("%s on a, its instance retired there: %d %q, want b's replica", h, code, body)
		}
	}
}
