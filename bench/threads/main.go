// Command threads measures what supervising many services costs the
// supervisor's process: OS threads and resident memory with no service, and
// with N services started and ready. Each service is this program again,
// serving HTTP on $PORT. With -hostel it measures a real `hostel serve`
// instead, deploying N copies of the quotes example. With -health D the
// supervisor alone runs the N services twice, without a health path and
// then health-checked every D, and reads its own CPU time over -window
// each time: what checking them costs. Not part of `make test`:
//
//	go run ./bench/threads -n 200
//	go run ./bench/threads -n 200 -health 10s -window 30s
//	make build && go run ./bench/threads -n 200 -hostel bin/hostel
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"hostel/bench/internal/hostelserve"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

func main() {
	hostelserve.ServeAppIfAsked()
	n := flag.Int("n", 200, "services to run")
	hostel := flag.String("hostel", "", "measure this hostel binary's daemon instead of the supervisor alone")
	health := flag.Duration("health", 0, "also run the services health-checked this often, and compare the supervisor's CPU time")
	window := flag.Duration("window", 10*time.Second, "with -health: how long to read the CPU time over")
	flag.Parse()
	measure := func(n int) error { return run(n, 0, 0) }
	switch {
	case *hostel != "":
		measure = func(n int) error { return runDaemon(*hostel, n) }
	case *health > 0:
		measure = func(n int) error {
			if err := run(n, 0, *window); err != nil {
				return err
			}
			return run(n, *health, *window)
		}
	}
	if err := measure(*n); err != nil {
		log.Fatal(err)
	}
}

// run starts n services under a supervisor of its own and reports its
// threads and memory; with a window, also the CPU time it uses over it,
// the services health-checked every interval (0: not at all).
func run(n int, interval, window time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "hb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	os.Chmod(root, 0o755)
	sup := supervisor.New(supervisor.Options{Root: root})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		sup.StopAll(ctx)
	}()
	runtime.GC()
	idleThreads, idleRSS := hostelserve.Status(os.Getpid())

	var wg sync.WaitGroup
	errs := make([]error, n)
	for k := range n {
		wg.Go(func() {
			cfg := supervisor.Config{
				Service: "svc" + strconv.Itoa(k), Version: spec.Version("0123456789ab"),
				Dir: filepath.Dir(self), Exec: []string{self, "app"},
			}
			if interval > 0 {
				cfg.HealthPath, cfg.HealthInterval = "/", interval
			}
			inst, err := sup.Start(cfg)
			if err == nil {
				err = inst.WaitReady(context.Background())
			}
			errs[k] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	// Let the start-up's transient goroutines and threads settle.
	time.Sleep(2 * time.Second)
	runtime.GC()
	threads, rss := hostelserve.Status(os.Getpid())
	fmt.Printf("supervisor process, %d services: OS threads %d (idle %d), RSS %.1f MiB (idle %.1f MiB)\n",
		n, threads, idleThreads, float64(rss)/1024, float64(idleRSS)/1024)
	fmt.Printf("per service: %.2f threads, %.1f KiB RSS\n",
		float64(threads-idleThreads)/float64(n), float64(rss-idleRSS)/float64(n))
	if window > 0 {
		c0 := cpuTime()
		time.Sleep(window)
		used := cpuTime() - c0
		threads, rss = hostelserve.Status(os.Getpid())
		checks := "no health checks"
		if interval > 0 {
			checks = fmt.Sprintf("health-checked every %v", interval)
		}
		fmt.Printf("%d services, %s: supervisor CPU %v over %v (%.2f%% of a core); then OS threads %d, RSS %.1f MiB\n",
			n, checks, used.Round(time.Millisecond), window, 100*used.Seconds()/window.Seconds(), threads, float64(rss)/1024)
	}
	return nil
}

// cpuTime is the CPU time this process used, user and system, without
// its children's.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runDaemon starts `hostel serve` on a fresh root, deploys n services and
// reads the daemon's threads and RSS before and after.
func runDaemon(hostel string, n int) error {
	d, err := hostelserve.Start(hostel, "hbd")
	if err != nil {
		return err
	}
	defer d.Close()
	app := filepath.Join(d.Base, "quotes")
	build := exec.Command("go", "build", "-o", filepath.Join(app, "bin", "quotes"), "./examples/monoliths/quotes")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building quotes: %v\n%s", err, out)
	}
	if err := exec.Command("chmod", "-R", "a+rX", app).Run(); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	idleThreads, idleRSS := hostelserve.Status(d.Pid)

	services := map[string]any{}
	for k := range n {
		services[fmt.Sprintf("s%03d", k)] = map[string]any{"package": app, "exec": []string{"bin/quotes"}}
	}
	t0 := time.Now()
	if err := d.Deploy(services); err != nil {
		return err
	}
	deployed := time.Since(t0)
	time.Sleep(2 * time.Second)
	threads, rss := hostelserve.Status(d.Pid)
	fmt.Printf("hostel serve, %d services (deployed in %v): OS threads %d (idle %d), RSS %.1f MiB (idle %.1f MiB)\n",
		n, deployed.Round(time.Millisecond), threads, idleThreads, float64(rss)/1024, float64(idleRSS)/1024)
	_, err = d.CLI("shutdown")
	return err
}
