package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// everything serves every optional part of the API; its methods are never
// called here.
type everything struct {
	Daemon
	DBDaemon
	EnvDaemon
	PauseDaemon
	SecretsDaemon
	ShutdownDaemon
	NodesDaemon
	DrainDaemon
	AllStatusDaemon
}

// TestForLeader: the requests that change the deployment through the
// engine go to the leader; what reads, or is about the machine asked,
// does not.
func TestForLeader(t *testing.T) {
	for _, tc := range []struct {
		method, target string
		want           bool
	}{
		{"POST", "/v1/deploy", true},
		{"POST", "/v1/rollback", true},
		{"POST", "/v1/restart", true},
		{"POST", "/v1/gc", true},
		{"POST", "/v1/pause", true},
		{"POST", "/v1/resume", true},
		{"DELETE", "/v1/envs/pr-1", true},
		{"POST", "/v1/db/restore?service=web", true},
		{"GET", "/v1/deploys?follow=1", true}, // only the leader runs deploys
		{"POST", "/v1/plan", false},
		{"GET", "/v1/status", false},
		{"GET", "/v1/status?all=1", false},
		{"GET", "/v1/generations", false},
		{"GET", "/v1/logs?service=web&follow=1", false},
		{"GET", "/v1/envs", false},
		{"GET", "/v1/nodes", false},
		{"POST", "/v1/nodes/n2/drain", true},
		{"POST", "/v1/nodes/n2/undrain", true},
		{"GET", "/v1/secrets/recipient", false},
		{"POST", "/v1/shutdown", false},
		{"PUT", "/v1/failpoints/x", false},
		{"GET", "/v1/db/info?service=web", false},
		{"POST", "/v1/db/backup", false},
		{"GET", "/v1/db/dump?service=web", false},
		{"POST", "/v1/db/drop", false},
		{"GET", "/v1/deploy", false}, // not a route: the mux answers 405 wherever asked
		{"POST", "/v1/deploy/x", false},
	} {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			if got := ForLeader(httptest.NewRequest(tc.method, tc.target, nil)); got != tc.want {
				t.Errorf("ForLeader = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestLeaderRoutesAreRoutes: every route for the leader is one the API
// serves, matched by the same pattern.
func TestLeaderRoutesAreRoutes(t *testing.T) {
	mux := NewHandler(everything{}).(*http.ServeMux)
	for _, p := range leaderRoutes {
		method, path, _ := strings.Cut(p, " ")
		path = strings.ReplaceAll(path, "{name}", "x")
		if _, got := mux.Handler(httptest.NewRequest(method, path, nil)); got != p {
			t.Errorf("%s %s is served by %q, want %q", method, path, got, p)
		}
	}
}

// TestRelayStreams: a streamed answer reaches the client event by event
// as the daemon sends it, not when it ends.
func TestRelayStreams(t *testing.T) {
	next := make(chan string)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stream(w, func(progress func(string)) (*DeployResult, error) {
			for line := range next {
				progress(line)
			}
			return &DeployResult{Generation: 7}, nil
		})
	}))
	defer upstream.Close()
	relay := httptest.NewServer(relayTo(upstream.URL, func(err error) error { return err }))
	defer relay.Close()
	var end sync.Once
	defer end.Do(func() { close(next) }) // before the servers close, which wait for it

	// The answer's head comes with the first event.
	answered := make(chan *http.Response, 1)
	go func() {
		resp, err := http.Post(relay.URL+"/v1/deploy", "application/json", nil)
		if err != nil {
			t.Error(err)
			close(answered)
			return
		}
		answered <- resp
	}()
	var events <-chan Event
	for i, line := range []string{"starting web", "switching"} {
		next <- line
		if i == 0 {
			var resp *http.Response
			select {
			case resp = <-answered:
			case <-time.After(10 * time.Second):
				t.Fatalf("no answer while the operation runs")
			}
			if resp == nil {
				t.FailNow()
			}
			defer resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); ct != ndjson {
				t.Errorf("Content-Type %q, want %q", ct, ndjson)
			}
			events = eventsOf(t, resp.Body)
		}
		select {
		case ev := <-events:
			if ev.Progress != line {
				t.Errorf("got %+v, want progress %q", ev, line)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q was not relayed while the operation runs", line)
		}
	}
	end.Do(func() { close(next) })
	if ev := <-events; ev.Result == nil || ev.Result.Generation != 7 || ev.Error != nil {
		t.Errorf("last event %+v, want generation 7", ev)
	}
	if ev, more := <-events; more {
		t.Errorf("an event after the last: %+v", ev)
	}
}

// TestRelayCutStream: a stream cut between two events ends with the
// error that says so, which the client returns as the operation's; an
// answer that is not a stream, cut, is cut for the client too.
func TestRelayCutStream(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/gc" {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, `{"removed":`)
			return // short of its length: the client sees it cut
		}
		stream(w, func(progress func(string)) (*DeployResult, error) {
			progress("starting web")
			panic(http.ErrAbortHandler) // the leader dies mid-operation
		})
	}))
	defer upstream.Close()
	lost := func(err error) error {
		return fmt.Errorf("lost node a, which leads the engine, mid-operation: %w", err)
	}
	relay := httptest.NewServer(relayTo(upstream.URL, lost))
	defer relay.Close()

	var lines []string
	client := clientTo(t, relay.URL)
	res, err := client.Deploy(t.Context(), DeployRequest{}, func(l string) { lines = append(lines, l) })
	var ae *Error
	if res != nil || !errors.As(err, &ae) || ae.Kind != KindFailed || !strings.HasPrefix(ae.Message, "lost node a, which leads the engine, mid-operation: ") {
		t.Errorf("got %v, %v; want no result and the error that node a was lost", res, err)
	}
	if len(lines) != 1 || lines[0] != "starting web" {
		t.Errorf("progress %q, want what came before the cut", lines)
	}
	if _, err := client.GC(t.Context(), 1); err == nil {
		t.Errorf("a cut answer to gc decoded without error")
	}
}

// clientTo is a client of the API served at url.
func clientTo(t *testing.T, url string) *Client {
	t.Helper()
	addr := strings.TrimPrefix(url, "http://")
	return NewClientDial(url, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
}

// relayTo is a handler that sends every request to the daemon at base
// and relays its answer.
func relayTo(base string, lost func(error) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		out, _ := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), r.Body)
		out.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			ReplyError(w, err)
			return
		}
		Relay(w, resp, lost)
	}
}

// eventsOf decodes the events of body as they come.
func eventsOf(t *testing.T, body io.Reader) <-chan Event {
	t.Helper()
	out := make(chan Event, 16)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			var ev Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("bad event %q: %v", sc.Text(), err)
				return
			}
			out <- ev
		}
	}()
	return out
}
