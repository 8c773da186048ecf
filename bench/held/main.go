// Command held measures what held requests cost a real daemon (issue 19,
// item 5), beside nginx in the same run: requests to a paused service
// (`hostel pause`) are held by hostel; nginx's peer is an upstream that
// holds every request until the bench lets it answer.
//
//	go run ./bench/held -hostel bin/hostel
//
// It measures, each on hostel and nginx:
//
//   - A 2 GB upload (-upload) over a raw socket (Content-Length, no
//     Expect) and with curl -T (which sends "Expect: 100-continue"); the
//     service is resumed after -resume. Disk written (the processes'
//     write_bytes in /proc), time to the answer, and the answer.
//   - 500 uploads of 1.1 MB (-uploads, -upload-size) held at once:
//     resident memory before, while they are held, and 5 s and 30 s
//     (-later) after they were answered and their connections closed.
//   - 1,000 connections (-heads) each sending a request head just under
//     the target's limit (hostel: 64 KiB; nginx: 4 × 8 KiB), held:
//     resident memory before, while held, and after.
//
// Each scenario runs on fresh processes: what one left in memory does not
// weigh on the next.
//
// nginx is Debian's (apt-get install nginx) and left out if missing; it
// is measured with its default body limit (client_max_body_size 1m: 413
// past it) and without one (then it spools every body to disk before it
// passes it on, as hostel did before issue 19). The binary is also the
// service (`held app`): it answers an upload with the number of bytes it
// read.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"hostel/bench/internal/hostelserve"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "app" {
		serveApp()
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "held:", err)
		os.Exit(1)
	}
}

// serveApp is the deployed service: it reads a request's body and answers
// how many bytes it read.
func serveApp() {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "got %d\n", n)
	})
	err := http.ListenAndServe(os.Getenv("HOST")+":"+os.Getenv("PORT"), h)
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// target is a proxy under test: where clients connect, how it is made to
// hold requests and to let them go, and its processes.
type target struct {
	name    string
	addr    string
	host    string
	maxHead int // bytes of a request head just under its limit
	pids    func() []int
	hold    func() error
	release func() error
}

var (
	bigSize    = flag.Int64("upload", 2<<30, "bytes of the large upload; 0 skips it")
	resume     = flag.Duration("resume", 3*time.Second, "how long the large upload is held before the service is resumed")
	uploads    = flag.Int("uploads", 500, "uploads held at once")
	uploadSize = flag.Int("upload-size", 1_100_000, "bytes of each of them")
	heads      = flag.Int("heads", 1000, "connections with a large head held at once")
	later      = flag.Duration("later", 30*time.Second, "when resident memory is read again after the connections closed")
)

func run() error {
	hostelBin := flag.String("hostel", "bin/hostel", "the hostel binary")
	flag.Parse()
	curl, _ := exec.LookPath("curl")
	// Each scenario on fresh processes: what one left in memory does not
	// weigh on the next.
	type side struct {
		t     *target
		close func()
	}
	start := func(which string) (side, error) {
		switch which {
		case "hostel":
			h, err := startHostel(*hostelBin)
			if err != nil {
				return side{}, err
			}
			return side{h.target, h.close}, nil
		}
		up, err := startUpstream()
		if err != nil {
			return side{}, err
		}
		limit := ""
		if which == "nginx unlimited" {
			limit = "0" // no body limit
		}
		n, err := startNginx(up, limit)
		if err != nil || n == nil {
			up.close()
			return side{}, err
		}
		return side{n.target, func() { n.close(); up.close() }}, nil
	}
	if _, err := exec.LookPath("nginx"); err != nil {
		fmt.Fprintln(os.Stderr, "held: nginx is not installed: hostel is measured alone")
	}
	each := func(which []string, f func(t *target)) error {
		for _, w := range which {
			s, err := start(w)
			if err != nil {
				return err
			}
			if s.t == nil {
				continue // no nginx
			}
			f(s.t)
			s.close()
		}
		return nil
	}

	which := []string{"hostel", "nginx", "nginx unlimited"}
	if *bigSize <= 0 {
		which = nil
	} else {
		fmt.Printf("## %s held upload (resumed after %s)\n\n", size(*bigSize), *resume)
		fmt.Printf("| target | client | answer | time to the answer | disk written |\n| --- | --- | --- | ---: | ---: |\n")
	}
	err := each(which, func(t *target) {
		r := bigUpload(t)
		fmt.Printf("| %s | raw socket, no Expect | %s | %s | %s |\n", t.name, r.answer, r.elapsed.Round(time.Millisecond), size(r.disk))
		if curl != "" {
			r := curlUpload(t, curl)
			fmt.Printf("| %s | curl -T (Expect: 100-continue) | %s | %s | %s |\n", t.name, r.answer, r.elapsed.Round(time.Millisecond), size(r.disk))
		}
	})
	if err != nil {
		return err
	}

	// nginx without a body limit: 1.1 MB is past its default.
	fmt.Printf("\n## %d × %s held uploads\n\n", *uploads, size(int64(*uploadSize)))
	fmt.Printf("| target | RSS before | while held | peak | 5 s after | %s after | answers | disk written |\n| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n", *later)
	err = each([]string{"hostel", "nginx unlimited"}, func(t *target) {
		r := manyUploads(t)
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", t.name, size(r.before), size(r.during), size(r.peak), size(r.after), size(r.later), r.answers, size(r.disk))
	})
	if err != nil {
		return err
	}

	fmt.Printf("\n## %d connections with a head just under the limit, held\n\n", *heads)
	fmt.Printf("| target | head | RSS before | while held | peak | 5 s after | %s after | answers |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n", *later)
	err = each([]string{"hostel", "nginx"}, func(t *target) {
		r := manyHeads(t)
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", t.name, size(int64(t.maxHead)), size(r.before), size(r.during), size(r.peak), size(r.after), size(r.later), r.answers)
	})
	if err != nil {
		return err
	}
	return nil
}

