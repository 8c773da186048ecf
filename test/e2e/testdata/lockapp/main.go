// Command lockapp is a single-writer test service: it takes an exclusive
// lock on $STATE_DIRECTORY/lock when it starts and exits 1 if another
// process holds it, so a version started while another runs fails. With
// FAIL set it exits at once. It answers with $V.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
)

func main() {
	if os.Getenv("FAIL") != "" {
		log.Fatal("FAIL is set")
	}
	f, err := os.OpenFile(filepath.Join(os.Getenv("STATE_DIRECTORY"), "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		log.Fatalf("another version holds the lock: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "v%s\n", os.Getenv("V")) })
	log.Fatal(http.ListenAndServe(net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT")), mux))
}
