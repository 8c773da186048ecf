package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"

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
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	f := h.(*router.Router).NewFront(router.FrontOptions{ReadHeaderTimeout: 10 * time.Second})
	if err := f.Serve(ln); err != nil {
		fail(err)
	}
}