// --- the scenarios ---

type uploadResult struct {
	answer  string
	elapsed time.Duration
	disk    int64
}

// bigUpload sends a -upload bytes body over a raw socket, as fast as the
// target takes it, to a held service that is resumed after -resume.
func bigUpload(t *target) uploadResult {
	if err := t.hold(); err != nil {
		return uploadResult{answer: "hold: " + err.Error()}
	}
	defer t.release()
	disk0 := writeBytes(t.pids())
	start := time.Now()
	c, err := net.Dial("tcp", t.addr)
	if err != nil {
		return uploadResult{answer: err.Error()}
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", t.host, *bigSize)
	var wrote atomic.Int64
	writer := make(chan struct{})
	go func() {
		defer close(writer)
		buf := make([]byte, 256<<10)
		for wrote.Load() < *bigSize {
			n, err := c.Write(buf[:min(int64(len(buf)), *bigSize-wrote.Load())])
			wrote.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	resumed := time.AfterFunc(*resume, func() { t.release() })
	defer resumed.Stop()
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	answer := readAnswer(bufio.NewReader(c))
	elapsed := time.Since(start)
	c.Close()
	<-writer
	time.Sleep(time.Second)
	return uploadResult{answer: fmt.Sprintf("%s (%s sent)", answer, size(wrote.Load())), elapsed: elapsed, disk: writeBytes(t.pids()) - disk0}
}

// curlUpload is bigUpload with curl -T of a sparse file.
func curlUpload(t *target, curl string) uploadResult {
	f, err := os.CreateTemp("", "held-upload-")
	if err != nil {
		return uploadResult{answer: err.Error()}
	}
	defer os.Remove(f.Name())
	f.Truncate(*bigSize)
	f.Close()
	if err := t.hold(); err != nil {
		return uploadResult{answer: "hold: " + err.Error()}
	}
	defer t.release()
	disk0 := writeBytes(t.pids())
	resumed := time.AfterFunc(*resume, func() { t.release() })
	defer resumed.Stop()
	start := time.Now()
	out, err := exec.Command(curl, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "--max-time", "120",
		"-H", "Host: "+t.host, "-T", f.Name(), "http://"+t.addr+"/upload").CombinedOutput()
	elapsed := time.Since(start)
	time.Sleep(time.Second)
	answer := strings.TrimSpace(string(out))
	if code, sent, ok := strings.Cut(answer, " "); ok && err == nil {
		n, _ := strconv.ParseInt(sent, 10, 64)
		answer = fmt.Sprintf("%s (%s sent)", code, size(n))
	} else if err != nil {
		answer = fmt.Sprintf("%s: %v", answer, err)
	}
	return uploadResult{answer: answer, elapsed: elapsed, disk: writeBytes(t.pids()) - disk0}
}

type memResult struct {
	before, during, peak, after, later, disk int64
	answers                                  string
}

// manyUploads holds -uploads uploads at once.
func manyUploads(t *target) memResult {
	body := make([]byte, *uploadSize)
	head := fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", t.host, len(body))
	return holdMany(t, *uploads, func(c net.Conn) error {
		if _, err := io.WriteString(c, head); err != nil {
			return err
		}
		_, err := c.Write(body)
		return err
	})
}

// manyHeads holds -heads requests with a head just under the limit.
func manyHeads(t *target) memResult {
	// nginx: one field at most 8 KiB, four buffers in all; hostel: one
	// head of 64 KiB.
	var b strings.Builder
	fmt.Fprintf(&b, "GET / HTTP/1.1\r\nHost: %s\r\n", t.host)
	for i := 0; b.Len() < t.maxHead-8000-4; i++ {
		fmt.Fprintf(&b, "X-Big-%d: %s\r\n", i, strings.Repeat("a", min(7900, t.maxHead-b.Len()-20)))
	}
	b.WriteString("\r\n")
	head := b.String()
	return holdMany(t, *heads, func(c net.Conn) error {
		_, err := io.WriteString(c, head)
		return err
	})
}

// holdMany opens n connections, sends on each with send while the
// target holds requests, measures, lets them go and reads the answers.
func holdMany(t *target, n int, send func(c net.Conn) error) memResult {
	var r memResult
	if err := t.hold(); err != nil {
		r.answers = "hold: " + err.Error()
		return r
	}
	defer t.release()
	time.Sleep(time.Second)
	r.before, _ = rss(t.pids())
	disk0 := writeBytes(t.pids())
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	var sendErrs atomic.Int64
	for i := range conns {
		c, err := net.Dial("tcp", t.addr)
		if err != nil {
			r.answers = err.Error()
			return r
		}
		defer c.Close()
		conns[i] = c
		wg.Go(func() {
			c.SetWriteDeadline(time.Now().Add(time.Minute))
			if send(c) != nil {
				sendErrs.Add(1)
			}
		})
	}
	wg.Wait()
	time.Sleep(2 * time.Second)
	r.during, _ = rss(t.pids())
	t.release()
	codes := map[string]int{}
	var mu sync.Mutex
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(time.Minute))
			a := readAnswer(bufio.NewReader(c))
			code, _, _ := strings.Cut(a, " ")
			mu.Lock()
			codes[code]++
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	r.disk = writeBytes(t.pids()) - disk0
	time.Sleep(5 * time.Second)
	r.after, r.peak = rss(t.pids())
	time.Sleep(*later - 5*time.Second)
	r.later, _ = rss(t.pids())
	var parts []string
	for code, k := range codes {
		parts = append(parts, fmt.Sprintf("%d × %s", k, code))
	}
	if k := sendErrs.Load(); k > 0 {
		parts = append(parts, fmt.Sprintf("%d sends failed", k))
	}
	r.answers = strings.Join(parts, ", ")
	return r
}

// readAnswer reads a final response and returns its status and the
// start of its body, or why there was none.
func readAnswer(br *bufio.Reader) string {
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return "no answer (" + err.Error() + ")"
		}
		if resp.StatusCode == http.StatusContinue {
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		if len(line) > 60 {
			line = line[:60] + "…"
		}
		return fmt.Sprintf("%d %q", resp.StatusCode, line)
	}
}

// --- hostel ---

type hostel struct {
	*target
	d *hostelserve.Daemon
}

func startHostel(bin string) (*hostel, error) {
	d, err := hostelserve.Start(bin, "hostel-held-")
	if err != nil {
		return nil, err
	}
	self, _ := os.Executable()
	app := filepath.Join(d.Base, "app")
	if err := copyFile(self, app); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.Deploy(map[string]any{"app": map[string]any{"exec": []string{app, "app"}, "domains": []string{"held.test"}}}); err != nil {
		d.Close()
		return nil, err
	}
	out, err := d.CLI("status", "--json")
	if err != nil {
		d.Close()
		return nil, err
	}
	addr, ok := between(string(out), `"http":"`, `"`)
	if !ok {
		addr, _ = between(string(out), `"http": "`, `"`)
	}
	h := &hostel{d: d}
	h.target = &target{name: "hostel", addr: addr, host: "held.test", maxHead: 64<<10 - 200,
		pids: func() []int { return []int{d.Pid} },
		hold: func() error { _, err := d.CLI("pause", "app", "--max", "30m"); return err },
		release: func() error {
			_, err := d.CLI("resume", "app")
			return err
		}}
	return h, nil
}

func (h *hostel) close() { h.d.Close() }

// --- nginx and its upstream ---

// upstream is nginx's app: it holds every request until let go, then
// reads its body and answers how many bytes it read.
type upstream struct {
	addr string
	srv  *http.Server
	mu   sync.Mutex
	gate chan struct{} // closed: requests go through
}

func startUpstream() (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &upstream{addr: ln.Addr().String(), gate: make(chan struct{})}
	close(u.gate)
	u.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		g := u.gate
		u.mu.Unlock()
		<-g
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "got %d\n", n)
	})}
	go u.srv.Serve(ln)
	return u, nil
}

