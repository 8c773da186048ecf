// Command sickapp is a service that falls ill on cue, for the tests of a
// daemon that must go on serving the others: while the file $SICK_FILE
// exists its /healthz answers 500, and while $FAIL_FILE exists it exits 3
// at start, as an app does whose database is down.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
)

func exists(path string) bool {
	if path == "" {
		return false
	}
	_, err := os.Stat(path)
	return err == nil
}

func main() {
	if exists(os.Getenv("FAIL_FILE")) {
		fmt.Fprintln(os.Stderr, "sickapp: cannot reach the database")
		os.Exit(3)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if exists(os.Getenv("SICK_FILE")) {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s pid %d\n", os.Getenv("HOSTEL_SERVICE"), os.Getenv("HOSTEL_VERSION"), os.Getpid())
	})
	log.Fatal(http.ListenAndServe(net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT")), mux))
}
