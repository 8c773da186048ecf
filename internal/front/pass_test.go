package front_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
)

// passTo returns a Passer that hands each connection to next, as hostel
// upgrade's new daemon takes them, and counts them.
func passTo(t *testing.T, next *front.Front) (front.Passer, func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	return func(fd int, pending []byte) error {
			dup, err := syscall.Dup(fd)
			if err != nil {
				return err
			}
			f := os.NewFile(uintptr(dup), "passed")
			c, err := net.FileConn(f)
			f.Close()
			if err != nil {
				return err
			}
			mu.Lock()
			n++
			mu.Unlock()
			next.Adopt(c, append([]byte(nil), pending...))
			return nil
		}, func() int {
			mu.Lock()
			defer mu.Unlock()
			return n
		}
}

// TestShutdownPassesIdle: with a Passer, Shutdown closes no idle
// connection — on an event loop, a goroutine or net/http, or new with
// nothing sent yet — but passes each on: the next Front answers the
// client's next request on the same connection. Without one (before), each
// was closed.
func TestShutdownPassesIdle(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			_, old, pub := frontTo(t, fronttest.StartBackend(t, "old"), front.Options{Loops: loops})
			_, next, _ := frontTo(t, fronttest.StartBackend(t, "new"), front.Options{Loops: loops})
			pass, passed := passTo(t, next)
			old.PassIdle(pass)

			fast, fastBR := fronttest.DialFront(t, pub)
			fmt.Fprintf(fast, "GET /first HTTP/1.1\r\nHost: %s\r\n\r\n", host)
			if _, body := fronttest.ReadResp(t, fastBR, "GET"); !strings.HasPrefix(body, "backend old") {
				t.Fatalf("first request: %q", body)
			}
			fallback, fallbackBR := fronttest.DialFront(t, pub)
			fmt.Fprintf(fallback, "POST /p HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\n\r\nx", host)
			if _, body := fronttest.ReadResp(t, fallbackBR, "POST"); !strings.HasPrefix(body, "backend old") {
				t.Fatalf("first POST: %q", body)
			}
			if front.Handoffs(old) != 1 {
				t.Fatalf("%d connections handed to net/http, want 1", front.Handoffs(old))
			}
			fresh, freshBR := fronttest.DialFront(t, pub)
			fronttest.WaitFor(t, "three connections open", func() bool { return old.OpenConnections() == 3 })

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := old.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if n := passed(); n != 3 {
				t.Errorf("%d connections passed on, want 3", n)
			}
			for _, c := range []struct {
				name, method, req string
				conn              net.Conn
				br                *bufio.Reader
			}{
				{"idle after a fast request", "GET", "GET /again HTTP/1.1\r\nHost: " + host + "\r\n\r\n", fast, fastBR},
				{"idle on net/http", "POST", "POST /again HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 2\r\n\r\nxy", fallback, fallbackBR},
				{"new, nothing sent", "GET", "GET /late HTTP/1.1\r\nHost: " + host + "\r\n\r\n", fresh, freshBR},
			} {
				if _, err := io.WriteString(c.conn, c.req); err != nil {
					t.Errorf("%s: write: %v", c.name, err)
					continue
				}
				resp, err := http.ReadResponse(c.br, &http.Request{Method: c.method})
				if err != nil {
					t.Errorf("%s: %v (closed, not passed on)", c.name, err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "backend new") {
					t.Errorf("%s: %d %q, want 200 from the next front end", c.name, resp.StatusCode, b)
				}
			}
		})
	}
}

// TestShutdownPassesUnderLoad: clients send POSTs back to back on their
// keep-alive connections while the front end shuts down and passes them
// on: none fails — every request is answered, by the old front end or the
// next, on the connection it was sent on (a close between requests would
// race them: a POST with its body is not sent again by clients).
func TestShutdownPassesUnderLoad(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			_, old, pub := frontTo(t, fronttest.EchoBackend(t), front.Options{Loops: loops})
			_, next, nextPub := frontTo(t, fronttest.EchoBackend(t), front.Options{Loops: loops})
			pass, passed := passTo(t, next)
			old.PassIdle(pass)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var mu sync.Mutex
			var failures []string
			answered := 0
			for i := range 16 {
				wg.Go(func() {
					addr := pub
					c, br := fronttest.DialFront(t, addr)
					// Half of them on net/http from the first request on.
					method := "GET"
					if i%2 == 0 {
						method = "POST"
					}
					for n := 0; ; n++ {
						select {
						case <-stop:
							return
						default:
						}
						c.SetDeadline(time.Now().Add(10 * time.Second))
						req := fmt.Sprintf("%s /%d/%d HTTP/1.1\r\nHost: %s\r\nContent-Length: 4\r\n\r\nbody", method, i, n, host)
						if method == "GET" {
							req = fmt.Sprintf("GET /%d/%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, n, host)
						}
						_, err := io.WriteString(c, req)
						var resp *http.Response
						if err == nil {
							resp, err = http.ReadResponse(br, &http.Request{Method: method})
						}
						if err == nil {
							_, err = io.ReadAll(resp.Body)
						}
						mu.Lock()
						if err != nil {
							failures = append(failures, fmt.Sprintf("conn %d (%s) request %d: %v", i, c.LocalAddr(), n, err))
						} else {
							answered++
						}
						mu.Unlock()
						if err != nil {
							return
						}
						if resp.Close {
							// Answered as the old front end shut down: a
							// new connection goes to the next.
							addr = nextPub
							c, br = fronttest.DialFront(t, addr)
						}
					}
				})
			}
			time.Sleep(100 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := old.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
			close(stop)
			wg.Wait()
			t.Logf("%d answered, %d connections passed on", answered, passed())
			for _, f := range failures {
				t.Error(f)
			}
		})
	}
}

// TestAdoptBeforeServe: a connection passed on to a Front that does not
// serve yet (the new daemon's Serve goroutine has not run) waits for it,
// and is served — not closed by the sweeper as timed out from the epoch
// (before).
func TestAdoptBeforeServe(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			r, _, _ := frontTo(t, fronttest.StartBackend(t, "old"), front.Options{Loops: loops})
			next := front.New(r, front.Options{Loops: loops, ReadHeaderTimeout: time.Second})
			t.Cleanup(func() { next.Close() })
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			client, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { client.Close() })
			passed, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			adopted := make(chan bool, 1)
			go func() { adopted <- next.Adopt(passed, nil) }()
			time.Sleep(100 * time.Millisecond)
			served, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go next.Serve(served)
			if !<-adopted {
				t.Fatal("Adopt = false")
			}
			time.Sleep(300 * time.Millisecond) // a few of the sweeper's ticks
			client.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(client, "GET /x HTTP/1.1\r\nHost: %s\r\n\r\n", host)
			resp, err := http.ReadResponse(bufio.NewReader(client), &http.Request{Method: "GET"})
			if err != nil {
				t.Fatalf("the adopted connection: %v (closed)", err)
			}
			if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || !strings.HasPrefix(string(b), "backend old") {
				t.Errorf("%d %q", resp.StatusCode, b)
			}
		})
	}
}
