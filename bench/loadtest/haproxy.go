package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// haproxy is Debian's HAProxy in master-worker mode in front of the two
// apps, run directly (web reaches api through a second HAProxy frontend,
// as it reaches it through its API_URL endpoint under hostel). A reload
// (SIGUSR2 to the master) starts a new worker that takes the listeners
// from the old one over the stats socket (expose-fd listeners); the old
// one finishes its connections.
type haproxy struct {
	root   string
	addr   string
	master *exec.Cmd
	apps   []*exec.Cmd
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startHAProxy(c config) (*haproxy, error) {
	root, err := os.MkdirTemp("", "hostel-loadtest-haproxy-")
	if err != nil {
		return nil, err
	}
	h := &haproxy{root: root}
	var addrs [4]string // public, api's endpoint, api, web
	for i := range addrs {
		if addrs[i], err = freeAddr(); err != nil {
			return nil, err
		}
	}
	h.addr = addrs[0]
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(root, "log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	for i, role := range []string{"api", "web"} {
		host, port, _ := net.SplitHostPort(addrs[2+i])
		cmd := exec.Command(self, "app")
		cmd.Env = append(os.Environ(), "HOST="+host, "PORT="+port, "HOSTEL_VERSION="+role+"-1", "API_URL=http://"+addrs[1])
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			h.stop()
			return nil, err
		}
		h.apps = append(h.apps, cmd)
	}
	cfg := fmt.Sprintf(`global
    master-worker
    stats socket %s/stats.sock mode 600 level admin expose-fd listeners
    hard-stop-after 60s
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 90s
    option http-keep-alive
    http-reuse always
frontend public
    bind %s
    use_backend api if { req.hdr(host) -m beg api.load }
    default_backend web
frontend api_url
    bind %s
    default_backend api
backend api
    server api %s
backend web
    server web %s
`, root, addrs[0], addrs[1], addrs[2], addrs[3])
	cfgPath := filepath.Join(root, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	h.master = exec.Command("haproxy", "-W", "-db", "-f", cfgPath)
	h.master.Stdout, h.master.Stderr = logf, logf
	if err := h.master.Start(); err != nil {
		h.stop()
		return nil, fmt.Errorf("haproxy (apt-get install haproxy): %w", err)
	}
	for range 200 {
		if c, err := net.Dial("tcp", addrs[3]); err == nil {
			c.Close()
			if c, err := net.Dial("tcp", h.addr); err == nil {
				c.Close()
				return h, nil
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	h.stop()
	return nil, fmt.Errorf("haproxy or the apps did not come up; see %s/log", root)
}

func (h *haproxy) address() string { return h.addr }

// upgrade reloads HAProxy and waits until a new worker runs.
func (h *haproxy) upgrade() error {
	before := h.workers()
	h.master.Process.Signal(syscall.SIGUSR2)
	for range 400 {
		for _, w := range h.workers() {
			if !strings.Contains(" "+strings.Join(before, " ")+" ", " "+w+" ") {
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("no new HAProxy worker within 4 s of SIGUSR2")
}

func (h *haproxy) kill() error { return fmt.Errorf("-kills: not for HAProxy") }

// workers are the pids of the master's children.
func (h *haproxy) workers() []string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", h.master.Process.Pid, h.master.Process.Pid))
	return strings.Fields(string(b))
}

func (h *haproxy) stop() {
	if h.master != nil && h.master.Process != nil {
		h.master.Process.Signal(syscall.SIGTERM)
		h.master.Wait()
	}
	for _, a := range h.apps {
		a.Process.Signal(syscall.SIGTERM)
		a.Wait()
	}
	os.RemoveAll(h.root)
}

func haproxyVersion() string {
	out, _ := exec.Command("haproxy", "-v").Output()
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return f[2]
	}
	return strconv.Quote(string(out))
}
