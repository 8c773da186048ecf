// Command secretapp is the secrets end-to-end test's service: it serves the
// files of its CREDENTIALS_DIRECTORY and says where that is, and never
// prints a secret to its log.
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
	"path/filepath"
)

func main() {
	dir := os.Getenv("CREDENTIALS_DIRECTORY")
	http.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	http.HandleFunc("GET /info", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"credentials_directory": dir, "uid": os.Getuid(), "pid": os.Getpid()})
	})
	http.HandleFunc("GET /secret/{name}", func(w http.ResponseWriter, r *http.Request) {
		if dir == "" {
			http.Error(w, "no CREDENTIALS_DIRECTORY", http.StatusNotFound)
			return
		}
		b, err := os.ReadFile(filepath.Join(dir, filepath.Base(r.PathValue("name"))))
		if err != nil {
			http.Error(w, "cannot read the credential", http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	log.Printf("secretapp listening on %s (credentials directory set: %v)", os.Getenv("PORT"), dir != "")
	log.Fatal(http.ListenAndServe(os.Getenv("HOST")+":"+os.Getenv("PORT"), nil))
}
