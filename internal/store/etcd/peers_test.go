package etcd_test

import (
	"net"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"hostel/internal/store/etcd"
	"hostel/internal/store/etcd/etcdtest"
)

func TestParsePeers(t *testing.T) {
	u := func(s string) url.URL { p, _ := url.Parse(s); return *p }
	for _, tc := range []struct {
		name string
		list []string
		want []etcd.Peer // nil: an error containing err
		err  string
	}{
		{name: "three on loopback", list: []string{"a=http://127.0.0.1:2380", "b=http://127.0.0.2:2380", "c=http://127.0.0.1:3380"},
			want: []etcd.Peer{{"a", u("http://127.0.0.1:2380")}, {"b", u("http://127.0.0.2:2380")}, {"c", u("http://127.0.0.1:3380")}}},
		{name: "https between machines", list: []string{"a=https://10.0.0.1:2380/", "b=https://[fd00::2]:2380"},
			want: []etcd.Peer{{"a", u("https://10.0.0.1:2380")}, {"b", u("https://[fd00::2]:2380")}}},
		{name: "empty", list: nil, err: "no members"},
		{name: "no URL", list: []string{"a"}, err: `"a": want NAME=PEER_URL`},
		{name: "bad name", list: []string{"-a=http://127.0.0.1:2380"}, err: "not a node name"},
		{name: "name twice", list: []string{"a=http://127.0.0.1:2380", "a=http://127.0.0.1:3380"}, err: "member a is named twice"},
		{name: "http between machines", list: []string{"a=http://10.0.0.1:2380"}, err: "not a loopback address"},
		{name: "host name", list: []string{"a=https://node-a:2380"}, err: "not an IP address"},
		{name: "unspecified address", list: []string{"a=https://0.0.0.0:2380"}, err: "not an IP address"},
		{name: "no port", list: []string{"a=https://10.0.0.1"}, err: "want https://IP:PORT"},
		{name: "port 1", list: []string{"a=http://127.0.0.1:1"}, err: "want 2 to 65535"},
		{name: "other scheme", list: []string{"a=unix:///run/etcd.sock"}, err: "want https://IP:PORT"},
		{name: "path", list: []string{"a=https://10.0.0.1:2380/etcd"}, err: "want https://IP:PORT"},
		{name: "mixed schemes", list: []string{"a=https://127.0.0.1:2380", "b=http://127.0.0.1:3380"}, err: "http:// among https://"},
		{name: "same peer address", list: []string{"a=http://127.0.0.1:2380", "b=http://127.0.0.1:2380"}, err: "b's peer port, 127.0.0.1:2380, is a's peer port"},
		{name: "peer port on a client port", list: []string{"a=http://127.0.0.1:2380", "b=http://127.0.0.1:2379"}, err: "b's peer port, 127.0.0.1:2379, is a's client port"},
		{name: "client port on a peer port", list: []string{"a=http://127.0.0.1:2380", "b=http://127.0.0.1:2381"}, err: "b's client port (its peer port less one), 127.0.0.1:2380, is a's peer port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := etcd.ParsePeers(tc.list)
			if tc.want == nil {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParsePeers(%q) = %v, %v; want an error with %q", tc.list, got, err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParsePeers(%q) = %v, %v; want %v", tc.list, got, err, tc.want)
			}
		})
	}
}

func TestClientURL(t *testing.T) {
	for peer, want := range map[string]string{
		"https://10.0.0.1:2380":   "https://10.0.0.1:2379",
		"http://127.0.0.1:40000":  "http://127.0.0.1:39999",
		"https://[fd00::2]:12380": "https://[fd00::2]:12379",
	} {
		u, _ := url.Parse(peer)
		if got := etcd.ClientURL(*u); got.String() != want {
			t.Errorf("ClientURL(%s) = %s, want %s", peer, got.String(), want)
		}
	}
}

// TestClusterCheck: what a member checks before it starts, of its
// name and of the files of --etcd-cert, --etcd-key and --etcd-ca.
func TestClusterCheck(t *testing.T) {
	dir := t.TempDir()
	ca := etcdtest.NewCA(t, dir, "cluster-ca")
	other := etcdtest.NewCA(t, dir, "other-ca")
	cert, key := ca.Node(t, "a", etcdtest.Loopback)
	elsewhere, elsewhereKey := ca.Node(t, "b", net.IPv4(10, 0, 0, 9))
	stranger, strangerKey := other.Node(t, "a", etcdtest.Loopback)
	// certs makes certificates for 127.0.0.1 for one use each.
	_, serverOnly, serverOnlyKey, _, _ := certs(t, dir, "oneuse")
	oneUseCA := dir + "/oneuse-ca.pem"

	secure, _ := etcd.ParsePeers([]string{"a=https://127.0.0.1:2380", "b=https://127.0.0.1:3380"})
	plain, _ := etcd.ParsePeers([]string{"a=http://127.0.0.1:2380", "b=http://127.0.0.1:3380"})
	for _, tc := range []struct {
		name string
		c    etcd.Cluster
		err  string // "": no error
	}{
		{name: "https, its certificate", c: etcd.Cluster{Name: "a", Peers: secure, CertFile: cert, KeyFile: key, CAFile: ca.CertFile}},
		{name: "http, no files", c: etcd.Cluster{Name: "a", Peers: plain}},
		{name: "not a member", c: etcd.Cluster{Name: "c", Peers: plain}, err: "this node, c, is not one of the members (a, b)"},
		{name: "http with files", c: etcd.Cluster{Name: "a", Peers: plain, CertFile: cert, KeyFile: key, CAFile: ca.CertFile}, err: "certificates are for https://"},
		{name: "https without a CA", c: etcd.Cluster{Name: "a", Peers: secure, CertFile: cert, KeyFile: key}, err: "need this member's certificate, its key and the cluster's CA"},
		{name: "https without files", c: etcd.Cluster{Name: "a", Peers: secure}, err: "need this member's certificate"},
		{name: "missing file", c: etcd.Cluster{Name: "a", Peers: secure, CertFile: dir + "/none.pem", KeyFile: key, CAFile: ca.CertFile}, err: "none.pem"},
		{name: "key of another certificate", c: etcd.Cluster{Name: "a", Peers: secure, CertFile: cert, KeyFile: strangerKey, CAFile: ca.CertFile}, err: "private key does not match"},
		{name: "another CA's certificate", c: etcd.Cluster{Name: "a", Peers: secure, CertFile: stranger, KeyFile: strangerKey, CAFile: ca.CertFile}, err: "unknown authority"},
		{name: "certificate of another address", c: etcd.Cluster{Name: "a", Peers: secure, CertFile: elsewhere, KeyFile: elsewhereKey, CAFile: ca.CertFile}, err: "does not name 127.0.0.1, this member's peer address"},
		{name: "server authentication only", c: etcd.Cluster{Name: "a", Peers: secure, CertFile: serverOnly, KeyFile: serverOnlyKey, CAFile: oneUseCA}, err: "incompatible key usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Check()
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("Check: %v; want an error with %q", err, tc.err)
			}
		})
	}
}
