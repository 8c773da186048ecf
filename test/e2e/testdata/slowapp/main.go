// Command slowapp is a service for the daemon-restart test: it answers
// slowly when asked, and writes a log line per request.
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
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "slowapp pid %d\n", os.Getpid()) })
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	log.Printf("slowapp %s listening on %s", os.Getenv("HOSTEL_VERSION"), addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