func (u *upstream) hold() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	select {
	case <-u.gate:
		u.gate = make(chan struct{})
	default:
	}
	return nil
}

func (u *upstream) release() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	select {
	case <-u.gate:
	default:
		close(u.gate)
	}
	return nil
}

func (u *upstream) close() { u.srv.Close() }

type nginx struct {
	*target
	cmd *exec.Cmd
	dir string
}

// startNginx starts nginx (1 worker) in front of up; bodyLimit "" keeps
// its default client_max_body_size (1m). nil if nginx is not installed.
func startNginx(up *upstream, bodyLimit string) (*nginx, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return nil, nil
	}
	port, err := hostelserve.FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "held-nginx-")
	if err != nil {
		return nil, err
	}
	os.MkdirAll(filepath.Join(dir, "logs"), 0o755)
	user, limit, name := "", "", "nginx (client_max_body_size 1m, its default)"
	if os.Geteuid() == 0 {
		user = "user root;" // workers then can write the temp paths under dir
	}
	if bodyLimit != "" {
		limit = "client_max_body_size " + bodyLimit + ";"
		name = "nginx (client_max_body_size " + bodyLimit + ")"
	}
	conf := fmt.Sprintf(`%s
worker_processes 1;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/logs/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  %[5]s
  client_body_temp_path %[2]s/client_body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  proxy_read_timeout 10m;
  proxy_send_timeout 10m;
  upstream backend {
    server %[3]s;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:%[4]d backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }
  }
}
`, user, dir, up.addr, port, limit)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "logs", "error.log"))
	// Its own process group: close stops the workers with the master.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &nginx{cmd: cmd, dir: dir}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			n.close()
			return nil, fmt.Errorf("nginx did not listen (see %s/logs/error.log)", dir)
		}
	}
	master := cmd.Process.Pid
	n.target = &target{name: name, addr: addr, host: "held.test", maxHead: 4*8<<10 - 200,
		pids:    func() []int { return append([]int{master}, children(master)...) },
		hold:    up.hold,
		release: up.release}
	return n, nil
}

