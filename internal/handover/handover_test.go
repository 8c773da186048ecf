package handover

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestFromEnvRefuses: what systemd's protocol forbids, or a name the
// daemon does not know, is an error before any descriptor is touched;
// sockets meant for another process are not taken.
func TestFromEnvRefuses(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	tests := []struct {
		name, fds, names, pid, parent string
		err                           string // "" : no error and no set
	}{
		{"none", "", "", "", "", ""},
		{"another process's", "1", "http", "1", "", ""},
		{"another parent's", "1", "http", "", "1", ""},
		{"no LISTEN_PID", "1", "http", "", "", "LISTEN_FDS is set without LISTEN_PID"},
		{"not a number", "x", "http", me, "", `LISTEN_FDS: "x" is not a number`},
		{"unnamed", "2", "", me, "", `LISTEN_FDNAMES: "" names 1 sockets, LISTEN_FDS passes 2`},
		{"one name short", "2", "http", me, "", `names 1 sockets, LISTEN_FDS passes 2`},
		{"unknown name", "1", "web", me, "", `LISTEN_FDNAMES: unknown socket name "web" (want one of http, https, api, api-listen, peer, endpoint, hostel)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(fdsEnv, tt.fds)
			t.Setenv(namesEnv, tt.names)
			t.Setenv(pidEnv, tt.pid)
			t.Setenv(ParentEnv, tt.parent)
			s, err := FromEnv()
			if tt.err == "" {
				if err != nil || s != nil {
					t.Fatalf("got %v, %v; want nothing", s, err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("got error %v, want %q", err, tt.err)
			}
			if v := os.Getenv(fdsEnv) + os.Getenv(namesEnv) + os.Getenv(pidEnv) + os.Getenv(ParentEnv); v != "" {
				t.Errorf("the variables are left for the daemon's children: %q", v)
			}
		})
	}
}

// TestTakeFor: a socket is taken by its name, else, named Unit, by the
// address a flag gives; each once.
func TestTakeFor(t *testing.T) {
	listen := func(addr string) net.Listener {
		t.Helper()
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	named, any4, lo := listen("127.0.0.1:0"), listen("0.0.0.0:0"), listen("127.0.0.1:0")
	s := &Set{ls: []passed{{HTTPS, named}, {Unit, any4}, {Unit, lo}}}
	port := func(ln net.Listener) string { _, p, _ := net.SplitHostPort(ln.Addr().String()); return p }
	tests := []struct {
		name, flag, addr string
		want             net.Listener
	}{
		{"by name, whatever the flag", HTTPS, ":1", named},
		{"taken once", HTTPS, named.Addr().String(), nil},
		{"another host", HTTP, "127.0.0.2:" + port(lo), nil},
		{"by address", HTTP, "127.0.0.1:" + port(lo), lo},
		{"a host name", APIListen, "localhost:" + port(any4), nil},
		{"any address", APIListen, ":" + port(any4), any4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := s.TakeFor(tt.flag, tt.addr)
			if got != tt.want || ok != (tt.want != nil) {
				t.Errorf("TakeFor(%s, %s) = %v, %v; want %v", tt.flag, tt.addr, got, ok, tt.want)
			}
		})
	}
	if left := s.Left(); len(left) != 0 {
		t.Errorf("left: %v", left)
	}
}

// TestClosePort: a held socket on a port a flag wants on another address
// is let go of; the others stay.
func TestClosePort(t *testing.T) {
	a, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Set{fromHolder: true, ls: []passed{{HTTP, a}, {HTTPS, b}}}
	defer s.Close()
	_, port, _ := net.SplitHostPort(a.Addr().String())
	s.ClosePort(port)
	if ln, err := net.Listen("tcp", "127.0.0.2:"+port); err != nil {
		t.Errorf("port %s after ClosePort: %v", port, err)
	} else {
		ln.Close()
	}
	if left := s.Left(); len(left) != 1 || !strings.HasPrefix(left[0], HTTPS) {
		t.Errorf("left: %v, want https only", left)
	}
}
