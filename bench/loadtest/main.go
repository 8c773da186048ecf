// Command loadtest proves hostel's zero-downtime promise under load: it runs
// a real `hostel serve`, deploys two services (web needs api), drives a
// constant open-loop rate of mixed requests at both — short ones, slow ones,
// five-second ones, server-sent-event streams and uploads — and meanwhile
// runs N deploys that alternate versions of both. It counts non-2xx answers,
// transport errors and answers from a version that was already switched
// away from, and prints latency during deploys.
//
//	go run ./bench/loadtest -hostel bin/hostel -deploys 50 -rate 500
//
// With -exclusive both services are `exclusive`, and the app takes an
// exclusive lock on its STATE_DIRECTORY as it starts and exits if another
// process holds it: a deploy that ran two versions of a service at the
// same moment would fail. It then also prints how long requests were held
// against how long the new versions took from start to ready.
//
//	go run ./bench/loadtest -hostel bin/hostel -deploys 20 -rate 500 -exclusive
//
// With -etcd-embed the daemon keeps its state in an etcd member it runs
// (hostel serve --etcd-embed) instead of bbolt.
//
// With -upgrades N, instead of deploying, it replaces the daemon N times
// (hostel upgrade, to the same binary); with -kills N it kills the daemon
// N times (SIGKILL) and starts `hostel serve` again at once, as a
// machine's supervisor would. Either way it compares the fast requests'
// latency while the daemon is being replaced against the rest of the run.
//
//	go run ./bench/loadtest -hostel bin/hostel -upgrades 50 -rate 500
//	go run ./bench/loadtest -hostel bin/hostel -kills 20 -rate 500
//	go run ./bench/loadtest -haproxy -upgrades 50 -rate 500   # the same against HAProxy's reload
//
// It imports nothing of hostel's packages (only the benchmarks' helper
// that reads a daemon's log): it drives the binary like a user. The same
// binary is also the test app (`loadtest app`).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"hostel/bench/internal/hostelserve"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "app" {
		app()
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// app is the service under test. Every answer carries X-Version.
func app() {
	version := os.Getenv("HOSTEL_VERSION")
	if os.Getenv("LOCK") != "" {
		// Never two versions at once: one started beside another fails.
		f, err := os.OpenFile(filepath.Join(os.Getenv("STATE_DIRECTORY"), "lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err == nil {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "another version holds the lock:", err)
			os.Exit(1)
		}
	}
	apiURL := os.Getenv("API_URL")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /sleep", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		time.Sleep(d)
		w.Header().Set("X-Version", version)
		io.WriteString(w, "done")
	})
	mux.HandleFunc("GET /chain", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(apiURL + "/sleep?d=1ms")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			http.Error(w, "api: "+resp.Status, http.StatusBadGateway)
			return
		}
		w.Header().Set("X-Version", version)
		w.Header().Set("X-Api-Version", resp.Header.Get("X-Version"))
		w.Write(b)
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("X-Version", version)
		fl := w.(http.Flusher)
		for i := range 20 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			fl.Flush()
			time.Sleep(100 * time.Millisecond)
		}
		io.WriteString(w, "data: end\n\n")
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Version", version)
		fmt.Fprintf(w, "%d", n)
	})
	srv := &http.Server{Addr: net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT")), Handler: mux}
	go srv.ListenAndServe()
	// Like any well-behaved app: on SIGTERM, finish what was accepted.
	waitTerm()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}

type config struct {
	hostel   string
	deploys  int
	rate     int
	warmup   time.Duration
	pause    time.Duration
	verbose  bool
	keepRoot bool
	// exclusive makes both services exclusive and their processes lock
	// their state directory.
	exclusive bool
	// previews deploys and removes a preview each round instead of
	// deploying production.
	previews bool
	// etcdEmbed runs the daemon with its state in an etcd member.
	etcdEmbed bool
	// upgrades and kills replace the daemon instead of deploying.
	upgrades, kills int
	// haproxy replaces hostel by Debian's HAProxy in front of the same
	// two apps, reloaded for each upgrade.
	haproxy bool
	// hold binds the daemon's listeners in this process and passes them
	// to each hostel serve it starts (LISTEN_FDS), as systemd's
	// hostel.socket does; restartAfter is its RestartSec.
	hold         bool
	restartAfter time.Duration
}

