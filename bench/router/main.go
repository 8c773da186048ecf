// Command router benchmarks hostel's router against a direct connection to
// the backend and, when they are installed, nginx and Caddy as reverse
// proxies, all on loopback in one run so that the numbers are comparable.
//
//	go run ./bench/router [-duration 10s] [-conns 32]
//
// The backend and the hostel router each run in a child process (this same
// binary, re-executed with "backend" or "router") so that the load
// generator, the proxy and the backend do not share one Go scheduler. The
// load comes from wrk when it is on PATH, else from a built-in closed-loop
// generator with -conns keep-alive connections. Output is Markdown.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"hostel/bench/internal/hostelserve"
	"hostel/internal/accesslog"
	"hostel/internal/daemon"
	"hostel/internal/metrics"
	"hostel/internal/router"
	"hostel/internal/spec"
)

// benchHost is the public domain the router child serves; every target is
// requested with it so that requests are alike.
const benchHost = "bench.test"

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "backend":
			childMain(runBackend)
			return
		case "router":
			childMainFront()
			return
		case "router-nethttp":
			childMain(runRouter)
			return
		case "router-tls":
			childMainTLS()
			return
		}
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/router:", err)
		os.Exit(1)
	}
}

type config struct {
	duration  time.Duration
	warmup    time.Duration
	conns     int
	threads   int
	delay     time.Duration
	rate      int
	rateConns int
	gen       string
	rounds    int
	// metricsOnly measures the router with and without metrics and
	// nothing else.
	metricsOnly bool
}

