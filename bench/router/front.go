package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"time"

	"hostel/internal/front"
	"hostel/internal/router"
)

// childMainFront is childMain for the HTTP router: the router behind the
// same front end `hostel serve` uses on its HTTP listener.
func childMainFront() {
	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "bench/router router: %v\n", err)
		os.Exit(1)
	}
	h, err := runRouter(os.Args[2:])
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	if path := os.Getenv("HOSTEL_BENCH_CPUPROFILE"); path != "" {
		// For profiling the router under load: written when the run ends.
		pf, err := os.Create(path)
		if err != nil {
			fail(err)
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			fail(err)
		}
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		pprof.StopCPUProfile()
		os.Exit(0)
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	// HOSTEL_BENCH_LOOPS sets front.Options.Loops, for comparing.
	loops, _ := strconv.Atoi(os.Getenv("HOSTEL_BENCH_LOOPS"))
	f := front.New(h.(*router.Router), front.Options{ReadHeaderTimeout: 10 * time.Second, Loops: loops})
	if err := f.Serve(ln); err != nil {
		fail(err)
	}
}
