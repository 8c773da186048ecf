package supervisor

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNotReadyListensElsewhere: a version that listens on a port of its
// own, or on an address it is not probed on, is not ready, and its error
// says where it listens.
func TestNotReadyListensElsewhere(t *testing.T) {
	t.Parallel()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	// The port it listens on instead: one below the ephemeral range, so
	// that no PORT (a port 0's, free) can be it.
	below := func() string {
		low := 32768
		if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
			if f := strings.Fields(string(b)); len(f) == 2 {
				if n, err := strconv.Atoi(f[0]); err == nil {
					low = n
				}
			}
		}
		for p := low - 2000; p < low; p++ {
			if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p)); err == nil {
				l.Close()
				return l.Addr().String()
			}
		}
		t.Fatalf("no free port below %d", low)
		return ""
	}
	elsewhere := below()
	tests := []struct {
		name   string
		listen func(port string) string
		want   func(port string) string
	}{
		{"another port", func(string) string { return elsewhere },
			func(port string) string { return "listens on " + elsewhere + ", not on PORT=" + port }},
		{"another address", func(port string) string { return "[::1]:" + port },
			func(port string) string { return "listens on [::1]:" + port + ", not on HOST=127.0.0.1" }},
	}
	for n, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if strings.HasPrefix(tt.listen("0"), "[::1]") {
				if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
					t.Skip("no IPv6 loopback:", err)
				} else {
					l.Close()
				}
			}
			s, _ := newSupervisor(t, Options{})
			port := free()
			_, p, _ := net.SplitHostPort(port)
			cfg := appConfig("elsewhere"+string(rune('a'+n)), "-listen", tt.listen(p))
			cfg.Port, _ = strconv.Atoi(p)
			cfg.ReadyTimeout = 2 * time.Second
			cfg.StopGrace = time.Second
			i := start(t, s, cfg)
			err := i.WaitReady(context.Background())
			if !errors.Is(err, ErrNotReady) {
				t.Fatalf("WaitReady = %v, want ErrNotReady", err)
			}
			if want := ": not ready after 2s: " + tt.want(p) + "; last lines of"; !strings.Contains(err.Error(), want) {
				t.Errorf("WaitReady = %v\nwant it to contain %q", err, want)
			}
		})
	}
}

// TestNotReadyNoHint: a process that listens where it is probed, or not
// at all yet, gets no word about where it listens.
func TestNotReadyNoHint(t *testing.T) {
	t.Parallel()
	s, _ := newSupervisor(t, Options{})
	cfg := appConfig("nohint", "-slow-start", "30s")
	cfg.ReadyTimeout = 300 * time.Millisecond
	cfg.StopGrace = time.Second
	i := start(t, s, cfg)
	if err := i.WaitReady(context.Background()); err == nil || strings.Contains(err.Error(), "listens on") {
		t.Errorf("WaitReady = %v, want not ready without a word on listening", err)
	}
}

func TestParseProcAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"0100007F:0BB8", "127.0.0.1:3000"},
		{"00000000:1F90", "0.0.0.0:8080"},
		{"00000000000000000000000001000000:A0E2", "[::1]:41186"},
		{"00000000000000000000000000000000:0050", "[::]:80"},
		{"0000000000000000FFFF00000100007F:0050", "[::ffff:127.0.0.1]:80"},
	}
	for _, tt := range tests {
		got, ok := parseProcAddr(tt.in)
		if !ok || got != netip.MustParseAddrPort(tt.want) {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", tt.in, got, ok, tt.want)
		}
	}
	for _, bad := range []string{"", "0100007F", "zz:0050", "0100007F:xyz", "01007F:0050"} {
		if got, ok := parseProcAddr(bad); ok {
			t.Errorf("parseProcAddr(%q) = %v, want refused", bad, got)
		}
	}
}
