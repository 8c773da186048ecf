// Package dashboard is hostel's web dashboard: server-rendered pages of what
// the daemon runs, its generations (with a rollback button), certificates,
// databases, and logs followed live. It reads the daemon through the API
// client only, so `hostel dashboard` serves it from the CLI's own process on
// a local port: the daemon's API is never exposed by it, and a dashboard
// that crashes or hangs takes nothing of the daemon with it.
//
// The daemon serves the same pages on its remote API's listener (serve
// --api-listen), next to the API: there the login token is the remote
// API's own, which works for any number of logins.
//
// Access is by a login token (GET /login?token=TOKEN), exchanged for a
// session cookie (HttpOnly, SameSite=Strict, and Secure over TLS); a
// request without a session gets 401 and an empty body, whatever its path.
// Forms that change something (rollback) also carry the session's CSRF
// token.
package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
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
	// FollowDeploys calls fn with the progress of the deploys and
	// rollbacks under way (and of the last that ended), then with what
	// comes, until ctx ends.
	FollowDeploys(ctx context.Context, fn func(api.DeployEvent)) error
}

var _ Daemon = (*api.Client)(nil)

//go:embed assets
var assets embed.FS

// sessionCookie names the cookie that carries a session's id.
const sessionCookie = "hostel_dashboard"

// maxSessions bounds the sessions a dashboard keeps.
const maxSessions = 1000

// pollInterval is how often /events asks the daemon whether anything
// changed.
const pollInterval = 500 * time.Millisecond

// Options say who may log in to a dashboard.
type Options struct {
	// Token is the login token, good for any number of logins: the
	// remote API's token, which its holder may use for anything anyway.
	// "" makes a fresh token that works once (Token), for a URL printed
	// on a terminal.
	Token string
	// Refused, if set, is told of each request refused for want of a
	// session or with a wrong token (to count and log where they came
	// from: it must not log the request's URL, which may hold a token).
	Refused func(*http.Request)
	// SampleEvery, if set, makes the dashboard scrape the daemon's
	// metrics (Sample) this often from its first login until Close: a
	// dashboard served all the time costs nothing until someone looks.
	SampleEvery time.Duration
}

// Server serves the dashboard. Its zero value is not usable: use New.
type Server struct {
	daemon  Daemon
	refused func(*http.Request)
	// sampleEvery and sampling start Sample at the first login.
	sampleEvery time.Duration
	sampling    sync.Once
	tmpl        *template.Template
	mux         *http.ServeMux
	// history is the daemon's metrics scraped by Sample.
	history history
	// done ends the streams (logs, events) when the dashboard closes: a
	// browser's open page does not hold a server's shutdown.
	done      context.Context
	closeDone context.CancelFunc

	mu sync.Mutex
	// token is the login token's SHA-256; once is set for a one-time
	// token, used is set once it was used.
	token      [32]byte
	once, used bool
	// oneTime is the one-time token itself, for Token; "" once used.
	oneTime string
	// sessions holds each session's CSRF token, by session id.
	sessions map[string]string
}

// New returns a dashboard of d, logged in to as opts say.
func New(d Daemon, opts Options) *Server {
	s := &Server{daemon: d, refused: opts.Refused, sampleEvery: opts.SampleEvery, sessions: map[string]string{}}
	if opts.Token == "" {
		s.oneTime, s.once = randomHex(), true
		opts.Token = s.oneTime
	}
	s.token = sha256.Sum256([]byte(opts.Token))
	s.done, s.closeDone = context.WithCancel(context.Background())
	s.tmpl = template.Must(template.New("").Funcs(funcs).ParseFS(assets, "assets/*.html"))
	static, _ := fs.Sub(assets, "assets")
	s.mux = http.NewServeMux()
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServer(http.FS(static))))
	s.mux.HandleFunc("GET /{$}", s.services)
	s.mux.HandleFunc("GET /generations", s.generations)
	s.mux.HandleFunc("POST /rollback", s.rollback)
	s.mux.HandleFunc("GET /certificates", s.certificates)
	s.mux.HandleFunc("GET /databases", s.databases)
	s.mux.HandleFunc("GET /logs", s.logs)
	s.mux.HandleFunc("GET /logs/stream", s.logStream)
	s.mux.HandleFunc("GET /events", s.events)
	s.mux.HandleFunc("GET /deploys/stream", s.deployStream)
	return s
}

// Token is the one-time login token (GET /login?token=TOKEN, once); ""
// once it was used, and for a dashboard given its token (Options.Token).
func (s *Server) Token() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.oneTime
}

// Close ends the dashboard's streams (logs, events, deploys) and its
// sampling; pages are still served.
func (s *Server) Close() { s.closeDone() }

// ServeHTTP serves the dashboard, with headers that keep its pages out of
// other sites' frames and its URLs (the token's) out of Referer headers.
// Every path but /login needs a session: without one, the answer is 401
// and nothing else, so that not even which paths exist shows.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if r.URL.Path == "/login" && r.Method == http.MethodGet {
		s.login(w, r)
		return
	}
	if _, ok := s.sessionCSRF(r); !ok {
		s.refuse(w, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// refuse answers 401 and nothing else.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request) {
	if s.refused != nil {
		s.refused(r)
	}
	w.WriteHeader(http.StatusUnauthorized)
}

// streamContext is r's context, ended also when the dashboard closes.
func (s *Server) streamContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(s.done, cancel)
	return ctx, func() { stop(); cancel() }
}

func randomHex() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// login exchanges the login token for a session. A one-time token works
// once, so a URL that leaks (shell history, a screenshot) after its use
// opens nothing.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	// Hashes of equal length: the comparison's time says nothing of the
	// token, not even its length.
	got := sha256.Sum256([]byte(r.URL.Query().Get("token")))
	s.mu.Lock()
	ok := !s.used && subtle.ConstantTimeCompare(got[:], s.token[:]) == 1
	var id string
	if ok {
		s.used, s.oneTime = s.once, ""
		if len(s.sessions) >= maxSessions {
			// A token good for many logins makes sessions without end:
			// some other one goes (its browser logs in again).
			for other := range s.sessions {
				delete(s.sessions, other)
				break
			}
		}
		id = randomHex()
		s.sessions[id] = randomHex()
	}
	s.mu.Unlock()
	if !ok {
		s.refuse(w, r)
		return
	}
	if s.sampleEvery > 0 {
		s.sampling.Do(func() { go s.Sample(s.done, s.sampleEvery) })
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
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

func subtleEqual(a, b string) bool {
	return b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
