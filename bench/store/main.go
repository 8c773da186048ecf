// Command store measures the state store on bbolt and on etcd, side by
// side in one run: the round-trip latency of a Read (the engine's one
// read to decide), a Commit (with one record written with it) and a
// record write, in this process against each store; and the daemon's
// start time and memory with each (hostel serve, and serve
// --etcd-embed). Results go to BENCHMARKS.md by hand.
//
//	go run ./bench/store -hostel bin/hostel
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"hostel/bench/internal/hostelserve"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/etcd"
)

func main() {
	hostel := flag.String("hostel", "bin/hostel", "the hostel binary, for the daemon's start and memory (\"\": skip)")
	baseline := flag.String("baseline", "", "a hostel binary from before etcd, measured on bbolt beside -hostel")
	n := flag.Int("n", 200, "operations of each kind per round")
	rounds := flag.Int("rounds", 3, "rounds; each measures every store")
	flag.Parse()
	if err := run(*hostel, *baseline, *n, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "store bench:", err)
		os.Exit(1)
	}
}

// backend opens a store to measure, and says how to close it.
type backend struct {
	name string
	open func(dir string) (store.Store, func(), error)
}

func backends() []backend {
	bs := []backend{
		{"bbolt (fsync per change)", func(dir string) (store.Store, func(), error) {
			s, err := store.OpenBolt(filepath.Join(dir, "state.db"))
			if err != nil {
				return nil, nil, err
			}
			return s, func() { s.Close() }, nil
		}},
		{"etcd member in the process (unix socket)", func(dir string) (store.Store, func(), error) {
			m, err := etcd.StartMember(filepath.Join(dir, "etcd"), nil)
			if err != nil {
				return nil, nil, err
			}
			s, err := etcd.Open(context.Background(), etcd.Config{Endpoints: m.Endpoints()})
			if err != nil {
				m.Close()
				return nil, nil, err
			}
			return s, func() { s.Close(); m.Close() }, nil
		}},
	}
	if _, err := exec.LookPath("etcd"); err == nil {
		bs = append(bs, backend{"Debian etcd 3.4 (own process, TCP loopback)", openBinary})
	}
	return bs
}

// openBinary starts Debian's etcd in dir on free ports.
func openBinary(dir string) (store.Store, func(), error) {
	cp, err := hostelserve.FreePort()
	if err != nil {
		return nil, nil, err
	}
	pp, err := hostelserve.FreePort()
	if err != nil {
		return nil, nil, err
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", cp), fmt.Sprintf("http://127.0.0.1:%d", pp)
	cmd := exec.Command("etcd", "--name", "b", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "b="+peer)
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop := func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		s, err := etcd.Open(context.Background(), etcd.Config{Endpoints: []string{client}, DialTimeout: time.Second})
		if err == nil {
			return s, func() { s.Close(); stop() }, nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, err
		}
	}
}

// generation is a generation of a 20-service spec, about what a real
// one holds.
func generation(i int) *spec.Generation {
	g := &spec.Generation{SpecHash: "hash-" + strconv.Itoa(i), Spec: &spec.Spec{Services: map[string]*spec.Service{}}, Versions: map[string]spec.Version{}}
	for s := range 20 {
		name := fmt.Sprintf("svc%02d", s)
		g.Spec.Services[name] = &spec.Service{Package: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-" + name, Exec: []string{"bin/" + name, "--serve"},
			Env: map[string]string{"LOG_LEVEL": "info", "ROUND": strconv.Itoa(i)}, Domains: []string{name + ".example.org"}}
		g.Versions[name] = spec.Version(fmt.Sprintf("%012x", i*100+s))
	}
	return g
}

// latencies runs op n times and returns the sorted durations.
func latencies(n int, op func(i int) error) ([]time.Duration, error) {
	out := make([]time.Duration, n)
	for i := range n {
		start := time.Now()
		if err := op(i); err != nil {
			return nil, err
		}
		out[i] = time.Since(start)
	}
	slices.Sort(out)
	return out, nil
}

func pct(d []time.Duration, p float64) time.Duration { return d[int(float64(len(d)-1)*p)] }

