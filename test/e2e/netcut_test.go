package e2e

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// netnsSerial tells apart the networks one test process makes.
var netnsSerial atomic.Int32

// nodeNet is a network of three namespaces, one per node, each with a
// veth link to a bridge in the test's namespace (which has an address on
// it, so the test reaches every node): nodes that a test can cut off one
// by one, their link down, as a machine whose network fails. Its names
// and its /24 (10.X.Y.0, from the test process's pid) are the process's
// own, so that tests running at once on the machine never share one.
type nodeNet struct {
	bridge string
	ns     []string // the namespaces
	links  []string // each namespace's link, its end on the bridge
	ips    []net.IP
}

// newNodeNet makes the network, removed when the test ends.
func newNodeNet(t *testing.T) *nodeNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	pid := os.Getpid()
	id := fmt.Sprintf("%x%d", pid&0xffff, netnsSerial.Add(1))
	a, b := 100+(pid>>8)%100, pid&0xff
	n := &nodeNet{bridge: "hfb" + id}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		for i := range n.ns {
			exec.Command("ip", "link", "del", n.links[i]).Run()
			exec.Command("ip", "netns", "del", n.ns[i]).Run()
		}
		exec.Command("ip", "link", "del", n.bridge).Run()
	})
	run("link", "add", n.bridge, "type", "bridge")
	run("addr", "add", fmt.Sprintf("10.%d.%d.1/24", a, b), "dev", n.bridge)
	run("link", "set", n.bridge, "up")
	for i := range 3 {
		ns, link, ip := fmt.Sprintf("hfn%s-%d", id, i+1), fmt.Sprintf("hfv%s%d", id, i+1), net.IPv4(10, byte(a), byte(b), byte(21+i))
		n.ns, n.links, n.ips = append(n.ns, ns), append(n.links, link), append(n.ips, ip)
		run("netns", "add", ns)
		run("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
		run("link", "set", link, "master", n.bridge, "up")
		run("-n", ns, "addr", "add", ip.String()+"/24", "dev", "eth0")
		run("-n", ns, "link", "set", "eth0", "up")
		run("-n", ns, "link", "set", "lo", "up")
	}
	return n
}

// startCluster starts a cluster of three on the network, a node in each
// namespace: each etcd member's peer port 12380 (its client port
// 12379, etcd.ClientURL) on its node's address.
func (n *nodeNet) startCluster(t *testing.T) *cluster {
	t.Helper()
	var urls []url.URL
	var wrap [][]string
	for i, ip := range n.ips {
		urls = append(urls, url.URL{Scheme: "https", Host: net.JoinHostPort(ip.String(), "12380")})
		wrap = append(wrap, []string{"ip", "netns", "exec", n.ns[i]})
	}
	return startClusterOn(t, n.ips, urls, wrap)
}

// cut takes node i's link down (up: back up).
func (n *nodeNet) cut(t *testing.T, i int, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	if out, err := exec.Command("ip", "link", "set", n.links[i], state).CombinedOutput(); err != nil {
		t.Fatalf("ip link set %s %s: %v: %s", n.links[i], state, err, out)
	}
}
