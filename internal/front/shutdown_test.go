package front_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/front/fronttest"
)

// TestShutdownAnswersAHeadCompletedAfter: a request with a large head
// (over the front end's 4 KiB buffer) that comes in two parts, the first
// before Shutdown and the end after, is answered. The front end hands such
// a connection to net/http, whose own Shutdown closes unanswered a
// connection whose request it reads after it began: the client gets EOF on
// a connection it never reused, and does not retry.
func TestShutdownAnswersAHeadCompletedAfter(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) {
			_, f, pub := frontTo(t, fronttest.StartBackend(t, "old"), front.Options{Loops: loops})
			c, br := fronttest.DialFront(t, pub)
			fmt.Fprintf(c, "GET /split HTTP/1.1\r\nHost: %s\r\nCookie: %s\r\n", host, strings.Repeat("c", 6000))
			fronttest.WaitFor(t, "the connection handed to net/http", func() bool { return front.Handoffs(f) == 1 })

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- f.Shutdown(ctx) }()
			fronttest.WaitFor(t, "the listener closed", func() bool {
				probe, err := net.Dial("tcp", pub)
				if err == nil {
					probe.Close()
				}
				return err != nil
			})
			fmt.Fprintf(c, "\r\n")
			resp, body := fronttest.ReadResp(t, br, "GET")
			if resp.StatusCode != 200 || !strings.HasPrefix(body, "backend old") {
				t.Errorf("got %d %q, want 200 from the backend", resp.StatusCode, body)
			}
			if err := <-done; err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
	}
}
