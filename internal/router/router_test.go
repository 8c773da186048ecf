package router

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hostel/internal/front/fronttest"
	"hostel/internal/spec"
)

func TestRouteByHost(t *testing.T) {
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	r.AddBackend(webV1, fronttest.StartBackend(t, "web-v1"))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{
		"api.example.org": apiV1,
		"Web.Example.org": webV1, // tables are normalized too
	}})

	tests := []struct {
		name       string
		host       string
		wantStatus int
		wantBody   string // prefix
	}{
		{"exact", "api.example.org", 200, "backend api-v1"},
		{"other domain", "web.example.org", 200, "backend web-v1"},
		{"with port", "api.example.org:8080", 200, "backend api-v1"},
		{"uppercase", "API.Example.ORG", 200, "backend api-v1"},
		{"uppercase with port", "WEB.EXAMPLE.ORG:80", 200, "backend web-v1"},
		{"trailing dot", "api.example.org.", 200, "backend api-v1"},
		{"unknown", "evil.example.org", 404, `hostel: no service for host "evil.example.org"`},
		{"suffix of a domain", "xapi.example.org", 404, "hostel: no service"},
		{"subdomain of a domain", "a.api.example.org", 404, "hostel: no service"},
		{"ip literal", "127.0.0.1", 404, "hostel: no service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, body := fronttest.Get(t, pub+"/x?y=1", tt.host)
			if status != tt.wantStatus || !strings.HasPrefix(body, tt.wantBody) {
				t.Errorf("Host %q: got %d %q, want %d %q…", tt.host, status, body, tt.wantStatus, tt.wantBody)
			}
			if tt.wantStatus == 404 && strings.Contains(body, "backend ") {
				t.Errorf("Host %q: 404 body leaks a backend's content: %q", tt.host, body)
			}
			if tt.wantStatus == 200 && !strings.Contains(body, "host="+tt.host+" ") {
				t.Errorf("Host %q: backend saw %q, want the incoming Host kept", tt.host, body)
			}
		})
	}
}

func TestRedirect(t *testing.T) {
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	mustSwap(t, r, Table{
		Domains:   map[string]spec.VersionKey{"massapp.org": apiV1},
		Redirects: map[string]string{"www.massapp.org": "massapp.org"},
	})

	tests := []struct {
		name, host, uri, want string
	}{
		{"path and query", "www.massapp.org", "/a/b?x=1", "http://massapp.org/a/b?x=1"},
		{"root", "WWW.massapp.org:80", "/", "http://massapp.org/"},
		{"development port kept", "www.massapp.org:8080", "/p?q", "http://massapp.org:8080/p?q"},
		{"escaped path", "www.massapp.org", "/a%20b/c?q=%2F&r", "http://massapp.org/a%20b/c?q=%2F&r"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, loc, _ := fronttest.Get(t, pub+tt.uri, tt.host)
			if status != http.StatusMovedPermanently || loc != tt.want {
				t.Errorf("got %d Location %q, want 301 %q", status, loc, tt.want)
			}
		})
	}

	t.Run("over TLS", func(t *testing.T) {
		req := httptest.NewRequest("GET", "/a/b?x=1", nil)
		req.Host = "www.massapp.org"
		req.TLS = &tls.ConnectionState{}
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		if got, want := rec.Header().Get("Location"), "https://massapp.org/a/b?x=1"; rec.Code != 301 || got != want {
			t.Errorf("got %d Location %q, want 301 %q", rec.Code, got, want)
		}
	})
}

