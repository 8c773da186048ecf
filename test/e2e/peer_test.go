package e2e

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"hostel/internal/peer"
)

// TestNodeToNode: two daemons on one machine share one etcd (Debian's,
// --etcd URL), each its own node with its own root, public port and
// node-to-node port (--advertise). A spec pins shop and quotes to node a
// and blog, which needs quotes, to node b. Every node's router answers
// every domain: b's forwards shop to a, a's forwards blog to b, and blog
// on b reaches quotes on a through its QUOTES_URL. A redeploy of shop
// while b's router is under load fails no request. Nothing outside the
// cluster uses the node-to-node port: a TLS client without a certificate,
// or with one of another CA, is refused at the handshake and never gets an
// answer.
func TestNodeToNode(t *testing.T) {
	url := startEtcd(t)
	a, b := NewEnv(t), NewEnv(t)
	a.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--etcd", url, "--node", "a", "--advertise", "127.0.0.1:0")
	b.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--etcd", url, "--node", "b", "--advertise", "127.0.0.1:0")
	pinned := func(greeting string) map[string]any {
		on := func(n string) map[string]any { return map[string]any{"node": n} }
		return map[string]any{"services": map[string]any{
			"quotes": a.App("quotes", map[string]any{"env": map[string]string{"GREETING": "Hi"}, "health": map[string]any{"path": "/healthz"}, "placement": on("a")}),
			"blog":   a.App("blog", map[string]any{"needs": []string{"quotes"}, "domains": []string{"blog.example"}, "health": map[string]any{"path": "/healthz"}, "placement": on("b")}),
			"shop":   a.App("shop", map[string]any{"env": map[string]string{"SHOP_TITLE": greeting}, "domains": []string{"shop.example"}, "stop_grace": "3s", "placement": on("a")}),
		}}
	}
	a.WriteSpec(pinned("Shop one"))
	a.MustRun("deploy", "--no-confirm")

	var ns struct {
		Nodes []struct {
			Name, Address string
			Instances     []string
		}
	}
	if err := json.Unmarshal([]byte(b.MustRun("nodes", "--json")), &ns); err != nil {
		t.Fatal(err)
	}
	peers := map[string]string{}
	for _, n := range ns.Nodes {
		peers[n.Name] = n.Address
		want := map[string][]string{"a": {"quotes-", "shop-"}, "b": {"blog-"}}[n.Name]
		if len(n.Instances) != len(want) {
			t.Errorf("node %s runs %v, want %v…", n.Name, n.Instances, want)
		}
	}
	if peers["a"] != a.peerAddr() || peers["b"] != b.peerAddr() || peers["a"] == "" {
		t.Fatalf("nodes say %v; the daemons bound a=%s b=%s", peers, a.peerAddr(), b.peerAddr())
	}
	if out := a.MustRun("nodes"); !strings.Contains(out, peers["a"]) {
		t.Errorf("hostel nodes does not show a's address %s:\n%s", peers["a"], out)
	}

	for _, tc := range []struct {
		name string
		e    *Env
		host string
		want string
	}{
		{"shop through a, where it runs", a, "shop.example", "Shop one"},
		{"shop through b, forwarded to a", b, "shop.example", "Shop one"},
		{"blog through b, its QUOTES_URL forwarded to a", b, "blog.example", `Hi! Quote of the day:`},
		{"blog through a, forwarded to b", a, "blog.example", `Hi! Quote of the day:`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, _, body := tc.e.Get(tc.host, "/"); code != 200 || !strings.Contains(body, tc.want) {
				t.Errorf("got %d %q, want 200 with %q", code, body, tc.want)
			}
		})
	}

	t.Run("redeploy under load through b", func(t *testing.T) {
		failed, n := trafficOn([]string{b.HTTP}, 4, "shop.example", func() {
			a.WriteSpec(pinned("Shop two"))
			a.MustRun("deploy", "--no-confirm")
		}, nil)
		if len(failed) != 0 {
			t.Errorf("%d of %d requests failed during the redeploy; first: %v", len(failed), n, failed[0])
		}
		t.Logf("%d requests through b during the redeploy, %d failed", n, len(failed))
		if code, _, body := b.Get("shop.example", "/"); code != 200 || !strings.Contains(body, "Shop two") {
			t.Errorf("after the redeploy, through b: %d %q", code, body)
		}
	})

	t.Run("the node-to-node port takes no outsider", func(t *testing.T) {
		stranger, err := peer.NewCA()
		if err != nil {
			t.Fatal(err)
		}
		id, err := stranger.Identity("a", "127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			cfg  *tls.Config
		}{
			{"no certificate", &tls.Config{InsecureSkipVerify: true}},
			{"another CA's certificate, for a's name", func() *tls.Config {
				c := id.ClientConfig()
				c.InsecureSkipVerify = true // the client does not check the server: the server must check it
				return c
			}()},
		} {
			t.Run(tc.name, func(t *testing.T) {
				raw, err := net.DialTimeout("tcp", peers["a"], 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer raw.Close()
				raw.SetDeadline(time.Now().Add(10 * time.Second))
				c := tls.Client(raw, tc.cfg)
				// TLS 1.3: the client's side of the handshake ends before
				// the server checked its certificate; the server's alert
				// comes with the first read.
				err = c.Handshake()
				if err == nil {
					fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: shop.example\r\nHostel-Peer-Instance: %s\r\n\r\n", "x")
					_, err = http.ReadResponse(bufio.NewReader(c), nil)
				}
				if err == nil || !strings.Contains(err.Error(), "certificate") {
					t.Errorf("got %v, want the handshake refused for a certificate", err)
				}
			})
		}
		// And plain HTTP on it is no HTTP request either.
		raw, err := net.DialTimeout("tcp", peers["a"], 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(raw, "GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(raw), nil); err == nil && resp.StatusCode == 200 {
			t.Errorf("plain HTTP on the node-to-node port answered %d", resp.StatusCode)
		}
		if log := a.DaemonLog(); !strings.Contains(log, "peer: http: TLS handshake error") {
			t.Errorf("a's log does not say it refused the handshakes:\n%s", log)
		}
	})

	// --advertise is cluster mode's.
	_, errOut, code := a.Run("serve", "--http", "127.0.0.1:0", "--https", "", "--advertise", "127.0.0.1:0")
	if code != 2 || !strings.Contains(errOut, "--advertise") {
		t.Errorf("serve --advertise without etcd: exit %d %q, want 2 naming --advertise", code, errOut)
	}
}

// peerAddr is the node-to-node address the daemon bound (status --json).
func (e *Env) peerAddr() string {
	e.t.Helper()
	var st struct{ Listen struct{ Peer string } }
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	return st.Listen.Peer
}
