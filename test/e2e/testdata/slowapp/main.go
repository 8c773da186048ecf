// Command slowapp is a service for the daemon-restart and limits tests: it
// answers slowly when asked, writes a log line per request, and allocates
// memory on request.
package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// kept holds what /alloc allocated.
var kept [][]byte

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	// /slow?ms=N answers after N milliseconds, streaming a line first.
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		fmt.Fprintln(w, "started")
		w.(http.Flusher).Flush()
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintln(w, "done")
	})
	// /upload reads its whole body, however slowly it comes.
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "got %d bytes\n", n)
	})
	// /log?msg=M writes M to the log.
	mux.HandleFunc("/log", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("slowapp pid %d: %s", os.Getpid(), r.URL.Query().Get("msg"))
		fmt.Fprintln(w, "logged")
	})
	// /alloc?mb=N allocates and touches N MiB and keeps them (the limits test).
	mux.HandleFunc("/alloc", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		for range mb {
			b := make([]byte, 1<<20)
			for k := range b {
				b[k] = 1
			}
			kept = append(kept, b)
		}
		fmt.Fprintf(w, "allocated %d MiB\n", mb)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "slowapp pid %d\n", os.Getpid()) })
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	log.Printf("slowapp %s listening on %s", os.Getenv("HOSTEL_VERSION"), addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
