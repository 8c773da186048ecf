// Command wake measures scale to zero (issue 14). Not part of `make test`:
//
//	go run ./bench/wake                          # wake overhead and herd
//	go run ./bench/wake -probe                   # the same, ready by health probe
//	make build && go run ./bench/wake -hostel bin/hostel -services 100   # memory
//
// Wake overhead: a service (this program again, "serve-app") reports how
// long it took from its main to listening; the overhead of a wake is the
// time to first byte of the request that woke it minus that. It runs the
// daemon's own parts in this process — supervisor (as root: services as
// their own users, in cgroups, as the daemon runs them), router, front end
// and idle.Sleeper — and, as the anchor, the same service under
// systemd-socket-activate (the kernel holds the socket; no proxy). Each
// wake starts from a version asleep whose process has been stopped
// completely, and is split in phases: the request read, routed and held;
// the Sleeper until supervisor.Start; Start (set-up, fork and exec, cgroup,
// the launch's record); until the Sleeper sees it ready (READY=1, or the
// health probe with -probe); and from ready to the first byte.
//
// Herd: -herd requests at once at a sleeping version: errors, process
// starts, and the spread of their latencies.
//
// Memory (-hostel): a real `hostel serve` with -services services that
// have idle set: its RSS with none deployed, with all running, and with
// all asleep.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hostel/bench/internal/hostelserve"
	"hostel/internal/cgroup"
	"hostel/internal/front"
	"hostel/internal/idle"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve-app" {
		serveApp()
		return
	}
	n := flag.Int("n", 100, "wakes to measure")
	herd := flag.Int("herd", 1000, "concurrent requests at a sleeping version")
	hostel := flag.String("hostel", "", "measure this hostel binary's memory with -services services asleep")
	services := flag.Int("services", 100, "services deployed for the memory measure")
	probe := flag.Bool("probe", false, "the service does not send READY=1: it is ready when the health probe is answered")
	cgroups := flag.Bool("cgroups", os.Geteuid() == 0, "start the service in its own cgroup, as the daemon does as root")
	flag.Parse()
	var err error
	if *hostel != "" {
		err = memory(*hostel, *services)
	} else {
		err = wakes(*n, *herd, *cgroups, *probe)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// serveApp is the test service: HTTP on the socket systemd passes
// (LISTEN_FDS) or on $PORT; READY=1 on $NOTIFY_SOCKET once it listens,
// unless its arguments say no-notify.
// Every response says how long the process took from main to listening.
func serveApp() {
	t0 := time.Now()
	var ln net.Listener
	var err error
	if os.Getenv("LISTEN_FDS") == "1" {
		ln, err = net.FileListener(os.NewFile(3, "listen"))
	} else {
		ln, err = net.Listen("tcp", net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT")))
	}
	if err != nil {
		log.Fatal(err)
	}
	ready := time.Since(t0)
	if sock := os.Getenv("NOTIFY_SOCKET"); sock != "" && !slices.Contains(os.Args, "no-notify") {
		if c, err := net.Dial("unixgram", sock); err == nil {
			c.Write([]byte("READY=1"))
			c.Close()
		}
	}
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Exec-Ready-Ns", strconv.FormatInt(int64(ready), 10))
		fmt.Fprintln(w, "ok")
	})))
}

// countingProcs counts the processes the Sleeper starts, and marks when
// supervisor.Start (set up, fork and exec, the launch's record) began and
// returned, for the phases of a wake.
type countingProcs struct {
	*supervisor.Supervisor
	starts  atomic.Int64
	stopped atomic.Int64
	marks   *marks
	mu      sync.Mutex
	stops   []time.Duration // how long each Stop took
}

func (c *countingProcs) Start(cfg supervisor.Config) (*supervisor.Instance, error) {
	c.starts.Add(1)
	c.marks.set(&c.marks.startIn)
	inst, err := c.Supervisor.Start(cfg)
	c.marks.set(&c.marks.startOut)
	return inst, err
}

