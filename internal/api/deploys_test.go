package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// stepDaemon deploys as told: each value sent on lines is a progress
// line, and closing it ends the deploy (failing it if fail is set).
type stepDaemon struct {
	everything
	lines chan string
	fail  bool
}

func (d stepDaemon) Deploy(_ context.Context, _ DeployRequest, progress func(string)) (*DeployResult, error) {
	for l := range d.lines {
		progress(l)
	}
	if d.fail {
		return &DeployResult{Generation: 1}, errors.New("quotes did not start")
	}
	return &DeployResult{Generation: 2}, nil
}

// serveSocket serves h on a unix socket and returns a client of it.
func serveSocket(t *testing.T, h http.Handler) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hostel.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return NewClient(sock)
}

// TestFollowDeploys: a follower sees a deploy's progress lines as the
// deploy goes, before it ends, then its end; one that comes later gets
// what was said so far first.
func TestFollowDeploys(t *testing.T) {
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			d := stepDaemon{lines: make(chan string), fail: fail}
			c := serveSocket(t, NewHandler(d))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			events := make(chan DeployEvent, 16)
			go c.FollowDeploys(ctx, func(ev DeployEvent) { events <- ev })
			next := func(what string) DeployEvent {
				t.Helper()
				select {
				case ev := <-events:
					return ev
				case <-time.After(10 * time.Second):
					t.Fatalf("no event: want %s", what)
					return DeployEvent{}
				}
			}

			done := make(chan error, 1)
			go func() {
				_, err := c.Deploy(ctx, DeployRequest{}, nil)
				done <- err
			}()
			if ev := next("the start"); !ev.Start || ev.Kind != "deploy" || ev.Op != 1 {
				t.Fatalf("first event %+v, want the start of deploy 1", ev)
			}
			d.lines <- "starting quotes-abc"
			if ev := next("a line"); ev.Progress != "starting quotes-abc" || ev.Op != 1 || ev.End {
				t.Fatalf("event %+v, want the line of deploy 1", ev)
			}
			// A follower that comes now gets the start and the line.
			var late []DeployEvent
			lctx, lcancel := context.WithCancel(ctx)
			lateDone := make(chan struct{})
			go func() {
				defer close(lateDone)
				c.FollowDeploys(lctx, func(ev DeployEvent) {
					late = append(late, ev)
					if len(late) == 2 {
						lcancel()
					}
				})
			}()
			<-lateDone
			if len(late) != 2 || !late[0].Start || late[1].Progress != "starting quotes-abc" {
				t.Errorf("a later follower got %+v, want the start and the line so far", late)
			}
			close(d.lines)
			end := next("the end")
			if !end.End || end.Op != 1 {
				t.Fatalf("event %+v, want the end of deploy 1", end)
			}
			if err := <-done; (err != nil) != fail {
				t.Fatalf("deploy: %v", err)
			}
			switch {
			case fail && (end.Error != "quotes did not start" || end.Generation != 1):
				t.Errorf("end %+v, want the error and generation 1", end)
			case !fail && (end.Error != "" || end.Generation != 2):
				t.Errorf("end %+v, want generation 2 and no error", end)
			}
		})
	}
}

// TestDeployLogKeeps: the backlog holds the running operations and the
// last that ended, no older one, and at most deployLogMax events.
func TestDeployLogKeeps(t *testing.T) {
	l := newDeployLog()
	a := l.begin("deploy")
	l.add(DeployEvent{Op: a, Progress: "a1"})
	b := l.begin("rollback")
	l.add(DeployEvent{Op: a, End: true})
	c := l.begin("deploy")
	l.add(DeployEvent{Op: b, End: true})
	backlog, _, stop := l.follow()
	stop()
	var ops []uint64
	for _, ev := range backlog {
		ops = append(ops, ev.Op)
	}
	if want := []uint64{b, c, b}; fmt.Sprint(ops) != fmt.Sprint(want) {
		t.Errorf("backlog of ops %v, want %v (a ended before b did)", ops, want)
	}
	for i := range 2 * deployLogMax {
		l.add(DeployEvent{Op: c, Progress: fmt.Sprint(i)})
	}
	backlog, _, stop = l.follow()
	stop()
	if len(backlog) != deployLogMax || backlog[len(backlog)-1].Progress != fmt.Sprint(2*deployLogMax-1) {
		t.Errorf("backlog of %d events, last %+v; want %d, the newest last", len(backlog), backlog[len(backlog)-1], deployLogMax)
	}
}
