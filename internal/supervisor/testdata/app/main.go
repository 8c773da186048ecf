// Command app is the service the supervisor's tests run: an HTTP server on
// $PORT with switches for the behaviours under test.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupAtStart is /proc/self/cgroup as the program's first code found
// it: a process must be in its version's cgroup before it runs.
var cgroupAtStart, _ = os.ReadFile("/proc/self/cgroup")

// writeTime writes the time, in Unix nanoseconds, to path.
func writeTime(path string) {
	if err := os.WriteFile(path, []byte(strconv.FormatInt(time.Now().UnixNano(), 10)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "mark:", err)
		os.Exit(1)
	}
}

// kept holds what /alloc allocated; spun is what /spin writes, so the loop
// is not optimised away.
var (
	kept [][]byte
	spun int
)

func main() {
	notify := flag.Bool("notify", false, "send READY=1 to NOTIFY_SOCKET before listening")
	ignoreTerm := flag.Bool("ignore-term", false, "ignore SIGTERM")
	child := flag.Bool("child", false, "spawn a `sleep 1000` child sharing stdout")
	slowStart := flag.Duration("slow-start", 0, "wait this long before listening")
	exitNow := flag.Bool("exit-now", false, "print an error and exit 3 at once")
	fill := flag.Bool("fill", false, "write to stdout until a write fails, then exit 1")
	mark := flag.String("mark", "", "write the time (Unix ns) to `PREFIX`.start now and to PREFIX.ready before listening")
	await := flag.String("await", "", "wait until `FILE` exists before listening (exit 5 after 20s)")
	callFirst := flag.String("call-first", "", "GET $`VAR`/healthz before listening; exit 4 unless it answers 200")
	sickFile := flag.String("sick-file", "", "/healthz answers 500 while `FILE` exists")
	hangFile := flag.String("hang-file", "", "/healthz does not answer while `FILE` exists")
	listen := flag.String("listen", "", "listen on `ADDR` instead of 127.0.0.1:$PORT")
	flag.Parse()
	if *mark != "" {
		writeTime(*mark + ".start")
	}

	fmt.Printf("app starting pid %d\n", os.Getpid())
	fmt.Fprintf(os.Stderr, "app stderr line\n")
	if *fill {
		line := []byte(strings.Repeat("f", 1023) + "\n")
		for {
			if _, err := os.Stdout.Write(line); err != nil {
				fmt.Fprintln(os.Stderr, "fill:", err)
				os.Exit(1)
			}
		}
	}
	if *exitNow {
		fmt.Fprintln(os.Stderr, "boom: bad configuration")
		os.Exit(3)
	}
	if err := os.WriteFile(filepath.Join(os.Getenv("STATE_DIRECTORY"), "touched"), []byte("x"), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "writing state:", err)
	}

	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	go func() {
		for range terms {
			if *ignoreTerm {
				fmt.Println("ignoring SIGTERM")
				continue
			}
			fmt.Println("terminating on SIGTERM")
			os.Exit(0)
		}
	}()

	childPID := 0
	if *child {
		c := exec.Command("sleep", "1000")
		c.Stdout = os.Stdout
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		childPID = c.Process.Pid
	}

	if *notify {
		c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "notify:", err)
			os.Exit(1)
		}
		if _, err := c.Write([]byte("STATUS=starting\nREADY=1\n")); err != nil {
			fmt.Fprintln(os.Stderr, "notify:", err)
			os.Exit(1)
		}
		c.Close()
	}
	time.Sleep(*slowStart)
	if *await != "" {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if _, err := os.Stat(*await); err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "%s did not appear\n", *await)
				os.Exit(5)
			}
		}
	}
	if *callFirst != "" {
		c := &http.Client{Timeout: 20 * time.Second}
		resp, err := c.Get(os.Getenv(*callFirst) + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "calling $%s: %v\n", *callFirst, err)
			os.Exit(4)
		}
	}
	if *mark != "" {
		writeTime(*mark + ".ready")
	}

	mux := http.NewServeMux()
	exists := func(path string) bool {
		_, err := os.Stat(path)
		return path != "" && err == nil
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		for exists(*hangFile) {
			time.Sleep(10 * time.Millisecond)
		}
		if exists(*sickFile) {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		env := map[string]string{}
		for _, kv := range os.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		json.NewEncoder(w).Encode(env)
	})
	mux.HandleFunc("/cgroup-at-start", func(w http.ResponseWriter, r *http.Request) { w.Write(cgroupAtStart) })
	mux.HandleFunc("/pid", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, os.Getpid()) })
	mux.HandleFunc("/child", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, childPID) })
	mux.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("crashing on request")
		os.Exit(1)
	})
	mux.HandleFunc("/alloc", func(w http.ResponseWriter, r *http.Request) {
		// Allocate and touch MB mebibytes, and keep them.
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		for range mb {
			b := make([]byte, 1<<20)
			for k := range b {
				b[k] = 1
			}
			kept = append(kept, b)
		}
		fmt.Fprintln(w, "allocated", mb)
	})
	mux.HandleFunc("/spin", func(w http.ResponseWriter, r *http.Request) {
		// Keep one core busy until the process ends.
		go func() {
			for n := 0; ; n++ {
				spun = n
			}
		}()
		fmt.Fprintln(w, "spinning")
	})
	mux.HandleFunc("/flood", func(w http.ResponseWriter, r *http.Request) {
		// Write MB mebibytes to stdout as fast as it takes them.
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		chunk := []byte(strings.Repeat(strings.Repeat("y", 127)+"\n", 512)) // 64 KiB
		for range mb * 16 {
			os.Stdout.Write(chunk)
		}
		fmt.Fprintln(w, "flooded", mb)
	})
	mux.HandleFunc("/spam", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		from, _ := strconv.Atoi(r.URL.Query().Get("from"))
		line := strings.Repeat("x", 89)
		for k := range n {
			fmt.Printf("%09d %s\n", from+k, line) // 100 bytes with the newline
		}
	})
	addr := net.JoinHostPort("127.0.0.1", os.Getenv("PORT"))
	if *listen != "" {
		addr = *listen
	}
	if err := http.ListenAndServe(addr, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
