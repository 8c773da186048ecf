// Command threads measures what supervising many services costs the
// supervisor's process: OS threads and resident memory with no service, and
// with N services started and ready. Each service is this program again,
// serving HTTP on $PORT. Not part of `make test`:
//
//	go run ./bench/threads -n 200
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve-app" {
		serveApp()
		return
	}
	n := flag.Int("n", 200, "services to run")
	flag.Parse()
	if err := run(*n); err != nil {
		log.Fatal(err)
	}
}

// serveApp is one service: a hello-world HTTP server.
func serveApp() {
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
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
	idleThreads, idleRSS := procStatus()

	var wg sync.WaitGroup
	errs := make([]error, n)
	for k := range n {
		wg.Go(func() {
			inst, err := sup.Start(supervisor.Config{
				Service: "svc" + strconv.Itoa(k), Version: spec.Version("0123456789ab"),
				Dir: filepath.Dir(self), Exec: []string{self, "serve-app"},
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
	threads, rss := procStatus()
	fmt.Printf("supervisor process, %d services: OS threads %d (idle %d), RSS %.1f MiB (idle %.1f MiB)\n",
		n, threads, idleThreads, float64(rss)/1024, float64(idleRSS)/1024)
	fmt.Printf("per service: %.2f threads, %.1f KiB RSS\n",
		float64(threads-idleThreads)/float64(n), float64(rss-idleRSS)/float64(n))
	return nil
}

// procStatus returns this process's thread count and VmRSS in KiB.
func procStatus() (threads, rssKiB int) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		case "VmRSS:":
			rssKiB, _ = strconv.Atoi(f[1])
		}
	}
	return threads, rssKiB
}
