// Command wiki is an example web app that keeps its pages as files in
// STATE_DIRECTORY, which hostel keeps across versions.
//
//	curl -X PUT --data 'hello' http://wiki.localhost:8080/home
//	curl http://wiki.localhost:8080/home
package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
)

var pageName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

func main() {
	dir := os.Getenv("STATE_DIRECTORY")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /{page}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("page")
		if !pageName.MatchString(name) {
			http.NotFound(w, r)
			return
		}
		b, err := os.ReadFile(filepath.Join(dir, name+".txt"))
		if err != nil {
			http.Error(w, "no page "+name+" yet; PUT one", http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("PUT /{page}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("page")
		if !pageName.MatchString(name) {
			http.Error(w, "bad page name", http.StatusBadRequest)
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name+".txt"), b, 0o600)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "saved %s\n", name)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "The wiki (version %s). PUT /NAME to write a page, GET /NAME to read it.\n", os.Getenv("HOSTEL_VERSION"))
	})
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	log.Printf("wiki %s listening on %s, pages in %s", os.Getenv("HOSTEL_VERSION"), addr, dir)
	log.Fatal(http.ListenAndServe(addr, mux))
}