func TestImmutableName(t *testing.T) {
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	r.AddBackend(apiV2, fronttest.StartBackend(t, "api-v2"))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV2}})

	tests := []struct {
		name       string
		host       string
		wantStatus int
		wantBody   string
	}{
		{"domain follows the table", "api.example.org", 200, "backend api-v2"},
		{"old version by name", spec.VersionHost("api", "111111111111", zone), 200, "backend api-v1"},
		{"new version by name", spec.VersionHost("api", "222222222222", zone), 200, "backend api-v2"},
		{"name uppercase with port", "API-111111111111.Hostel.Internal:80", 200, "backend api-v1"},
		{"unknown version", spec.VersionHost("api", "333333333333", zone), 404, "hostel: no service"},
		{"unknown service", spec.VersionHost("db", "111111111111", zone), 404, "hostel: no service"},
		{"other zone", spec.VersionHost("api", "111111111111", "example.org"), 404, "hostel: no service"},
		{"short version", "api-1111.hostel.internal", 404, "hostel: no service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, body := fronttest.Get(t, pub+"/", tt.host)
			if status != tt.wantStatus || !strings.HasPrefix(body, tt.wantBody) {
				t.Errorf("Host %q: got %d %q, want %d %q…", tt.host, status, body, tt.wantStatus, tt.wantBody)
			}
		})
	}
}

func TestSwapAtomic(t *testing.T) {
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	r.AddBackend(apiV2, fronttest.StartBackend(t, "api-v2"))
	tables := []Table{
		{Domains: map[string]spec.VersionKey{"api.example.org": apiV1}},
		{Domains: map[string]spec.VersionKey{"api.example.org": apiV2}},
	}
	mustSwap(t, r, tables[0])

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var n atomic.Int64
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", pub+"/", nil)
				req.Host = "api.example.org"
				resp, err := fronttest.Client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				body := string(b)
				if err != nil || resp.StatusCode != 200 ||
					!(strings.HasPrefix(body, "backend api-v1 ") || strings.HasPrefix(body, "backend api-v2 ")) {
					errs <- fmt.Errorf("got %d %q (%v), want 200 from api-v1 or api-v2", resp.StatusCode, body, err)
					return
				}
				n.Add(1)
			}
		})
	}
	for i := range 500 {
		mustSwap(t, r, tables[i%2])
		if i%50 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	// Let requests overlap the last swaps before stopping.
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n.Load() == 0 {
		t.Error("no request completed")
	}
}

func TestSwapBadTable(t *testing.T) {
	r, _ := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	before := Table{
		Domains:   map[string]spec.VersionKey{"api.example.org": apiV1},
		Redirects: map[string]string{"www.api.example.org": "api.example.org"},
	}
	mustSwap(t, r, before)

	tests := []struct {
		name string
		tab  Table
	}{
		{"empty host", Table{Domains: map[string]spec.VersionKey{"": apiV1}}},
		{"empty redirect target", Table{Redirects: map[string]string{"x.example.org": ""}}},
		{"empty internal name", Table{Internal: map[string]spec.VersionKey{"": apiV1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := r.Swap(tt.tab); err == nil {
				t.Fatal("Swap succeeded, want an error")
			}
			got := r.Table()
			if len(got.Domains) != 1 || got.Domains["api.example.org"] != apiV1 ||
				len(got.Redirects) != 1 || got.Redirects["www.api.example.org"] != "api.example.org" {
				t.Errorf("table after failed Swap = %+v, want %+v", got, before)
			}
		})
	}
}

// TestSwapMissingBackend: a domain whose version has no backend (it could
// not start) is routed all the same and answers 503 with Retry-After; the
// other domains of the table are served.
func TestSwapMissingBackend(t *testing.T) {
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1, "web.example.org": webV1}})
	if status, _, body := fronttest.Get(t, pub+"/", "api.example.org"); status != 200 || !strings.HasPrefix(body, "backend api-v1 ") {
		t.Errorf("api.example.org: %d %q, want 200 api-v1", status, body)
	}
	req, _ := http.NewRequest("GET", pub+"/", nil)
	req.Host = "web.example.org"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || strings.Contains(string(b), "web-") {
		t.Errorf("web.example.org with no backend: %d %q (Retry-After %q), want 503 naming no version", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
	r.AddBackend(webV1, fronttest.StartBackend(t, "web-v1"))
	if status, _, body := fronttest.Get(t, pub+"/", "web.example.org"); status != 200 || !strings.HasPrefix(body, "backend web-v1 ") {
		t.Errorf("web.example.org once its backend is there: %d %q, want 200 web-v1", status, body)
	}
}

func TestTableIsACopy(t *testing.T) {
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	in := Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1}}
	mustSwap(t, r, in)
	delete(in.Domains, "api.example.org")
	out := r.Table()
	out.Domains["evil.example.org"] = apiV1
	if status, _, _ := fronttest.Get(t, pub+"/", "api.example.org"); status != 200 {
		t.Errorf("after mutating Swap's argument: got %d, want 200", status)
	}
	if status, _, _ := fronttest.Get(t, pub+"/", "evil.example.org"); status != 404 {
		t.Errorf("after mutating Table's result: got %d, want 404", status)
	}
}