// Stop stops a version; stopped counts the stops that have ended.
func (c *countingProcs) Stop(ctx context.Context, key spec.VersionKey) error {
	t0 := time.Now()
	err := c.Supervisor.Stop(ctx, key)
	c.mu.Lock()
	c.stops = append(c.stops, time.Since(t0))
	c.mu.Unlock()
	c.stopped.Add(1)
	return err
}

// wakerOf is the router's Waker: the Sleeper, made after the router, and
// marks of when the router asked for the wake and when it was ready.
type wakerOf struct {
	s     **idle.Sleeper
	marks *marks
}

func (w wakerOf) Wake(ctx context.Context, key spec.VersionKey) (string, error) {
	w.marks.set(&w.marks.wakeIn)
	addr, err := (*w.s).Wake(ctx, key)
	w.marks.set(&w.marks.wakeOut)
	return addr, err
}

// marks are the moments of one wake, in order: the router asks the
// Sleeper (the request was read, routed and found the gate closed), the
// Sleeper calls supervisor.Start, Start returns (the process runs), the
// Sleeper returns (the version is ready); the first byte follows.
type marks struct {
	mu                                 sync.Mutex
	wakeIn, startIn, startOut, wakeOut time.Time
}

func (m *marks) set(t *time.Time) {
	m.mu.Lock()
	*t = time.Now()
	m.mu.Unlock()
}

// phases is the time of each phase of a wake, one slice per phase.
type phases struct {
	hold, before, start, ready, release []time.Duration
}

// add records one wake that began (the client's request) at t0 and got
// its first byte at first.
func (p *phases) add(m *marks, t0, first time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p.hold = append(p.hold, m.wakeIn.Sub(t0))
	p.before = append(p.before, m.startIn.Sub(m.wakeIn))
	p.start = append(p.start, m.startOut.Sub(m.startIn))
	p.ready = append(p.ready, m.wakeOut.Sub(m.startOut))
	p.release = append(p.release, first.Sub(m.wakeOut))
}

