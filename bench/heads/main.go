// Command heads measures what unfinished large request heads cost the
// front end (issue 11, finding 2): it serves a router behind the public
// front end in a child process, opens -conns connections that each send
// -size bytes of a head that never ends, and reports the child's resident
// memory before, while they are open, and after they are gone.
//
//	go run ./bench/heads -conns 1000 -size 1000000
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hostel/internal/front"
	"hostel/internal/router"
	"hostel/internal/spec"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-child" {
		child()
		return
	}
	conns := flag.Int("conns", 1000, "connections")
	size := flag.Int("size", 1_000_000, "bytes of head each connection sends")
	flag.Parse()

	cmd := exec.Command(os.Args[0], "-child")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fail(err)
	}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	defer cmd.Process.Kill()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		fail(err)
	}
	addr = strings.TrimSpace(addr)
	pid := cmd.Process.Pid
	time.Sleep(500 * time.Millisecond)
	fmt.Printf("front end RSS at rest: %s\n", rss(pid, "VmRSS"))

	head := []byte("GET / HTTP/1.1\r\nHost: api.example.org\r\nX-Big: " + strings.Repeat("a", *size))
	var wg sync.WaitGroup
	var answered, refusedEarly atomic.Int64
	cs := make([]net.Conn, *conns)
	for i := range cs {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fail(err)
		}
		cs[i] = c
		wg.Go(func() {
			c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(head); err != nil {
				refusedEarly.Add(1) // the front end stopped reading and closed
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				answered.Add(1)
				io.Copy(io.Discard, resp.Body)
			}
		})
	}
	wg.Wait()
	fmt.Printf("with %d connections each sending %d bytes of an unfinished head: RSS %s (peak %s); %d answered, %d closed before the head was sent\n",
		*conns, *size, rss(pid, "VmRSS"), rss(pid, "VmHWM"), answered.Load(), refusedEarly.Load())
	for _, c := range cs {
		c.Close()
	}
	time.Sleep(3 * time.Second)
	fmt.Printf("after the connections closed: RSS %s\n", rss(pid, "VmRSS"))
}

func child() {
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	go backend.Serve(bl)
	r := router.New(router.Options{Zone: spec.DefaultZone})
	key := spec.Key("api", "111111111111")
	r.AddBackend(key, bl.Addr().String())
	if err := r.Swap(router.Table{Domains: map[string]spec.VersionKey{"api.example.org": key}}); err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	f := front.New(r, front.Options{})
	fmt.Println(ln.Addr())
	fail(f.Serve(ln))
}

// rss reads a memory figure of process pid from /proc.
func rss(pid int, field string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "bench/heads: %v\n", err)
	os.Exit(1)
}