// measure fills a fresh store of b with 10 generations and 20 records,
// then times n Reads, n Commits (each with a record) and n record writes.
func measure(b backend, n int) (map[string][]time.Duration, error) {
	dir, err := os.MkdirTemp("", "hostel-store-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	s, closeFn, err := b.open(dir)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	ctx := context.Background()
	var cur uint64
	for i := range 10 {
		if cur, err = s.Commit(ctx, generation(i), cur); err != nil {
			return nil, err
		}
	}
	for i := range 20 {
		if _, err := s.PutRecord(ctx, "desired", fmt.Sprintf("node-%02d", i), []byte(`{"instances":["svc00-0123456789ab"]}`), 0); err != nil {
			return nil, err
		}
	}
	out := map[string][]time.Duration{}
	if out["Read (10 generations, 20 records)"], err = latencies(n, func(int) error { _, err := s.Read(ctx, "desired"); return err }); err != nil {
		return nil, err
	}
	if out["Commit with one record"], err = latencies(n, func(i int) error {
		w := store.Write{Kind: "desired", Key: "node-00", Value: []byte(strconv.Itoa(i)), Rev: store.AnyRevision}
		next, err := s.Commit(ctx, generation(100+i), cur, w)
		cur = next
		return err
	}); err != nil {
		return nil, err
	}
	if out["record write (compare-and-swap)"], err = latencies(n, func(i int) error {
		_, err := s.Txn(ctx, store.Write{Kind: "desired", Key: "node-01", Value: []byte(strconv.Itoa(i)), Rev: store.AnyRevision})
		return err
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// rssKiB is a process's resident memory: anonymous (its own) and file
// (the binary's pages, shared and reclaimable), in KiB.
type rssKiB struct{ anon, file int }

// memory reads RssAnon and RssFile from /proc.
func memory(pid int) rssKiB {
	var m rssKiB
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "RssAnon:":
			m.anon, _ = strconv.Atoi(f[1])
		case "RssFile:":
			m.file, _ = strconv.Atoi(f[1])
		}
	}
	return m
}

// daemon starts hostel serve with args on a fresh root, twice (the
// second start finds the first's state), and returns how long each took
// to answer the API and the daemon's RSS once settled.
func daemon(hostel string, args []string) (first, again time.Duration, rss rssKiB, err error) {
	base, err := os.MkdirTemp("", "hostel-store-bench-daemon-")
	if err != nil {
		return 0, 0, rss, err
	}
	defer os.RemoveAll(base)
	os.Chmod(base, 0o755)
	root := filepath.Join(base, "root")
	start := func() (time.Duration, *exec.Cmd, error) {
		cmd := exec.Command(hostel, append([]string{"serve", "--root", root, "--http", "127.0.0.1:0", "--https", ""}, args...)...)
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			return 0, nil, err
		}
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(root, "hostel.sock"))
		}}}
		for deadline := t0.Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			if resp, err := c.Get("http://hostel/v1/status"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return time.Since(t0), cmd, nil
				}
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		return 0, nil, errors.New("the daemon did not answer")
	}
	stop := func(cmd *exec.Cmd) { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }
	var cmd *exec.Cmd
	first, cmd, err = start()
	if err != nil {
		return 0, 0, rss, err
	}
	stop(cmd)
	again, cmd, err = start()
	if err != nil {
		return 0, 0, rss, err
	}
	time.Sleep(2 * time.Second)
	rss = memory(cmd.Process.Pid)
	stop(cmd)
	return first, again, rss, nil
}

func run(hostel, baseline string, n, rounds int) error {
	bs := backends()
	results := make([]map[string][]time.Duration, len(bs))
	for r := range rounds {
		for i := range bs {
			// Every other round in reverse, so that the machine's drift
			// weighs on all alike.
			b := i
			if r%2 == 1 {
				b = len(bs) - 1 - i
			}
			got, err := measure(bs[b], n)
			if err != nil {
				return fmt.Errorf("%s: %w", bs[b].name, err)
			}
			if results[b] == nil {
				results[b] = map[string][]time.Duration{}
			}
			for op, d := range got {
				results[b][op] = append(results[b][op], d...)
			}
		}
	}
	fmt.Printf("Store round trips, %d rounds × %d of each:\n\n", rounds, n)
	fmt.Println("| store | operation | p50 | p99 |")
	fmt.Println("| --- | --- | ---: | ---: |")
	for _, op := range []string{"Read (10 generations, 20 records)", "Commit with one record", "record write (compare-and-swap)"} {
		for i, b := range bs {
			d := results[i][op]
			slices.Sort(d)
			fmt.Printf("| %s | %s | %v | %v |\n", b.name, op, pct(d, 0.5).Round(time.Microsecond), pct(d, 0.99).Round(time.Microsecond))
		}
	}
	if hostel == "" {
		return nil
	}
	fmt.Printf("\nDaemon, %d rounds: start = exec to the API's first answer, on a fresh root and again on its state; RSS 2 s after the second start, no service:\n\n", rounds)
	fmt.Println("| binary | store | start (fresh) | start (again) | RSS anonymous | RSS file-backed (the binary; etcd's files) |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: |")
	type mode struct {
		bin, name string
		args      []string
	}
	modes := []mode{{hostel, "bbolt", nil}, {hostel, "etcd-embed", []string{"--etcd-embed"}}}
	if baseline != "" {
		modes = append([]mode{{baseline, "bbolt", nil}}, modes...)
	}
	type sample struct {
		first, again []time.Duration
		anon, file   []int
	}
	samples := make([]sample, len(modes))
	for r := range rounds {
		for i := range modes {
			m := i
			if r%2 == 1 {
				m = len(modes) - 1 - i
			}
			first, again, rss, err := daemon(modes[m].bin, modes[m].args)
			if err != nil {
				return fmt.Errorf("daemon on %s: %w", modes[m].name, err)
			}
			samples[m].first = append(samples[m].first, first)
			samples[m].again = append(samples[m].again, again)
			samples[m].anon = append(samples[m].anon, rss.anon)
			samples[m].file = append(samples[m].file, rss.file)
		}
	}
	for i, m := range modes {
		s := samples[i]
		slices.Sort(s.first)
		slices.Sort(s.again)
		slices.Sort(s.anon)
		slices.Sort(s.file)
		fi, err := os.Stat(m.bin)
		if err != nil {
			return err
		}
		fmt.Printf("| %s (%.1f MB) | %s | %v | %v | %.1f MiB | %.1f MiB |\n", m.bin, float64(fi.Size())/1e6, m.name, pct(s.first, 0.5).Round(time.Millisecond),
			pct(s.again, 0.5).Round(time.Millisecond), float64(s.anon[len(s.anon)/2])/1024, float64(s.file[len(s.file)/2])/1024)
	}
	return nil
}
