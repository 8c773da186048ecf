// Command app is the service the deploy engine's tests run.
//
// GET /healthz answers 200, or 500 once UNHEALTHY_AFTER has passed since
// start and while the file SICK_FILE exists; GET /slow?d=DURATION answers
// after d; GET /call calls UPSTREAM_URL. Every answer carries X-App: $APP_ID.
//
// Crashes, exit status 3: at once with CRASH set; CRASH_AFTER (a duration)
// after start, so that a supervisor restarting it makes a crash loop; and
// whenever the file CRASH_FILE exists (looked for every 50ms and at start).
//
// With AWAIT_FILE set, it listens only once that file exists. With
// READY_EARLY set (a duration), it sends READY=1 to NOTIFY_SOCKET first and
// listens that long after, as an app that starts its server in a goroutine
// does.
package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// sick reports whether the file SICK_FILE names exists.
func sick() bool {
	f := os.Getenv("SICK_FILE")
	if f == "" {
		return false
	}
	_, err := os.Stat(f)
	return err == nil
}

func main() {
	start := time.Now()
	unhealthyAfter, _ := time.ParseDuration(os.Getenv("UNHEALTHY_AFTER"))
	id := os.Getenv("APP_ID")
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if unhealthyAfter > 0 && time.Since(start) > unhealthyAfter || sick() {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		time.Sleep(d)
		w.Header().Set("X-App", id)
		io.WriteString(w, "slow done")
	})
	mux.HandleFunc("/call", func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Get(os.Getenv("UPSTREAM_URL") + "/")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("X-App", id)
		io.Copy(w, resp.Body)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", id)
		io.WriteString(w, id)
	})
	if os.Getenv("CRASH") != "" {
		os.Exit(3)
	}
	if d, err := time.ParseDuration(os.Getenv("CRASH_AFTER")); err == nil {
		time.AfterFunc(d, func() { os.Exit(3) })
	}
	if f := os.Getenv("CRASH_FILE"); f != "" {
		go func() {
			for {
				if _, err := os.Stat(f); err == nil {
					os.Exit(3)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	if f := os.Getenv("AWAIT_FILE"); f != "" {
		for {
			if _, err := os.Stat(f); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if d, err := time.ParseDuration(os.Getenv("READY_EARLY")); err == nil {
		if c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET")); err == nil {
			c.Write([]byte("READY=1\n"))
			c.Close()
		}
		time.Sleep(d)
	}
	http.ListenAndServe(net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT")), mux)
}
