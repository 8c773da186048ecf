// Command counter is the Go app of docs/apps.md: it keeps a count in
// memory and in a file of its STATE_DIRECTORY, which one process at a
// time may own — so its spec says "exclusive".
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

func main() {
	file := filepath.Join(os.Getenv("STATE_DIRECTORY"), "count")
	var mu sync.Mutex
	count := 0
	if b, err := os.ReadFile(file); err == nil {
		count, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		count++
		if err := os.WriteFile(file, []byte(strconv.Itoa(count)), 0o600); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		log.Printf("go: GET %s", r.URL.Path) // log writes at once: no buffer to flush
		fmt.Fprintf(w, "hello from go, visit %d\n", count)
	})
	log.Fatal(http.ListenAndServe(net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT")), nil))
}
