// Command blog is an example web app that needs another service: every page
// shows the quote of the day from the quotes service, reached through
// QUOTES_URL at exactly the version this blog was deployed with.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	quotesURL := os.Getenv("QUOTES_URL")
	client := &http.Client{Timeout: 5 * time.Second}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		var q struct{ Greeting, Quote, Version string }
		resp, err := client.Get(quotesURL + "/quote")
		if err != nil {
			http.Error(w, "quotes unavailable: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
			http.Error(w, "quotes answered badly: "+err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("X-Hostel-Version", os.Getenv("HOSTEL_VERSION"))
		fmt.Fprintf(w, "The blog (version %s)\n%s! Quote of the day: %q (from quotes %s)\n",
			os.Getenv("HOSTEL_VERSION"), q.Greeting, q.Quote, q.Version)
	})
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	log.Printf("blog %s listening on %s, quotes at %s", os.Getenv("HOSTEL_VERSION"), addr, quotesURL)
	log.Fatal(http.ListenAndServe(addr, mux))
}