func run() error {
	var c config
	flag.StringVar(&c.hostel, "hostel", "bin/hostel", "the hostel binary")
	flag.IntVar(&c.deploys, "deploys", 50, "how many deploys to run under load")
	flag.IntVar(&c.rate, "rate", 500, "requests per second, open loop")
	flag.DurationVar(&c.warmup, "warmup", 2*time.Second, "load before the first deploy")
	flag.DurationVar(&c.pause, "pause", 300*time.Millisecond, "load between deploys")
	flag.BoolVar(&c.verbose, "v", false, "print every deploy's output")
	flag.BoolVar(&c.keepRoot, "keep", false, "keep the temporary root")
	flag.BoolVar(&c.exclusive, "exclusive", false, "make both services exclusive; a version started beside another fails")
	flag.BoolVar(&c.previews, "previews", false, "instead of deploying production, deploy a preview (web changed, api shared) and remove it, each round")
	flag.BoolVar(&c.etcdEmbed, "etcd-embed", false, "keep the daemon's state in an etcd member it runs (serve --etcd-embed) instead of bbolt")
	flag.IntVar(&c.upgrades, "upgrades", 0, "instead of deploys, replace the daemon this many times under load (hostel upgrade)")
	flag.IntVar(&c.kills, "kills", 0, "instead of deploys, SIGKILL the daemon this many times under load and start hostel serve again at once")
	flag.BoolVar(&c.haproxy, "haproxy", false, "with -upgrades: the same apps and load behind HAProxy (apt-get install haproxy), reloaded with expose-fd listeners instead of hostel upgrade")
	flag.BoolVar(&c.hold, "hold", false, "hold the daemon's listeners (public HTTP, API socket) in this process and pass them to every hostel serve it starts, as systemd's hostel.socket does")
	flag.DurationVar(&c.restartAfter, "restart-after", 100*time.Millisecond, "with -hold -kills: how long after a kill hostel serve starts again (systemd's RestartSec)")
	flag.Parse()
	if c.upgrades > 0 || c.kills > 0 {
		return replaceDaemon(c)
	}

	h, err := startHostel(c)
	if err != nil {
		return err
	}
	defer h.stop()

	if err := h.deploy(0); err != nil {
		return fmt.Errorf("first deploy: %w", err)
	}
	l := newLoad(h.addr, c.rate)
	ctx, stopLoad := context.WithCancel(context.Background())
	loadDone := make(chan struct{})
	go func() { l.run(ctx); close(loadDone) }()

	time.Sleep(c.warmup)
	t0 := time.Now()
	var deployErrs int
	var overhead, readies []time.Duration
	for i := 1; i <= c.deploys; i++ {
		start := time.Now()
		l.deploying.Store(true)
		var err error
		if c.previews {
			err = h.preview(i)
		} else {
			err = h.deploy(i)
		}
		l.deploying.Store(false)
		if err != nil {
			deployErrs++
			fmt.Fprintf(os.Stderr, "deploy %d: %v\n", i, err)
		} else if !c.previews {
			overhead = append(overhead, h.lastOverhead)
			readies = append(readies, h.lastReady)
		}
		if c.verbose {
			fmt.Printf("deploy %d: %s\n", i, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(c.pause)
	}
	elapsed := time.Since(t0)
	stopLoad()
	<-loadDone
	l.wait()

	stale := l.staleCount(h.switches())
	s := l.summary()
	store := "bbolt"
	if c.etcdEmbed {
		store = "etcd member in the daemon (--etcd-embed)"
	}
	fmt.Printf("store:            %s\n", store)
	fmt.Printf("deploys:          %d (%d failed) in %s\n", c.deploys, deployErrs, elapsed.Round(time.Millisecond))
	fmt.Printf("requests:         %d sent at %d/s open loop (%d fast, %d slow 200ms, %d slow 5s, %d streams, %d uploads)\n",
		s.total, c.rate, s.kinds["fast"], s.kinds["slow"], s.kinds["slower"], s.kinds["stream"], s.kinds["upload"])
	fmt.Printf("non-2xx:          %d\n", s.non2xx)
	fmt.Printf("transport errors: %d\n", s.errors)
	fmt.Printf("stale answers:    %d (started after a switch, answered by the version switched away from)\n", stale)
	fmt.Printf("latency of fast requests during deploys: p50 %s, p99 %s (all: p50 %s, p99 %s)\n",
		s.p50Deploy, s.p99Deploy, s.p50, s.p99)
	fmt.Printf("fast requests over 1 s: %d\n", s.slowFast)
	if len(overhead) > 0 {
		sort.Slice(overhead, func(i, j int) bool { return overhead[i] < overhead[j] })
		fmt.Printf("deploy overhead (time to the switch minus the new versions' own time to ready): median %s, max %s\n",
			overhead[len(overhead)/2].Round(time.Millisecond), overhead[len(overhead)-1].Round(time.Millisecond))
	}
	if c.exclusive && len(readies) > 0 {
		sort.Slice(readies, func(i, j int) bool { return readies[i] < readies[j] })
		fmt.Printf("exclusive: fast requests during deploys (held while the old version stopped and the new one started) p99 %s, against the new versions' start→ready median %s, max %s; no deploy failed, so no two versions of a service ran at once\n",
			s.p99Deploy, readies[len(readies)/2].Round(time.Millisecond), readies[len(readies)-1].Round(time.Millisecond))
	}
	for _, e := range s.examples {
		fmt.Println("  e.g.", e)
	}
	if c.previews && len(previewTimes) > 0 {
		sort.Slice(previewTimes, func(i, j int) bool { return previewTimes[i] < previewTimes[j] })
		fmt.Printf("previews: %d deployed (one own process each, api shared) and removed while production served; deploy --env to the preview answering: median %s, max %s\n",
			len(previewTimes), previewTimes[len(previewTimes)/2].Round(time.Millisecond), previewTimes[len(previewTimes)-1].Round(time.Millisecond))
	}
	if s.non2xx+s.errors+stale+deployErrs > 0 {
		return fmt.Errorf("FAIL: %d non-2xx, %d transport errors, %d stale, %d failed deploys", s.non2xx, s.errors, stale, deployErrs)
	}
	fmt.Println("loadtest: PASS")
	return nil
}

// hostel is a running daemon in a temporary root.
type hostel struct {
	c            config
	root, bin    string
	serve        []string   // hostel serve's arguments
	held         []*os.File // with -hold, the sockets passed to each daemon
	addr         string
	cmd          *exec.Cmd
	mu           sync.Mutex
	switched     []switchEvent
	lastOverhead time.Duration
	lastReady    time.Duration // the new versions' own start→ready, summed
}

type switchEvent struct {
	at       time.Time
	versions map[string]string // service → version live after the switch
}

func startHostel(c config) (*hostel, error) {
	root, err := os.MkdirTemp("", "hostel-loadtest-")
	if err != nil {
		return nil, err
	}
	os.Chmod(root, 0o755)
	h := &hostel{c: c, root: root}
	// The app is this binary; copy it where service users can run it.
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	h.bin = filepath.Join(root, "loadtest")
	if err := copyFile(self, h.bin); err != nil {
		return nil, err
	}
	hostelBin, err := filepath.Abs(c.hostel)
	if err != nil {
		return nil, err
	}
	h.c.hostel = hostelBin
	serve := []string{"serve", "--root", filepath.Join(root, "root"), "--http", "127.0.0.1:0", "--https", ""}
	if c.etcdEmbed {
		serve = append(serve, "--etcd-embed")
	}
	h.serve = serve
	if c.hold {
		if err := h.holdSockets(); err != nil {
			return nil, err
		}
	}
	if err := h.start(); err != nil {
		return nil, err
	}
	for range 200 {
		out, err := h.hostel("status", "--json")
		var st struct{ Listen struct{ HTTP string } }
		if err == nil && json.Unmarshal(out, &st) == nil && st.Listen.HTTP != "" {
			h.addr = st.Listen.HTTP
			return h, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.stop()
	return nil, fmt.Errorf("hostel serve did not come up; see %s/daemon.log", root)
}

// start runs hostel serve, its output appended to ROOT/daemon.log.
func (h *hostel) start() error {
	h.cmd = exec.Command(h.c.hostel, h.serve...)
	logf, err := os.OpenFile(filepath.Join(h.root, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	if h.held != nil {
		h.cmd.ExtraFiles = h.held
		// LISTEN_PID cannot be known before the process runs: hostel
		// serve takes the parent's pid in its place.
		h.cmd.Env = append(os.Environ(), "LISTEN_FDS=2", "LISTEN_FDNAMES=hostel:hostel", fmt.Sprintf("HOSTEL_LISTEN_PARENT=%d", os.Getpid()))
	}
	return h.cmd.Start()
}

// holdSockets binds the public HTTP listener and the API socket here, to
// pass them to every daemon: they outlive each one.
func (h *hostel) holdSockets() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	i := slices.Index(h.serve, "--http")
	h.serve[i+1] = ln.Addr().String()
	root := filepath.Join(h.root, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	api, err := net.Listen("unix", filepath.Join(root, "hostel.sock"))
	if err != nil {
		return err
	}
	for _, l := range []interface{ File() (*os.File, error) }{ln.(*net.TCPListener), api.(*net.UnixListener)} {
		f, err := l.File()
		if err != nil {
			return err
		}
		h.held = append(h.held, f)
	}
	return nil
}

func (h *hostel) hostel(args ...string) ([]byte, error) {
	cmd := exec.Command(h.c.hostel, append([]string{"--root", filepath.Join(h.root, "root")}, args...)...)
	cmd.Dir = h.root
	return cmd.Output()
}

func (h *hostel) stop() {
	if h.cmd != nil && h.cmd.Process != nil {
		// shutdown stops the services too; a plain SIGTERM would leave
		// them running for the next daemon to adopt.
		if _, err := h.hostel("shutdown"); err != nil {
			h.cmd.Process.Signal(os.Interrupt)
		}
		done := make(chan struct{})
		go func() { h.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			h.cmd.Process.Kill()
		}
	}
	if !h.c.keepRoot {
		os.RemoveAll(h.root)
	}
}

// previewTimes are the times from `deploy --env` to the preview answering.
var previewTimes []time.Duration

// preview deploys preview pr-i of production's first spec with web
// changed (so the preview starts its own web and shares production's
// api), checks that it answers on its internal name, and removes it.
// Production's routes never switch, so no switch is recorded.
func (h *hostel) preview(i int) error {
	spec := h.spec(0)
	web := spec["services"].(map[string]any)["web"].(map[string]any)
	web["env"].(map[string]string)["VARIANT"] = fmt.Sprintf("preview-%d", i)
	b, _ := json.Marshal(spec)
	file := filepath.Join(h.root, "preview.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return err
	}
	env := fmt.Sprintf("pr-%d", i)
	t0 := time.Now()
	if out, err := h.hostel("deploy", "--env", env, "--no-confirm", file); err != nil {
		return fmt.Errorf("deploy --env %s: %v\n%s", env, err, out)
	}
	req, _ := http.NewRequest("GET", "http://"+h.addr+"/healthz", nil)
	req.Host = "web." + env + ".hostel.internal"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("preview %s: %w", env, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("preview %s answered %s", env, resp.Status)
	}
	previewTimes = append(previewTimes, time.Since(t0))
	if out, err := h.hostel("env", "rm", env); err != nil {
		return fmt.Errorf("env rm %s: %v\n%s", env, err, out)
	}
	return nil
}

// deploy writes variant i of the spec (both services change with i's
// parity) and deploys it, noting when the switch happened.
func (h *hostel) deploy(i int) error {
	spec := h.spec(i)
	b, _ := json.Marshal(spec)
	file := filepath.Join(h.root, "hostel.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return err
	}
	return h.run(file)
}

// spec is variant i of the spec: both services change with i's parity.
func (h *hostel) spec(i int) map[string]any {
	variant := []string{"blue", "green"}[i%2]
	svc := func(role string, extra map[string]any) map[string]any {
		s := map[string]any{
			"exec":       []string{h.bin, "app"},
			"env":        map[string]string{"VARIANT": variant, "ROLE": role, "DEPLOY": fmt.Sprint(i)},
			"health":     map[string]any{"path": "/healthz", "timeout": "10s"},
			"stop_grace": "15s",
		}
		if h.c.exclusive {
			s["exclusive"] = true
			s["env"].(map[string]string)["LOCK"] = "1"
		}
		for k, v := range extra {
			s[k] = v
		}
		return s
	}
	return map[string]any{"services": map[string]any{
		"api": svc("api", map[string]any{"domains": []string{"api.load"}}),
		"web": svc("web", map[string]any{"domains": []string{"web.load"}, "needs": []string{"api"}}),
	}}
}

// run deploys file to production, noting when the switch happened.
func (h *hostel) run(file string) error {
	cmd := exec.Command(h.c.hostel, "--root", filepath.Join(h.root, "root"), "deploy", "--no-confirm", "--json", file)
	stderr, _ := cmd.StderrPipe()
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	logFile := filepath.Join(h.root, "daemon.log")
	logged := int64(0)
	if fi, err := os.Stat(logFile); err == nil {
		logged = fi.Size()
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	var (
		switchedAt time.Time
		out        strings.Builder
	)
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		if strings.HasPrefix(line, "switched:") {
			switchedAt = time.Now()
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%v\n%s", err, out.String())
	}
	var res struct {
		Plan struct{ Versions map[string]string }
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return fmt.Errorf("deploy output: %w", err)
	}
	if !switchedAt.IsZero() {
		h.mu.Lock()
		h.switched = append(h.switched, switchEvent{at: switchedAt, versions: res.Plan.Versions})
		if h.c.verbose {
			fmt.Printf("switched at %s to %v\n", switchedAt.Format("15:04:05.000"), res.Plan.Versions)
		}
		h.mu.Unlock()
		// The new versions' own times to ready, from what the daemon's
		// node printed meanwhile (or, from a daemon older than the split
		// of the engine and the nodes, the deploy's own progress).
		b, _ := os.ReadFile(logFile)
		ready := readyTimes(b[min(logged, int64(len(b))):])
		if ready == 0 {
			ready = readyTimes([]byte(out.String()))
		}
		if ready > 0 {
			// Everything but the new versions' own time to ready (api,
			// then web, which needs it): the CLI, planning, the commit
			// and the switch. Draining comes after and is not counted.
			h.lastReady = ready
			h.lastOverhead = switchedAt.Sub(t0) - h.lastReady
		}
	}
	return nil
}

// readyTimes sums the versions' own times from start to ready that a
// daemon's log says. (The two services start one after the other, since
// web needs api.)
func readyTimes(log []byte) time.Duration {
	var sum time.Duration
	for _, r := range hostelserve.Readies(log) {
		sum += r.Took
	}
	return sum
}

func (h *hostel) switches() []switchEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]switchEvent(nil), h.switched...)
}

// load is the open-loop client.
type load struct {
	addr      string
	rate      int
	client    *http.Client
	deploying atomic.Bool
	wg        sync.WaitGroup

	mu      sync.Mutex
	results []result
}

type result struct {
	kind, service string
	start         time.Time
	latency       time.Duration
	status        int
	err           error
	version       string
	duringDeploy  bool
}

func newLoad(addr string, rate int) *load {
	tr := &http.Transport{MaxIdleConns: 2048, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second}
	return &load{addr: addr, rate: rate, client: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// run sends requests at a constant rate until ctx ends, each in its own
// goroutine, whether or not earlier ones have answered (open loop).
func (l *load) run(ctx context.Context) {
	interval := time.Second / time.Duration(l.rate)
	next := time.Now()
	for ctx.Err() == nil {
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		l.wg.Add(1)
		go l.one()
	}
}

func (l *load) wait() { l.wg.Wait() }

func (l *load) one() {
	defer l.wg.Done()
	service, kind, path, body := pick()
	method := "GET"
	var rd io.Reader
	if body > 0 {
		method = "POST"
		rd = &slowReader{left: body, chunk: 16 << 10, every: 20 * time.Millisecond}
	}
	req, _ := http.NewRequest(method, "http://"+l.addr+path, rd)
	req.Host = service + ".load"
	r := result{kind: kind, service: service, start: time.Now(), duringDeploy: l.deploying.Load()}
	resp, err := l.client.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		r.status = resp.StatusCode
		r.version = resp.Header.Get("X-Version")
	}
	r.err = err
	r.latency = time.Since(r.start)
	l.mu.Lock()
	l.results = append(l.results, r)
	l.mu.Unlock()
}

// pick chooses a request: mostly ~1 ms ones, some 200 ms, a few 5 s, a few
// streams (2 s of server-sent events) and uploads (256 KiB sent slowly).
func pick() (service, kind, path string, body int) {
	service = "api"
	if rand.IntN(2) == 0 {
		service = "web"
	}
	switch n := rand.IntN(1000); {
	case n < 900:
		if service == "web" {
			return service, "fast", "/chain", 0
		}
		return service, "fast", "/sleep?d=1ms", 0
	case n < 950:
		return service, "slow", "/sleep?d=200ms", 0
	case n < 960:
		return service, "slower", "/sleep?d=5s", 0
	case n < 980:
		return service, "stream", "/stream", 0
	default:
		return service, "upload", "/upload", 256 << 10
	}
}

// slowReader is a request body that trickles in.
type slowReader struct {
	left, chunk int
	every       time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.every)
	n := min(len(p), s.chunk, s.left)
	for i := range n {
		p[i] = 'x'
	}
	s.left -= n
	return n, nil
}

type summary struct {
	total, non2xx, errors int
	kinds                 map[string]int
	p50, p99              time.Duration
	p50Deploy, p99Deploy  time.Duration
	slowFast              int // fast requests that took over a second
	examples              []string
}

func (l *load) summary() summary {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := summary{kinds: map[string]int{}}
	var all, during []time.Duration
	for _, r := range l.results {
		s.total++
		s.kinds[r.kind]++
		switch {
		case r.err != nil:
			s.errors++
			if len(s.examples) < 5 {
				s.examples = append(s.examples, fmt.Sprintf("%s %s: %v", r.service, r.kind, r.err))
			}
		case r.status < 200 || r.status > 299:
			s.non2xx++
			if len(s.examples) < 5 {
				s.examples = append(s.examples, fmt.Sprintf("%s %s: HTTP %d", r.service, r.kind, r.status))
			}
		}
		if r.kind == "fast" && r.err == nil {
			all = append(all, r.latency)
			if r.duringDeploy {
				during = append(during, r.latency)
			}
		}
	}
	for _, r := range l.results {
		if r.kind == "fast" && r.err == nil && r.latency > time.Second {
			s.slowFast++
			if len(s.examples) < 8 {
				s.examples = append(s.examples, fmt.Sprintf("%s fast request started %s took %s", r.service, r.start.Format("15:04:05.000"), r.latency.Round(time.Millisecond)))
			}
		}
	}
	s.p50, s.p99 = quantile(all, 0.5), quantile(all, 0.99)
	s.p50Deploy, s.p99Deploy = quantile(during, 0.5), quantile(during, 0.99)
	return s
}

// staleCount counts answers from a version that a switch had already
// replaced when the request started (with 20 ms of slack for the switch
// line to reach this program). Every deploy makes new versions of both
// services, so a version names the switch that brought it.
func (l *load) staleCount(sw []switchEvent) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	introduced := map[string]int{} // version → index of its switch
	for i, s := range sw {
		for _, v := range s.versions {
			introduced[v] = i
		}
	}
	stale := 0
	for _, r := range l.results {
		j, ok := introduced[r.version]
		if r.err != nil || !ok {
			continue
		}
		k := -1 // the latest switch well before the request started
		for i, s := range sw {
			if s.at.Add(20 * time.Millisecond).Before(r.start) {
				k = i
			}
		}
		if j < k {
			stale++
			if stale <= 5 {
				fmt.Printf("  stale: %s %s started %s answered by %s (switch %d), live since switch %d\n",
					r.service, r.kind, r.start.Format("15:04:05.000"), r.version, j, k)
			}
		}
	}
	return stale
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(float64(len(d)-1)*q)].Round(10 * time.Microsecond)
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}
