// Command threads measures what supervising many services costs the
// supervisor's process: OS threads and resident memory with no service, and
// with N services started and ready. Each service is this program again,
// serving HTTP on $PORT. With -hostel it measures a real `hostel serve`
// instead, deploying N copies of the quotes example. Not part of `make test`:
//
//	go run ./bench/threads -n 200
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
	"time"

	"hostel/bench/internal/hostelserve"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

func main() {
	hostelserve.ServeAppIfAsked()
	n := flag.Int("n", 200, "services to run")
	hostel := flag.String("hostel", "", "measure this hostel binary's daemon instead of the supervisor alone")
	flag.Parse()
	run := run
	if *hostel != "" {
		run = func(n int) error { return runDaemon(*hostel, n) }
	}
	if err := run(*n); err != nil {
		log.Fatal(err)
	}
}

func run(n int) error {
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
			inst, err := sup.Start(supervisor.Config{
				Service: "svc" + strconv.Itoa(k), Version: spec.Version("0123456789ab"),
				Dir: filepath.Dir(self), Exec: []string{self, "app"},
			})
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
	return nil
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