func TestAddBackendNewAddr(t *testing.T) {
	r, pub := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "first"))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1}})
	if _, _, body := fronttest.Get(t, pub+"/", "api.example.org"); !strings.HasPrefix(body, "backend first") {
		t.Fatalf("got %q, want backend first", body)
	}
	r.AddBackend(apiV1, fronttest.StartBackend(t, "second"))
	if _, _, body := fronttest.Get(t, pub+"/", "api.example.org"); !strings.HasPrefix(body, "backend second") {
		t.Errorf("after AddBackend with a new addr: got %q, want backend second", body)
	}
}

func TestEndpoint(t *testing.T) {
	r, _ := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	r.AddBackend(apiV2, fronttest.StartBackend(t, "api-v2"))
	// The public table points elsewhere: endpoints ignore it.
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV2}})

	if _, err := r.OpenEndpoint(webV1, "127.0.0.1:0"); err == nil {
		t.Error("OpenEndpoint for a key with no backend succeeded, want an error")
	}
	url, err := r.OpenEndpoint(apiV1, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("OpenEndpoint: %v", err)
	}
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Errorf("URL = %q, want http://127.0.0.1:PORT", url)
	}
	again, err := r.OpenEndpoint(apiV1, "127.0.0.1:0")
	if err != nil || again != url {
		t.Errorf("second OpenEndpoint = %q, %v; want %q, nil", again, err, url)
	}

	for _, host := range []string{"", "api.example.org", "whatever", spec.VersionHost("api", "222222222222", zone)} {
		t.Run("host "+host, func(t *testing.T) {
			status, _, body := fronttest.Get(t, url+"/p?q=1", host)
			if status != 200 || !strings.HasPrefix(body, "backend api-v1 ") || !strings.Contains(body, "path=/p?q=1") {
				t.Errorf("got %d %q, want 200 from api-v1 with path /p?q=1", status, body)
			}
		})
	}

	t.Run("CloseEndpoint", func(t *testing.T) {
		r.CloseEndpoint(apiV1)
		assertRefused(t, url)
	})
	t.Run("RemoveBackend closes it", func(t *testing.T) {
		url2, err := r.OpenEndpoint(apiV2, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r.RemoveBackend(apiV2)
		assertRefused(t, url2)
	})
}

func assertRefused(t testing.TB, url string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url + "/")
	if err == nil {
		resp.Body.Close()
		t.Errorf("GET %s after close: got %s, want a connection error", url, resp.Status)
	}
}