// close stops nginx, workers and all: the master's fast shutdown, then
// SIGKILL to the group if it takes more than 3 s.
func (n *nginx) close() {
	pgid := n.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
	os.RemoveAll(n.dir)
}

// --- /proc ---

// rss sums the resident memory and its peak of pids, in bytes.
func rss(pids []int) (now, peak int64) {
	for _, pid := range pids {
		now += procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") << 10
		peak += procField(fmt.Sprintf("/proc/%d/status", pid), "VmHWM:") << 10
	}
	return now, peak
}

// writeBytes sums what pids wrote to storage (counted as pages are
// dirtied, so a temporary file unlinked at once counts too).
func writeBytes(pids []int) int64 {
	var n int64
	for _, pid := range pids {
		n += procField(fmt.Sprintf("/proc/%d/io", pid), "write_bytes:")
	}
	return n
}

func procField(path, field string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// children are the processes whose parent is pid.
func children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …: comm may hold spaces.
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			if f := strings.Fields(s[i+1:]); len(f) > 1 && f[1] == strconv.Itoa(pid) {
				out = append(out, p)
			}
		}
	}
	return out
}

// --- helpers ---

// size writes n bytes in decimal units.
func size(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.0f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

func between(s, start, end string) (string, bool) {
	_, rest, ok := strings.Cut(s, start)
	if !ok {
		return "", false
	}
	v, _, ok := strings.Cut(rest, end)
	return v, ok
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}
