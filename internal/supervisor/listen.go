package supervisor

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// A version that does not become ready most often listens somewhere else
// than it was told: a port of its own (3000, 8000, 8080), or an address
// the supervisor does not reach (::1 for "localhost", a public address).
// Its readiness error says where it listens, read from the kernel: the
// sockets its process group holds open (/proc/PID/fd), and those of them
// that listen (/proc/PID/net/tcp and tcp6, of the leader's network
// namespace).

// wrongListen says where the processes of group pgid listen when none of
// that is where the supervisor probes (127.0.0.1:port, or a wildcard
// address on port): "listens on 127.0.0.1:3000, not on PORT=41234". It
// says "" when one of them listens there, when they listen on no TCP
// port, or when that cannot be read.
func wrongListen(pgid, port int) string {
	addrs := listenAddrs(pgid)
	if len(addrs) == 0 {
		return ""
	}
	onPort := false
	for _, a := range addrs {
		if int(a.Port()) != port {
			continue
		}
		if ip := a.Addr().Unmap(); ip.IsUnspecified() || ip == netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
			return ""
		}
		onPort = true
	}
	words := make([]string, len(addrs))
	for n, a := range addrs {
		words[n] = a.String()
	}
	if onPort {
		return fmt.Sprintf("listens on %s, not on HOST=127.0.0.1", strings.Join(words, ", "))
	}
	return fmt.Sprintf("listens on %s, not on PORT=%d", strings.Join(words, ", "), port)
}

// listenAddrs returns the TCP addresses the processes of group pgid
// listen on, sorted; nil when none, or when they cannot be read.
func listenAddrs(pgid int) []netip.AddrPort {
	inodes := map[string]bool{}
	for _, pid := range groupPIDs(pgid) {
		fds, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", fd.Name()))
			if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
				inodes[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	var out []netip.AddrPort
	for _, file := range []string{"tcp", "tcp6"} {
		for _, a := range readListeners(filepath.Join("/proc", strconv.Itoa(pgid), "net", file), inodes) {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out
}

// groupPIDs returns the processes of process group pgid, read from /proc.
func groupPIDs(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp …: comm may hold spaces and ')'.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// tcpListen is the state of a listening socket in /proc/net/tcp.
const tcpListen = "0A"

// readListeners reads a /proc/net/tcp or tcp6 table and returns the local
// addresses of its listening sockets whose inode is in inodes.
func readListeners(path string, inodes map[string]bool) []netip.AddrPort {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.AddrPort
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] != tcpListen || !inodes[f[9]] {
			continue
		}
		if a, ok := parseProcAddr(f[1]); ok {
			out = append(out, a)
		}
	}
	return out
}

// parseProcAddr reads an address of /proc/net/tcp{,6}: the IP in hex, as
// 32-bit words in the host's byte order, a colon, the port in hex.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(ipHex)
	port, perr := strconv.ParseUint(portHex, 16, 16)
	if err != nil || perr != nil || (len(raw) != net.IPv4len && len(raw) != net.IPv6len) {
		return netip.AddrPort{}, false
	}
	// Each word was printed as the number its bytes make in host order.
	for w := 0; w < len(raw); w += 4 {
		binary.NativeEndian.PutUint32(raw[w:], binary.BigEndian.Uint32(raw[w:]))
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip, uint16(port)), true
}
