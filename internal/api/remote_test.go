package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// remoteServer serves a status of generation 7 behind RequireToken over
// TLS, and returns its URL, its token, and counts of the requests served and
// refused.
func remoteServer(t *testing.T) (url string, tok Token, served, refused *atomic.Int64) {
	t.Helper()
	served, refused = new(atomic.Int64), new(atomic.Int64)
	var h http.Handler
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	tok, err := NewToken(KeyPin(srv.Certificate().RawSubjectPublicKeyInfo))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		reply(w, &Status{Generation: 7}, nil)
	})
	h = RequireToken(tok, mux, func(r *http.Request) {
		if r.Header.Get("Authorization") == "" && r.URL.Path == "" {
			t.Error("refused without a request")
		}
		refused.Add(1)
	})
	return srv.URL, tok, served, refused
}

func TestRemoteClient(t *testing.T) {
	url, tok, served, refused := remoteServer(t)
	other, err := NewToken(tok.Pin) // right daemon, wrong secret
	if err != nil {
		t.Fatal(err)
	}
	wrongPin := tok
	wrongPin.Pin[0] ^= 1

	tests := []struct {
		name                  string
		token                 string
		wantGen               uint64
		wantKind, wantMessage string
		wantServed, wantSeen  int64 // requests served, refused
	}{
		{name: "the daemon's token", token: tok.String(), wantGen: 7, wantServed: 1},
		{name: "another secret", token: other.String(), wantKind: KindInvalid, wantMessage: "refused the token in HOSTEL_TOKEN (401)", wantSeen: 1},
		// The handshake fails: the request, and the token, never reach it.
		{name: "another pin", token: wrongPin.String(), wantKind: KindFailed, wantMessage: "is not the one HOSTEL_TOKEN names"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			served.Store(0)
			refused.Store(0)
			c, err := NewRemoteClient(url, tt.token)
			if err != nil {
				t.Fatal(err)
			}
			st, err := c.Status(context.Background())
			if tt.wantKind == "" {
				if err != nil || st.Generation != tt.wantGen {
					t.Fatalf("Status() = %+v, %v; want generation %d", st, err, tt.wantGen)
				}
			} else {
				var ae *Error
				if !errors.As(err, &ae) || ae.Kind != tt.wantKind || !strings.Contains(ae.Message, tt.wantMessage) {
					t.Fatalf("Status() error = %#v; want kind %s saying %q", err, tt.wantKind, tt.wantMessage)
				}
				if strings.Contains(ae.Message, tt.token) || strings.Contains(ae.Message, tok.String()) {
					t.Errorf("the error repeats a token: %s", ae.Message)
				}
			}
			if got := served.Load(); got != tt.wantServed {
				t.Errorf("served %d requests, want %d", got, tt.wantServed)
			}
			if got := refused.Load(); got != tt.wantSeen {
				t.Errorf("refused %d requests, want %d", got, tt.wantSeen)
			}
		})
	}
}

// TestRequireTokenServesNothingElse: without the token every path, known or
// not, is 401, and the handler behind never runs.
func TestRequireTokenServesNothingElse(t *testing.T) {
	url, tok, served, refused := remoteServer(t)
	c, err := NewRemoteClient(url, tok.String())
	if err != nil {
		t.Fatal(err)
	}
	hc := c.hc // pinned to the test server
	for _, tt := range []struct{ name, path, auth string }{
		{"no header", "/v1/status", ""},
		{"another scheme", "/v1/status", "Basic " + tok.String()},
		{"the secret alone", "/v1/status", "Bearer " + strings.Split(tok.String(), ".")[1]},
		{"a token with one more byte", "/v1/status", "Bearer " + tok.String() + "x"},
		{"an unknown path", "/v1/nothing", ""},
		{"the root", "/", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", url+tt.path, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", resp.StatusCode)
			}
		})
	}
	if served.Load() != 0 || refused.Load() != 6 {
		t.Errorf("served %d, refused %d; want 0 and 6", served.Load(), refused.Load())
	}
	// The scheme's case does not matter (RFC 7235).
	req, _ := http.NewRequest("GET", url+"/v1/status", nil)
	req.Header.Set("Authorization", "bearer "+tok.String())
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("lower-case bearer: status %d, want 200", resp.StatusCode)
	}
}

func TestParseToken(t *testing.T) {
	tok, err := NewToken(KeyPin([]byte("key")))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseToken(" " + tok.String() + "\n")
	if err != nil || got != tok {
		t.Fatalf("ParseToken(String()) = %v, %v; want the token back", got, err)
	}
	parts := strings.Split(tok.String(), ".")
	for _, tt := range []struct{ name, in string }{
		{"empty", ""},
		{"no pin", parts[0] + "." + parts[1]},
		{"another format", "hostel2." + parts[1] + "." + parts[2]},
		{"short secret", parts[0] + "." + parts[1][:40] + "." + parts[2]},
		{"not base64url", parts[0] + "." + parts[1] + "." + strings.Repeat("+", 43)},
		{"one more part", tok.String() + ".x"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseToken(tt.in); err == nil {
				t.Fatalf("ParseToken(%q) took it", tt.in)
			} else if len(tt.in) > 20 && strings.Contains(err.Error(), tt.in[8:]) {
				t.Errorf("the error repeats the token: %v", err)
			}
		})
	}
}

func TestNewRemoteClientRefuses(t *testing.T) {
	tok, _ := NewToken(KeyPin([]byte("key")))
	for _, tt := range []struct{ name, url, token, want string }{
		{"http", "http://h:1", tok.String(), "HTTPS only"},
		{"no port", "https://h", tok.String(), "with the port"},
		{"port 0", "https://h:0", tok.String(), "is not a port"},
		{"a path", "https://h:1/v1", tok.String(), "nothing after it"},
		{"user info", "https://u:p@h:1", tok.String(), "nothing after it"},
		{"bare host", "h:1", tok.String(), "want https://HOST:PORT"},
		{"no token", "https://h:1", "", "HOSTEL_TOKEN is not set"},
		{"bad token", "https://h:1", "secret", "not a hostel token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewRemoteClient(tt.url, tt.token)
			var ae *Error
			if !errors.As(err, &ae) || ae.Kind != KindInvalid || !strings.Contains(ae.Message, tt.want) {
				t.Fatalf("NewRemoteClient(%q) = %v; want an input error saying %q", tt.url, err, tt.want)
			}
			if strings.Contains(ae.Message, "\n") {
				t.Errorf("not one line: %q", ae.Message)
			}
		})
	}
}