func run() error {
	var cfg config
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured duration of each run")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured warm-up before each run")
	fs.IntVar(&cfg.conns, "conns", 32, "concurrent keep-alive connections")
	fs.IntVar(&cfg.threads, "threads", 1, "wrk threads")
	fs.DurationVar(&cfg.delay, "delay", 5*time.Millisecond, "backend delay for the second table; 0 skips it")
	fs.IntVar(&cfg.rate, "rate", 15000, "fixed request rate for the latency table (direct, hostel, nginx); 0 skips it")
	fs.IntVar(&cfg.rateConns, "rate-conns", 64, "connections of the fixed-rate load")
	fs.StringVar(&cfg.gen, "gen", "auto", `load generator: "wrk", "go" or "auto" (wrk if on PATH)`)
	fs.BoolVar(&cfg.metricsOnly, "metrics-only", false, "measure only the router with metrics off and on, alternately")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds over all targets, every other one in reverse order; the tables show each target's medians")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		os.Exit(2)
	}
	if cfg.gen == "auto" {
		cfg.gen = "go"
		if _, err := exec.LookPath("wrk"); err == nil {
			cfg.gen = "wrk"
		}
	}
	if cfg.rounds < 1 {
		return fmt.Errorf("-rounds %d: want at least 1", cfg.rounds)
	}
	if cfg.gen != "wrk" && cfg.gen != "go" {
		return fmt.Errorf("-gen %q: want wrk, go or auto", cfg.gen)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	procs := &children{}
	defer procs.stopAll()

	tmp, err := os.MkdirTemp("", "hostel-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	fmt.Printf("# hostel router benchmark\n\n")
	fmt.Printf("%s/%s, %d CPUs, %s; load: %s, %d connections, %s per run (after %s warm-up), %d rounds; backend: hello world.\n\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), genName(cfg), cfg.conns, cfg.duration, cfg.warmup, cfg.rounds)

	backend, err := procs.startSelf(ctx, "direct", "backend")
	if err != nil {
		return err
	}
	if cfg.metricsOnly {
		return measureMetrics(ctx, cfg, procs, backend, tmp)
	}
	targets := []target{backend}
	for _, c := range []struct{ name, mode string }{
		{"hostel", "router"},
		{"hostel https (TLS 1.3, internal CA)", "router-tls"},
		{"hostel (net/http server)", "router-nethttp"},
	} {
		t, err := procs.startSelf(ctx, c.name, c.mode, "-backend", backend.addr)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	// The router counting into hostel's Prometheus series, then also
	// writing the access log (the daemon's hook), measured right after
	// the router without, for their cost.
	withMetrics := len(targets)
	more, err := startMetricsTargets(ctx, procs, backend, tmp)
	if err != nil {
		return err
	}
	targets = append(targets, more...)
	nginx := -1
	if t, err := startNginx(ctx, procs, tmp, backend.addr); err != nil {
		fmt.Fprintln(os.Stderr, "bench/router: nginx skipped:", err)
	} else if t.addr != "" {
		nginx = len(targets)
		targets = append(targets, t)
	}
	if t, err := startCaddy(ctx, procs, tmp, backend.addr); err != nil {
		fmt.Fprintln(os.Stderr, "bench/router: caddy skipped:", err)
	} else if t.addr != "" {
		targets = append(targets, t)
	}
	// direct, hostel and nginx are measured one after the other.
	order := []int{0, 1, withMetrics, withMetrics + 1}
	if nginx > 0 {
		order = append(order, nginx)
	}
	for i := range targets {
		if !slices.Contains(order, i) {
			order = append(order, i)
		}
	}
	results, runs, err := measureAll(ctx, cfg, targets, order)
	if err != nil {
		return err
	}
	if cfg.rounds > 1 {
		printRounds(runs, nginx)
	}
	printTable(results)
	fmt.Printf("\nHTTPS through the router: %.2f× its HTTP throughput (bar: ≥ 0.70×).\n", results[2].rps/results[1].rps)
	printMetricsCost(runs[1], runs[withMetrics:withMetrics+2], results[1], results[withMetrics:withMetrics+2])

	if cfg.rate > 0 {
		rt := []target{targets[0], targets[1]}
		if nginx > 0 {
			rt = append(rt, targets[nginx])
		}
		if err := printRateTable(ctx, cfg, rt); err != nil {
			return err
		}
	}

	if cfg.delay > 0 {
		slow, err := procs.startSelf(ctx, "direct", "backend", "-delay", cfg.delay.String())
		if err != nil {
			return err
		}
		slowHostel, err := procs.startSelf(ctx, "hostel", "router", "-backend", slow.addr)
		if err != nil {
			return err
		}
		fmt.Printf("\n## Backend with a %s delay\n\n", cfg.delay)
		results, _, err := measureAll(ctx, cfg, []target{slow, slowHostel}, nil)
		if err != nil {
			return err
		}
		printTable(results)
	}
	return nil
}

func genName(cfg config) string {
	if cfg.gen == "wrk" {
		return fmt.Sprintf("wrk -t%d", cfg.threads)
	}
	return "built-in Go closed loop"
}

type target struct {
	name string
	addr string // host:port
	pgid int    // the server's process group, for its CPU time; 0 if unknown
}

type result struct {
	target
	rps      float64
	p50, p99 time.Duration
	cpu      time.Duration // the server's CPU time per request; 0 if unknown
	errors   int64
}

// measureAll measures every target cfg.rounds times and returns each
// target's medians, and every round's results. A round measures the
// targets in the order of their indexes in order (all of them if nil),
// every other round in reverse (A B C, C B A, …), so that a drift of the
// machine's speed during the run weighs on all alike.
func measureAll(ctx context.Context, cfg config, targets []target, order []int) ([]result, [][]result, error) {
	if order == nil {
		for i := range targets {
			order = append(order, i)
		}
	}
	runs := make([][]result, len(targets))
	for round := range cfg.rounds {
		for k := range order {
			i := order[k]
			if round%2 == 1 {
				i = order[len(order)-1-k]
			}
			t := targets[i]
			fmt.Fprintf(os.Stderr, "bench/router: round %d: measuring %s at %s…\n", round+1, t.name, t.addr)
			if cfg.warmup > 0 {
				if _, err := measure(ctx, cfg, t, cfg.warmup); err != nil {
					return nil, nil, fmt.Errorf("%s: warm-up: %w", t.name, err)
				}
			}
			cpu0, cpuOK := groupCPU(t.pgid)
			r, err := measure(ctx, cfg, t, cfg.duration)
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", t.name, err)
			}
			if cpu1, ok := groupCPU(t.pgid); ok && cpuOK && r.rps > 0 {
				r.cpu = time.Duration(float64(cpu1-cpu0) / (r.rps * cfg.duration.Seconds()))
			}
			runs[i] = append(runs[i], r)
		}
	}
	out := make([]result, len(targets))
	for i, rs := range runs {
		out[i] = medianResult(rs)
	}
	return out, runs, nil
}

// printRounds prints each round's throughput of every target as a ratio
// to direct's in the same round, and of hostel (runs[1]) to nginx's
// (runs[nginx], if nginx > 0): measured one after the other, that pair is
// the least touched by the machine's drift.
func printRounds(runs [][]result, nginx int) {
	fmt.Print("Throughput × direct, round by round: ")
	for i, rs := range runs[1:] {
		if i > 0 {
			fmt.Print("; ")
		}
		fmt.Printf("%s", rs[0].name)
		for k, r := range rs {
			fmt.Printf(" %.2f", r.rps/runs[0][k].rps)
		}
	}
	fmt.Print(".\n\n")
	if nginx <= 0 {
		return
	}
	var ratios []float64
	fmt.Print("hostel ÷ nginx throughput, round by round:")
	for k, r := range runs[1] {
		ratios = append(ratios, r.rps/runs[nginx][k].rps)
		fmt.Printf(" %.2f", ratios[k])
	}
	slices.Sort(ratios)
	fmt.Printf("; median %.2f.\n\n", ratios[len(ratios)/2])
}

// medianResult is the median of each measure over rs (taken separately),
// with the errors of all of them.
func medianResult(rs []result) result {
	m := result{target: rs[0].target}
	med := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	m.rps = med(func(r result) float64 { return r.rps })
	m.p50 = time.Duration(med(func(r result) float64 { return float64(r.p50) }))
	m.p99 = time.Duration(med(func(r result) float64 { return float64(r.p99) }))
	m.cpu = time.Duration(med(func(r result) float64 { return float64(r.cpu) }))
	for _, r := range rs {
		m.errors += r.errors
	}
	return m
}

func measure(ctx context.Context, cfg config, t target, d time.Duration) (result, error) {
	if cfg.gen == "wrk" {
		return measureWrk(ctx, cfg, t, d)
	}
	return measureGo(ctx, cfg, t, d)
}

func printTable(rs []result) {
	fmt.Println("| target | req/s | × direct | p50 | p99 | added p50 | added p99 | CPU/req | errors |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	direct := rs[0]
	for _, r := range rs {
		added50, added99 := "—", "—"
		if r.name != direct.name {
			added50, added99 = signed(r.p50-direct.p50), signed(r.p99-direct.p99)
		}
		cpu := "—"
		if r.cpu > 0 {
			cpu = fmt.Sprintf("%.1fµs", float64(r.cpu)/float64(time.Microsecond))
		}
		fmt.Printf("| %s | %.0f | %.2f× | %s | %s | %s | %s | %s | %d |\n",
			r.name, r.rps, r.rps/direct.rps, fmtDur(r.p50), fmtDur(r.p99), added50, added99, cpu, r.errors)
	}
}

func fmtDur(d time.Duration) string {
	if d < 0 {
		return "-" + fmtDur(-d)
	}
	if d < time.Millisecond {
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

func signed(d time.Duration) string {
	if d >= 0 {
		return "+" + fmtDur(d)
	}
	return fmtDur(d)
}

// --- load generators ---

var (
	wrkRPS     = regexp.MustCompile(`(?m)^Requests/sec:\s+([\d.]+)`)
	wrkPct     = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$`)
	wrkNon2xx  = regexp.MustCompile(`(?m)Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSockErr = regexp.MustCompile(`(?m)Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func measureWrk(ctx context.Context, cfg config, t target, d time.Duration) (result, error) {
	secs := max(1, int((d+time.Second/2)/time.Second)) // wrk takes whole seconds
	cmd := exec.CommandContext(ctx, "wrk", "-t"+strconv.Itoa(cfg.threads), "-c"+strconv.Itoa(cfg.conns),
		"-d"+strconv.Itoa(secs)+"s", "--latency", "-H", "Host: "+benchHost, targetURL(t.addr))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	return parseWrk(t, string(out))
}

func parseWrk(t target, out string) (result, error) {
	r := result{target: t}
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk: no Requests/sec in output:\n%s", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	for _, m := range wrkPct.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute}[m[3]]
		d := time.Duration(v * float64(unit))
		if m[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if r.p50 == 0 || r.p99 == 0 {
		return r, fmt.Errorf("wrk: no latency distribution in output:\n%s", out)
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.errors += n
	}
	if m := wrkSockErr.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.errors += n
		}
	}
	return r, nil
}

// measureGo is a closed-loop generator: each of cfg.conns goroutines keeps
// one connection and sends the next request when the last answer is read.
func measureGo(ctx context.Context, cfg config, t target, d time.Duration) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu     sync.Mutex
		lats   []time.Duration
		errs   int64
		wg     sync.WaitGroup
		start  = time.Now()
		fatals []error
	)
	for range cfg.conns {
		wg.Go(func() {
			var local []time.Duration
			var localErrs int64
			defer func() {
				mu.Lock()
				lats = append(lats, local...)
				errs += localErrs
				mu.Unlock()
			}()
			var conn net.Conn
			var br *bufio.Reader
			for ctx.Err() == nil {
				if conn == nil {
					c, err := dialTarget(t.addr)
					if err != nil {
						mu.Lock()
						fatals = append(fatals, err)
						mu.Unlock()
						return
					}
					conn, br = c, bufio.NewReader(c)
				}
				t0 := time.Now()
				status, closing, err := exchange(conn, br)
				if err != nil || status != 200 {
					localErrs++
				}
				if err != nil || closing {
					// A server may end a keep-alive connection (nginx
					// after keepalive_requests); that is no error.
					conn.Close()
					conn = nil
					if err != nil {
						continue
					}
				}
				local = append(local, time.Since(t0))
			}
			if conn != nil {
				conn.Close()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(fatals) > 0 {
		return result{}, fmt.Errorf("dial: %w", fatals[0])
	}
	if len(lats) == 0 {
		return result{}, fmt.Errorf("no request completed")
	}
	slices.Sort(lats)
	return result{
		target: t,
		rps:    float64(len(lats)) / elapsed.Seconds(),
		p50:    lats[len(lats)*50/100],
		p99:    lats[len(lats)*99/100],
		errors: errs,
	}, nil
}

// benchRequest is the request every generator sends.
var benchRequest = []byte("GET / HTTP/1.1\r\nHost: " + benchHost + "\r\n\r\n")

// exchange sends benchRequest on c and reads the response from br, body
// and all: its status and whether the server closes the connection.
func exchange(c net.Conn, br *bufio.Reader) (status int, closing bool, err error) {
	if _, err := c.Write(benchRequest); err != nil {
		return 0, false, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, false, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Close, err
}

// --- peers ---

func startNginx(ctx context.Context, procs *children, tmp, backend string) (target, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return target{}, nil
	}
	port, err := hostelserve.FreePort()
	if err != nil {
		return target{}, err
	}
	dir := filepath.Join(tmp, "nginx")
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return target{}, err
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers then can write the temp paths under dir
	}
	conf := fmt.Sprintf(`%s
worker_processes 1;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000; # like Go's server: no per-connection limit
  client_body_temp_path %[2]s/client_body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  upstream backend {
    server %[3]s;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:%[4]d;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }
  }
}
`, user, dir, backend, port)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return target{}, err
	}
	// -e: nginx opens its compiled-in error log before it reads the config.
	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "logs", "error.log"))
	t := target{name: "nginx (1 worker, keepalive)", addr: fmt.Sprintf("127.0.0.1:%d", port)}
	if err := procs.start(ctx, cmd, &t); err != nil {
		return target{}, fmt.Errorf("%w (see %s/logs/error.log)", err, dir)
	}
	return t, nil
}

func startCaddy(ctx context.Context, procs *children, tmp, backend string) (target, error) {
	bin, err := exec.LookPath("caddy")
	if err != nil {
		return target{}, nil
	}
	port, err := hostelserve.FreePort()
	if err != nil {
		return target{}, err
	}
	dir := filepath.Join(tmp, "caddy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return target{}, err
	}
	conf := fmt.Sprintf(`{
	admin off
	auto_https off
}
http://:%d {
	bind 127.0.0.1
	reverse_proxy %s
}
`, port, backend)
	confPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return target{}, err
	}
	cmd := exec.Command(bin, "run", "--config", confPath, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	logf, err := os.Create(filepath.Join(dir, "caddy.log"))
	if err != nil {
		return target{}, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	t := target{name: "caddy reverse_proxy", addr: fmt.Sprintf("127.0.0.1:%d", port)}
	if err := procs.start(ctx, cmd, &t); err != nil {
		return target{}, fmt.Errorf("%w (see %s)", err, logf.Name())
	}
	return t, nil
}

// targetURL is the URL of "/" at addr: "host:port" (HTTP) or
// "https://host:port".
func targetURL(addr string) string {
	if strings.HasPrefix(addr, "https://") {
		return addr + "/"
	}
	return "http://" + addr + "/"
}

// dialTarget connects to addr, over TLS for "https://host:port".
func dialTarget(addr string) (net.Conn, error) {
	if a, ok := strings.CutPrefix(addr, "https://"); ok {
		return tls.Dial("tcp", a, insecureTLS)
	}
	return net.Dial("tcp", addr)
}

// --- child processes ---

// children are the processes this run started; stopAll ends them all.
type children struct {
	mu    sync.Mutex
	procs []*exec.Cmd
}

// startSelf re-executes this binary as a child in mode ("backend",
// "router", …) and returns it as a target named name, at the address it
// reports on its first stdout line.
func (cs *children) startSelf(ctx context.Context, name, mode string, args ...string) (target, error) {
	self, err := os.Executable()
	if err != nil {
		return target{}, err
	}
	cmd := exec.Command(self, append([]string{mode}, args...)...)
	cmd.Stderr = os.Stderr
	// The child exits when its stdin reaches EOF, i.e. when this process
	// is gone, however it went.
	if _, err := cmd.StdinPipe(); err != nil {
		return target{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return target{}, err
	}
	if err := cs.launch(cmd); err != nil {
		return target{}, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		return target{}, fmt.Errorf("%s child: no address reported (%q, %v)", mode, line, err)
	}
	if err := waitReady(ctx, addr); err != nil {
		return target{}, fmt.Errorf("%s child: %w", mode, err)
	}
	return target{name: name, addr: addr, pgid: cmd.Process.Pid}, nil
}

// start runs an external server and waits until t.addr answers; it sets
// t.pgid.
func (cs *children) start(ctx context.Context, cmd *exec.Cmd, t *target) error {
	if err := cs.launch(cmd); err != nil {
		return err
	}
	t.pgid = cmd.Process.Pid
	return waitReady(ctx, t.addr)
}

func (cs *children) launch(cmd *exec.Cmd) error {
	// Own process group, so that stopAll reaches nginx's worker too;
	// parent-death signal (Linux) for when this process is killed outright.
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	cs.mu.Lock()
	cs.procs = append(cs.procs, cmd)
	cs.mu.Unlock()
	return nil
}

func (cs *children) stopAll() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, cmd := range cs.procs {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	for _, cmd := range cs.procs {
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	cs.procs = nil
}

func waitReady(ctx context.Context, addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: insecureTLS}}
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", targetURL(addr), nil)
		req.Host = benchHost
		resp, err := c.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				c.CloseIdleConnections()
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// childMain runs a child mode: it listens on loopback, reports the address
// on stdout, serves, and exits when stdin closes (the parent is gone).
func childMain(serve func(args []string) (http.Handler, error)) {
	h, err := serve(os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/router %s: %v\n", os.Args[1], err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/router %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintf(os.Stderr, "bench/router %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

var hello = []byte("hello, world\n")

func runBackend(args []string) (http.Handler, error) {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	delay := fs.Duration("delay", 0, "sleep before answering")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *delay > 0 {
			time.Sleep(*delay)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(hello)
	}), nil
}

func runRouter(args []string) (http.Handler, error) {
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	backend := fs.String("backend", "", "backend address host:port")
	withMetrics := fs.Bool("metrics", false, "count requests into hostel's Prometheus series, as the daemon does")
	accessRoot := fs.String("access-log", "", "with -metrics, write the access log under this root too, as the daemon does")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *backend == "" {
		return nil, fmt.Errorf("-backend is required")
	}
	opts := router.Options{Zone: spec.DefaultZone, Logf: func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "bench/router router: "+format+"\n", args...)
	}}
	switch {
	case *withMetrics && *accessRoot != "":
		opts.Requests = daemon.RequestHook(metrics.New(""), accesslog.New(*accessRoot, 0))
	case *withMetrics:
		opts.Requests = metrics.New("")
	}
	r := router.New(opts)
	key := spec.Key("hello", "000000000000")
	r.AddBackend(key, *backend)
	if err := r.Swap(router.Table{Domains: map[string]spec.VersionKey{benchHost: key}}); err != nil {
		return nil, err
	}
	return r, nil
}