func wakes(n, herd int, cgroups, probe bool) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "hbw")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	os.Chmod(root, 0o755)
	pkg := filepath.Join(root, "pkg")
	os.MkdirAll(pkg, 0o755)
	app := filepath.Join(pkg, "app")
	if err := copyExec(self, app); err != nil {
		return err
	}
	// As the daemon does: services as their own users, in cgroups, when
	// it runs as root.
	opts := supervisor.Options{Root: root, RunAsUsers: os.Geteuid() == 0}
	quickMoves := false // v2, or v1 with favordynmods (cgroup.QuickMoves)
	if cgroups {
		h, err := cgroup.Open(root)
		if err != nil {
			return err
		}
		quickMoves = h.QuickMoves()
		defer h.Remove()
		opts.Cgroups = h
	}
	sup := supervisor.New(opts)
	m := &marks{}
	procs := &countingProcs{Supervisor: sup, marks: m}
	defer sup.StopAll(context.Background())
	var sl *idle.Sleeper
	r := router.New(router.Options{Waker: wakerOf{&sl, m}})
	defer r.Close()
	key := spec.Key("app", "0123456789ab")
	sl = idle.New(procs, r, func() (map[spec.VersionKey]idle.Policy, bool) {
		// Asleep as soon as nothing is in flight: the measure is the wake.
		return map[spec.VersionKey]idle.Policy{key: {Idle: time.Nanosecond}}, true
	}, nil)
	cfg := supervisor.Config{Service: "app", Version: "0123456789ab", Dir: pkg, Exec: []string{app, "serve-app"}}
	if probe {
		// Ready when the supervisor's health probe is answered, as a
		// service that does not speak the notify protocol.
		cfg.Exec, cfg.HealthPath = append(cfg.Exec, "no-notify"), "/"
	}
	inst, err := sup.Start(cfg)
	if err != nil {
		return err
	}
	if err := inst.WaitReady(context.Background()); err != nil {
		return err
	}
	r.AddBackend(key, inst.Addr())
	const host = "app.bench"
	if err := r.Swap(router.Table{Domains: map[string]spec.VersionKey{host: key}}); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	f := front.New(r, front.Options{})
	go f.Serve(ln)
	defer f.Close()
	url := "http://" + ln.Addr().String() + "/"

	// putToSleep waits until the version sleeps and its process has been
	// stopped completely: a wake that comes as a version falls asleep
	// waits for that first, and the measure is the wake.
	putToSleep := func() error {
		stops := procs.stopped.Load()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
			if st, _ := r.Sleeping(key); !st.Asleep {
				sl.Check()
				continue
			}
			if procs.stopped.Load() > stops {
				return nil
			}
			if time.Now().After(deadline) {
				return errors.New("not asleep after 30s")
			}
		}
	}
	var hostelOver, hostelTTFB []time.Duration
	var ph phases
	for range n {
		if err := putToSleep(); err != nil {
			return err
		}
		t0, first, ready, err := firstByte(url, host)
		if err != nil {
			return err
		}
		ttfb := first.Sub(t0)
		hostelTTFB = append(hostelTTFB, ttfb)
		hostelOver = append(hostelOver, ttfb-ready)
		ph.add(m, t0, first)
	}
	anchorOver, anchorTTFB, err := socketActivated(self, n)
	if err != nil {
		return err
	}
	how := "READY=1"
	if probe {
		how = "health probe"
	}
	fmt.Printf("wake overhead over %d wakes (time to first byte minus the service's own main→listening), cgroups %v (quick moves %v), ready by %s:\n", n, cgroups, quickMoves, how)
	fmt.Printf("  hostel (front, router, sleeper, supervisor): p50 %v  p99 %v   (TTFB p50 %v p99 %v)\n",
		pct(hostelOver, 50), pct(hostelOver, 99), pct(hostelTTFB, 50), pct(hostelTTFB, 99))
	fmt.Printf("  systemd-socket-activate (anchor):             p50 %v  p99 %v   (TTFB p50 %v p99 %v)\n",
		pct(anchorOver, 50), pct(anchorOver, 99), pct(anchorTTFB, 50), pct(anchorTTFB, 99))
	fmt.Printf("  hostel's phases, p50 / p99:\n")
	for _, p := range []struct {
		name string
		ds   []time.Duration
	}{
		{"request read, routed, held; wake asked", ph.hold},
		{"Sleeper before supervisor.Start", ph.before},
		{"supervisor.Start (set-up, fork+exec, record)", ph.start},
		{"Start returned → ready seen by the Sleeper", ph.ready},
		{"ready → first byte (release, dial, forward)", ph.release},
	} {
		fmt.Printf("    %-46s %9v / %v\n", p.name, pct(p.ds, 50), pct(p.ds, 99))
	}
	procs.mu.Lock()
	stops := slices.Clone(procs.stops)
	procs.mu.Unlock()
	fmt.Printf("  a stop to sleep (SIGTERM to reaped, group and run directory removed), which a wake that comes\n"+
		"  as the version falls asleep waits for: p50 %v  p99 %v\n", pct(stops, 50), pct(stops, 99))

	// The herd.
	if err := putToSleep(); err != nil {
		return err
	}
	before := procs.starts.Load()
	lat := make([]time.Duration, herd)
	var errs atomic.Int64
	var wg sync.WaitGroup
	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: herd, DisableKeepAlives: true}
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	start := make(chan struct{})
	for i := range herd {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", url, nil)
			req.Host = host
			<-start
			t0 := time.Now()
			resp, err := c.Do(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				errs.Add(1)
			}
			lat[i] = time.Since(t0)
		})
	}
	close(start)
	wg.Wait()
	fmt.Printf("herd: %d concurrent requests at a sleeping version: %d errors, %d process starts; latency min %v p50 %v p99 %v max %v\n",
		herd, errs.Load(), procs.starts.Load()-before, pct(lat, 0), pct(lat, 50), pct(lat, 99), pct(lat, 100))
	return nil
}