func TestInFlight(t *testing.T) {
	r, pub := startRouter(t, Options{})
	g := fronttest.NewGate()
	r.AddBackend(apiV1, fronttest.StartHandler(t, g))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1}})
	ep, err := r.OpenEndpoint(apiV1, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct{ name, url, host string }{
		{"domain", pub, "api.example.org"},
		{"immutable name", pub, spec.VersionHost("api", "111111111111", zone)},
		{"endpoint", ep, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g.Release = make(chan struct{})
			done := make(chan string)
			go func() {
				req, _ := http.NewRequest("GET", tt.url+"/", nil)
				if tt.host != "" {
					req.Host = tt.host
				}
				resp, err := fronttest.Client.Do(req)
				if err != nil {
					done <- err.Error()
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				done <- string(b)
			}()
			<-g.Entered
			if got := r.InFlight(apiV1); got != 1 {
				t.Errorf("InFlight during the request = %d, want 1", got)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if err := r.WaitIdle(ctx, apiV1); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("WaitIdle with a request in flight = %v, want DeadlineExceeded", err)
			}

			waited := make(chan error)
			go func() { waited <- r.WaitIdle(context.Background(), apiV1) }()
			select {
			case err := <-waited:
				t.Fatalf("WaitIdle returned %v before the request finished", err)
			case <-time.After(20 * time.Millisecond):
			}
			close(g.Release)
			if body := <-done; body != "slow done" {
				t.Errorf("body = %q, want slow done", body)
			}
			select {
			case err := <-waited:
				if err != nil {
					t.Errorf("WaitIdle = %v, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("WaitIdle did not return after the request finished")
			}
			if got := r.InFlight(apiV1); got != 0 {
				t.Errorf("InFlight after the request = %d, want 0", got)
			}
		})
	}

	t.Run("unknown key", func(t *testing.T) {
		if got := r.InFlight(webV1); got != 0 {
			t.Errorf("InFlight(unknown) = %d, want 0", got)
		}
		if err := r.WaitIdle(context.Background(), webV1); err != nil {
			t.Errorf("WaitIdle(unknown) = %v, want nil", err)
		}
	})
}

func TestInFlightStreaming(t *testing.T) {
	r, pub := startRouter(t, Options{})
	release := make(chan struct{})
	r.AddBackend(apiV1, fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "data: last\n\n")
	})))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1}})

	req, _ := http.NewRequest("GET", pub+"/events", nil)
	req.Host = "api.example.org"
	resp, err := fronttest.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	// The first event arrives while the backend still holds the stream
	// open: the proxy flushed it at once.
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line = %q, %v; want data: first", line, err)
	}
	if got := r.InFlight(apiV1); got != 1 {
		t.Errorf("InFlight during the stream = %d, want 1", got)
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "\ndata: last\n\n" {
		t.Errorf("rest = %q, %v", rest, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.WaitIdle(ctx, apiV1); err != nil {
		t.Errorf("WaitIdle after the stream ended = %v", err)
	}
}

func TestBadGateway(t *testing.T) {
	var logged atomic.Int64
	r, pub := startRouter(t, Options{Logf: func(format string, args ...any) {
		logged.Add(1)
		t.Logf(format, args...)
	}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	r.AddBackend(apiV1, dead)
	r.AddBackend(webV1, fronttest.StartBackend(t, "web-v1"))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1, "web.example.org": webV1}})

	status, _, body := fronttest.Get(t, pub+"/", "api.example.org")
	if status != http.StatusBadGateway || !strings.HasPrefix(body, "hostel: ") {
		t.Errorf("got %d %q, want 502 hostel: …", status, body)
	}
	if logged.Load() == 0 {
		t.Error("the proxy error was not logged")
	}
	if got := r.InFlight(apiV1); got != 0 {
		t.Errorf("InFlight after a 502 = %d, want 0", got)
	}

	t.Run("backend removed after swap", func(t *testing.T) {
		r.RemoveBackend(webV1)
		status, _, body := fronttest.Get(t, pub+"/", "web.example.org")
		if status != http.StatusServiceUnavailable || strings.Contains(body, "backend ") {
			t.Errorf("got %d %q, want 503", status, body)
		}
	})
}

func TestNormalizeHost(t *testing.T) {
	tests := []struct{ in, want string }{
		{"example.org", "example.org"},
		{"Example.ORG", "example.org"},
		{"example.org:8080", "example.org"},
		{"example.org.", "example.org"},
		{"EXAMPLE.org.:443", "example.org"},
		{"example.org..", "example.org."},
		{"[::1]:80", "[::1]"},
		{"[::1]", "[::1]"},
		{"127.0.0.1:80", "127.0.0.1"},
		{"", ""},
		{":80", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := normalizeHost(tt.in); got != tt.want {
				t.Errorf("normalizeHost(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func FuzzHostMatch(f *testing.F) {
	for _, s := range []string{
		"api.example.org", "API.Example.Org:8080", "api.example.org.", "[::1]:80", "[::1",
		"api-111111111111.hostel.internal", "API-111111111111.HOSTEL.INTERNAL.:1",
		"www.example.org", "", ":", ".", "[", "a:b:c", "ünïcode.example", "-.hostel.internal",
	} {
		f.Add(s)
	}
	r := New(Options{Zone: zone})
	defer r.Close()
	// The backend's address refuses connections: a routed host answers 502,
	// which tells it apart from a redirect or a 404 without a network.
	r.AddBackend(apiV1, "127.0.0.1:1")
	if err := r.Swap(Table{
		Domains:   map[string]spec.VersionKey{"api.example.org": apiV1},
		Redirects: map[string]string{"www.example.org": "api.example.org"},
	}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, host string) {
		h := normalizeHost(host)
		for i := 0; i < len(h); i++ {
			if 'A' <= h[i] && h[i] <= 'Z' {
				t.Fatalf("normalizeHost(%q) = %q, not lowercase", host, h)
			}
		}
		port := h
		if strings.HasPrefix(h, "[") {
			if i := strings.IndexByte(h, ']'); i >= 0 {
				port = h[i+1:]
			}
		}
		if strings.Contains(port, ":") {
			t.Fatalf("normalizeHost(%q) = %q, still has a port", host, h)
		}

		// The internal zone answers loopback clients only.
		for _, remote := range []string{"127.0.0.1:1234", "[::1]:1234", "192.0.2.1:1234", "[2001:db8::1]:1234"} {
			req := httptest.NewRequest("GET", "/p?q=1", nil)
			req.Host, req.RemoteAddr = host, remote
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, req)
			switch rec.Code {
			case http.StatusNotFound, http.StatusMovedPermanently, http.StatusBadGateway:
			default:
				t.Fatalf("Host %q from %s: status %d", host, remote, rec.Code)
			}
			internal := strings.HasPrefix(remote, "127.") || strings.HasPrefix(remote, "[::1]")
			if want := h == "api.example.org" || internal && h == spec.VersionHost("api", "111111111111", zone); want != (rec.Code == http.StatusBadGateway) {
				t.Fatalf("Host %q (normalized %q) from %s: status %d, routed=%v", host, h, remote, rec.Code, want)
			}
			if want := h == "www.example.org"; want != (rec.Code == http.StatusMovedPermanently) {
				t.Fatalf("Host %q (normalized %q): status %d, redirected=%v", host, h, rec.Code, want)
			}
		}
	})
}

func BenchmarkProxy(b *testing.B) {
	r, pub := startRouter(b, Options{})
	r.AddBackend(apiV1, fronttest.StartHandler(b, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello, world\n")
	})))
	mustSwap(b, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1}})
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Cleanup(c.CloseIdleConnections)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("GET", pub+"/", nil)
			req.Host = "api.example.org"
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// TestAbort: requests still in flight when a draining version's grace runs
// out end with 504, and the count is reported.
func TestAbort(t *testing.T) {
	r, pub := startRouter(t, Options{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	r.AddBackend(apiV1, fronttest.StartHandler(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		select {
		case <-release:
		case <-req.Context().Done():
		}
	})))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"massapp.org": apiV1}})
	got := make(chan int, 2)
	for range 2 {
		go func() {
			status, _, _ := fronttest.Get(t, pub+"/", "massapp.org")
			got <- status
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.InFlight(apiV1) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := r.Abort(apiV1); n != 2 {
		t.Fatalf("Abort = %d, want 2", n)
	}
	for range 2 {
		if s := <-got; s != http.StatusGatewayTimeout {
			t.Errorf("aborted request got %d, want 504", s)
		}
	}
	if n := r.InFlight(apiV1); n != 0 {
		t.Errorf("in flight after abort: %d", n)
	}
	if n := r.Abort("nobody-000000000000"); n != 0 {
		t.Errorf("Abort of an unknown key = %d", n)
	}
}

// TestPreviewNames: a preview's SERVICE.ENV.ZONE names route to the
// instances the table says, and, like immutable names, only for internal
// (loopback) clients.
func TestPreviewNames(t *testing.T) {
	r := New(Options{Zone: zone})
	t.Cleanup(func() { r.Close() })
	own := spec.VersionKey(string(apiV2) + "@pr-1")
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	r.AddBackend(own, fronttest.StartBackend(t, "api-v2-pr-1"))
	mustSwap(t, r, Table{Domains: map[string]spec.VersionKey{"api.example.org": apiV1},
		Internal: map[string]spec.VersionKey{"API.pr-1." + zone: own}})
	tests := []struct {
		name, host, remote string
		wantStatus         int
		wantBody           string
	}{
		{"preview name from loopback", "api.pr-1." + zone, "127.0.0.1:1234", 200, "backend api-v2-pr-1"},
		{"preview name with port, uppercase", "Api.PR-1." + zone + ":80", "[::1]:1234", 200, "backend api-v2-pr-1"},
		{"preview name from outside", "api.pr-1." + zone, "192.0.2.1:1234", 404, "hostel: no service"},
		{"production's domain unchanged", "api.example.org", "192.0.2.1:1234", 200, "backend api-v1"},
		{"another preview", "api.pr-2." + zone, "127.0.0.1:1234", 404, "hostel: no service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/", nil)
			req.Host, req.RemoteAddr = tt.host, tt.remote
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, req)
			if rec.Code != tt.wantStatus || !strings.HasPrefix(rec.Body.String(), tt.wantBody) {
				t.Errorf("Host %q from %s: got %d %q, want %d %q…", tt.host, tt.remote, rec.Code, rec.Body.String(), tt.wantStatus, tt.wantBody)
			}
		})
	}
	if got := r.Table().Internal["api.pr-1."+zone]; got != own {
		t.Errorf("Table().Internal = %v, want the preview's name normalized to %s", r.Table().Internal, own)
	}
}

