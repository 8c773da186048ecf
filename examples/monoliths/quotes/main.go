// Command quotes is an internal example service: other apps ask it for a
// quote of the day. It has no domain of its own.
package main

import (
	"encoding/json"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

var quotes = []string{
	"Simplicity is prerequisite for reliability.",
	"Make it work, make it right, make it fast.",
	"Clear is better than clever.",
}

func main() {
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /quote", func(w http.ResponseWriter, r *http.Request) {
		q := quotes[time.Now().YearDay()%len(quotes)]
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"greeting": greeting, "quote": q, "version": os.Getenv("HOSTEL_VERSION")})
	})
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	log.Printf("quotes %s listening on %s", os.Getenv("HOSTEL_VERSION"), addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