// firstByte requests url on a new connection and returns when it began,
// when its first byte came and the main→listening time the service
// reported.
func firstByte(url, host string) (t0, first time.Time, ready time.Duration, err error) {
	req, _ := http.NewRequest("GET", url, nil)
	if host != "" {
		req.Host = host
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotFirstResponseByte: func() { first = time.Now() },
	}))
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}
	t0 = time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return t0, first, 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return t0, first, 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	ns, err := strconv.ParseInt(resp.Header.Get("X-Exec-Ready-Ns"), 10, 64)
	if err != nil {
		return t0, first, 0, fmt.Errorf("no X-Exec-Ready-Ns: %w", err)
	}
	return t0, first, time.Duration(ns), nil
}

// socketActivated measures n first requests to the service started by
// systemd-socket-activate, each on a fresh socket.
func socketActivated(self string, n int) (over, ttfb []time.Duration, err error) {
	for range n {
		port, err := hostelserve.FreePort()
		if err != nil {
			return nil, nil, err
		}
		cmd := exec.Command("systemd-socket-activate", "-l", "127.0.0.1:"+strconv.Itoa(port), self, "serve-app")
		cmd.Stderr = io.Discard
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		// Connecting would activate it: wait for the socket to listen.
		for deadline := time.Now().Add(10 * time.Second); !listening(port); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				return nil, nil, errors.New("systemd-socket-activate did not listen")
			}
		}
		t0, first, ready, err := firstByte("http://127.0.0.1:"+strconv.Itoa(port)+"/", "")
		cmd.Process.Kill()
		cmd.Wait()
		if err != nil {
			return nil, nil, err
		}
		t := first.Sub(t0)
		ttfb = append(ttfb, t)
		over = append(over, t-ready)
	}
	return over, ttfb, nil
}

// listening reports whether a socket listens on 127.0.0.1:port, from
// /proc/net/tcp, without connecting.
func listening(port int) bool {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return false
	}
	defer f.Close()
	want := fmt.Sprintf("0100007F:%04X", port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 3 && fs[1] == want && fs[3] == "0A" {
			return true
		}
	}
	return false
}

func copyExec(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

// pct returns the p-th percentile of ds (0: min, 100: max).
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s) - 1) * p / 100
	return s[i].Round(10 * time.Microsecond)
}

// memory starts `hostel serve`, deploys n services with idle set, and
// prints the daemon's RSS with none deployed, all running, all asleep.
func memory(hostel string, n int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	d, err := hostelserve.Start(hostel, "hbm")
	if err != nil {
		return err
	}
	defer d.Close()
	pkg := filepath.Join(d.Base, "app")
	os.MkdirAll(filepath.Join(pkg, "bin"), 0o755)
	if err := copyExec(self, filepath.Join(pkg, "bin", "app")); err != nil {
		return err
	}
	time.Sleep(time.Second)
	_, empty := hostelserve.Status(d.Pid)
	services := map[string]any{}
	for k := range n {
		services[fmt.Sprintf("s%03d", k)] = map[string]any{"package": pkg, "exec": []string{"bin/app", "serve-app"}, "idle": "5s"}
	}
	if err := d.Deploy(services); err != nil {
		return err
	}
	_, running := hostelserve.Status(d.Pid)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		out, err := d.CLI("status", "--json")
		if err != nil {
			return err
		}
		var st struct{ Services []struct{ State string } }
		if err := json.Unmarshal(out, &st); err != nil {
			return err
		}
		asleep := 0
		for _, s := range st.Services {
			if s.State == "idle" {
				asleep++
			}
		}
		if asleep == n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d asleep after 2 minutes", asleep, n)
		}
	}
	time.Sleep(2 * time.Second)
	_, asleep := hostelserve.Status(d.Pid)
	fmt.Printf("hostel serve RSS: no services %.1f MiB; %d services running %.1f MiB; all %d asleep %.1f MiB\n",
		float64(empty)/1024, n, float64(running)/1024, n, float64(asleep)/1024)
	return nil
}