// TestShutdownEndpointsAnswersLate: a request on an endpoint's connection
// that is read after ShutdownEndpoints began — a client's first, sent on a
// connection accepted just before — is answered, its response closing the
// connection (net/http's Shutdown would close it unanswered: EOF, which a
// client retries on no fresh connection). ShutdownEndpoints returns after.
func TestShutdownEndpointsAnswersLate(t *testing.T) {
	r, _ := startRouter(t, Options{})
	r.AddBackend(apiV1, fronttest.StartBackend(t, "api-v1"))
	url, err := r.OpenEndpoint(apiV1, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /late HTTP/1.1\r\n")
	time.Sleep(50 * time.Millisecond) // accepted, its head begun

	done := make(chan struct{})
	go func() {
		r.ShutdownEndpoints(context.Background())
		close(done)
	}()
	for i := 0; ; i++ {
		probe, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			break
		}
		probe.Close()
		if i == 1000 {
			t.Fatal("the endpoint still takes connections")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("ShutdownEndpoints returned with a request under way")
	default:
	}

	io.WriteString(c, "Host: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the request read after the shutdown began got no response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "backend api-v1 ") || !resp.Close {
		t.Errorf("got %s %q, Connection: close %v; want 200 from api-v1, closing", resp.Status, body, resp.Close)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("ShutdownEndpoints did not return once the request was answered")
	}
}
