// Command shop is an example web app: a tiny product catalogue that counts
// its visitors in memory.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync/atomic"
)

var products = []struct {
	Name  string
	Price float64
}{{"Teapot", 24.50}, {"Mug", 8.00}, {"Kettle", 39.90}}

func main() {
	var visits atomic.Int64
	title := os.Getenv("SHOP_TITLE")
	if title == "" {
		title = "The Shop"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Hostel-Version", os.Getenv("HOSTEL_VERSION"))
		fmt.Fprintf(w, "%s (version %s), visit %d\n", title, os.Getenv("HOSTEL_VERSION"), visits.Add(1))
		for _, p := range products {
			fmt.Fprintf(w, "  %-8s %6.2f\n", p.Name, p.Price)
		}
	})
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	log.Printf("shop %s listening on %s", os.Getenv("HOSTEL_VERSION"), addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
