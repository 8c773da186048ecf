// Package dashboard is hostel's web dashboard: server-rendered pages of what
// the daemon runs, its generations (with a rollback button), certificates,
// databases, and logs followed live. It reads the daemon through the API
// client only, so `hostel dashboard` serves it from the CLI's own process on
// a local port: the daemon's API is never exposed by it, and a dashboard
// that crashes or hangs takes nothing of the daemon with it.
//
// Access is by a one-time login token, printed with the URL, exchanged for
// a session cookie (HttpOnly, SameSite=Strict); a request without a session
// gets 401 and an empty body. Forms that change something (rollback) also
// carry the session's CSRF token.
package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"hostel/internal/api"
)

// Daemon is what the dashboard needs of the daemon; *api.Client is one.
type Daemon interface {
	Status(ctx context.Context) (*api.Status, error)
	Generations(ctx context.Context) (*api.Generations, error)
	Envs(ctx context.Context) (*api.EnvList, error)
	EnvStatus(ctx context.Context, env string) (*api.Status, error)
	Rollback(ctx context.Context, req api.RollbackRequest, progress func(string)) (*api.DeployResult, error)
	EnvLogs(ctx context.Context, env, service, version string, n int, follow bool, w io.Writer) error
	AccessLogs(ctx context.Context, env, service string, n int, follow bool, w io.Writer) error
	// Metrics writes the daemon's Prometheus metrics in the text format.
	Metrics(ctx context.Context, w io.Writer) error
}

var _ Daemon = (*api.Client)(nil)

//go:embed assets
var assets embed.FS

// sessionCookie names the cookie that carries a session's id.
const sessionCookie = "hostel_dashboard"

// pollInterval is how often /events asks the daemon whether anything
// changed.
const pollInterval = 500 * time.Millisecond

// Server serves the dashboard. Its zero value is not usable: use New.
type Server struct {
	daemon Daemon
	tmpl   *template.Template
	mux    *http.ServeMux
	// history is the daemon's metrics scraped by Sample.
	history history

	mu sync.Mutex
	// token is the one-time login token; "" once it was used.
	token string
	// sessions holds each session's CSRF token, by session id.
	sessions map[string]string
}

// New returns a dashboard of d with a fresh one-time login token (Token).
func New(d Daemon) *Server {
	s := &Server{daemon: d, token: randomHex(), sessions: map[string]string{}}
	s.tmpl = template.Must(template.New("").Funcs(funcs).ParseFS(assets, "assets/*.html"))
	static, _ := fs.Sub(assets, "assets")
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /login", s.login)
	s.mux.Handle("GET /static/", s.authed(http.StripPrefix("/static/", http.FileServer(http.FS(static))).ServeHTTP))
	s.mux.HandleFunc("GET /{$}", s.authed(s.services))
	s.mux.HandleFunc("GET /generations", s.authed(s.generations))
	s.mux.HandleFunc("POST /rollback", s.authed(s.rollback))
	s.mux.HandleFunc("GET /certificates", s.authed(s.certificates))
	s.mux.HandleFunc("GET /databases", s.authed(s.databases))
	s.mux.HandleFunc("GET /logs", s.authed(s.logs))
	s.mux.HandleFunc("GET /logs/stream", s.authed(s.logStream))
	s.mux.HandleFunc("GET /events", s.authed(s.events))
	return s
}

// Token is the one-time login token: GET /login?token=TOKEN once.
func (s *Server) Token() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token
}

// ServeHTTP serves the dashboard, with headers that keep its pages out of
// other sites' frames and its URLs (the token's) out of Referer headers.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	w.Header().Set("Referrer-Policy", "no-referrer")
	s.mux.ServeHTTP(w, r)
}

func randomHex() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// login exchanges the one-time token for a session: the token works once,
// so a URL that leaks (shell history, a screenshot) after its use opens
// nothing.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	got := r.URL.Query().Get("token")
	s.mu.Lock()
	ok := s.token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) == 1
	var id string
	if ok {
		s.token = ""
		id = randomHex()
		s.sessions[id] = randomHex()
	}
	s.mu.Unlock()
	if !ok {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// sessionCSRF returns the CSRF token of r's session; ok is false without a
// valid session.
func (s *Server) sessionCSRF(r *http.Request) (csrf string, ok bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	csrf, ok = s.sessions[c.Value]
	return csrf, ok
}

// authed lets through requests of a session; others get 401 and nothing
// else.
func (s *Server) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, ok := s.sessionCSRF(r); !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		h(w, r)
	}
}

func subtleEqual(a, b string) bool {
	return b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
