package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"hostel/internal/plan"
)

// Daemon is what the API serves. The daemon implements it; tests may too.
type Daemon interface {
	Plan(ctx context.Context, req PlanRequest) (*plan.Plan, error)
	// Deploy and Rollback return what they did, also when they fail after
	// doing something (a result and an error); nil with an error when they
	// did nothing.
	Deploy(ctx context.Context, req DeployRequest, progress func(string)) (*DeployResult, error)
	Rollback(ctx context.Context, req RollbackRequest, progress func(string)) (*DeployResult, error)
	Restart(ctx context.Context, req RestartRequest) error
	Status(ctx context.Context) (*Status, error)
	Generations(ctx context.Context) (*Generations, error)
	GC(ctx context.Context, req GCRequest) (*GCResult, error)
	// Logs writes a service's log to w: the last n lines, then, with follow,
	// what is appended until ctx ends.
	Logs(ctx context.Context, service, version string, n int, follow bool, w io.Writer) error
}

// Invalid wraps err as an input error (exit 2).
func Invalid(err error) error { return &Error{Kind: KindInvalid, Message: err.Error()} }

// NewHandler returns the API's HTTP handler.
func NewHandler(d Daemon) http.Handler {
	mux := http.NewServeMux()
	deploys := newDeployLog()
	handleDeploys(mux, deploys)
	handleFailpoints(mux)
	handleNodes(mux, d)
	handleWake(mux, d)
	mux.HandleFunc("POST /v1/plan", func(w http.ResponseWriter, r *http.Request) {
		var req PlanRequest
		if !decodeBody(w, r, &req) {
			return
		}
		p, err := d.Plan(r.Context(), req)
		reply(w, p, err)
	})
	mux.HandleFunc("POST /v1/deploy", func(w http.ResponseWriter, r *http.Request) {
		var req DeployRequest
		if !decodeBody(w, r, &req) {
			return
		}
		deploys.stream(w, "deploy", func(progress func(string)) (*DeployResult, error) { return d.Deploy(r.Context(), req, progress) })
	})
	mux.HandleFunc("POST /v1/rollback", func(w http.ResponseWriter, r *http.Request) {
		var req RollbackRequest
		if !decodeBody(w, r, &req) {
			return
		}
		deploys.stream(w, "rollback", func(progress func(string)) (*DeployResult, error) { return d.Rollback(r.Context(), req, progress) })
	})
	mux.HandleFunc("POST /v1/restart", func(w http.ResponseWriter, r *http.Request) {
		var req RestartRequest
		if !decodeBody(w, r, &req) {
			return
		}
		reply(w, struct{}{}, d.Restart(r.Context(), req))
	})
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		var req GCRequest
		if !decodeBody(w, r, &req) {
			return
		}
		res, err := d.GC(r.Context(), req)
		reply(w, res, err)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("all") != "" {
			ad, ok := d.(AllStatusDaemon)
			if !ok {
				reply(w, nil, Invalid(errors.New("--all: this daemon does not list kept versions")))
				return
			}
			s, err := ad.AllStatus(r.Context(), r.URL.Query().Get("env"))
			reply(w, s, err)
			return
		}
		if env := r.URL.Query().Get("env"); env != "" {
			if ed, ok := d.(EnvDaemon); ok {
				s, err := ed.EnvStatus(r.Context(), env)
				reply(w, s, err)
				return
			}
		}
		s, err := d.Status(r.Context())
		reply(w, s, err)
	})
	mux.HandleFunc("GET /v1/generations", func(w http.ResponseWriter, r *http.Request) {
		if env := r.URL.Query().Get("env"); env != "" {
			if ed, ok := d.(EnvDaemon); ok {
				g, err := ed.EnvGenerations(r.Context(), env)
				reply(w, g, err)
				return
			}
		}
		g, err := d.Generations(r.Context())
		reply(w, g, err)
	})
	mux.HandleFunc("GET /v1/logs", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n, err := strconv.Atoi(q.Get("n"))
		if err != nil {
			n = 100
		}
		fw := &flushWriter{w: w}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if q.Get("access") == "1" {
			al, ok := d.(AccessLogs)
			if !ok {
				reply(w, nil, Invalid(errors.New("this daemon keeps no access logs")))
				return
			}
			err = al.AccessLogs(r.Context(), q.Get("env"), q.Get("service"), n, q.Get("follow") == "1", fw)
		} else if env := q.Get("env"); env != "" {
			ld, ok := d.(EnvLogs)
			if !ok {
				reply(w, nil, Invalid(fmt.Errorf("environment %q: this daemon has no environments", env)))
				return
			}
			err = ld.EnvLogs(r.Context(), env, q.Get("service"), q.Get("version"), n, q.Get("follow") == "1", fw)
		} else {
			err = d.Logs(r.Context(), q.Get("service"), q.Get("version"), n, q.Get("follow") == "1", fw)
		}
		if err != nil && !fw.wrote {
			reply(w, nil, err)
		}
	})
	handleSecrets(mux, d)
	handleEnvs(mux, d)
	handleDB(mux, d)
	handlePause(mux, d)
	handleShutdown(mux, d)
	handleUpgrade(mux, d)
	handleNix(mux, d)
	return mux
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		reply(w, nil, Invalid(fmt.Errorf("bad request: %w", err)))
		return false
	}
	return true
}

// toError turns any error into the API's Error: an *Error keeps its kind,
// anything else is a failure.
func toError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Kind: KindFailed, Message: err.Error()}
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		e := toError(err)
		code := http.StatusInternalServerError
		if e.Kind == KindInvalid {
			code = http.StatusBadRequest
		}
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(Event{Error: e})
		return
	}
	json.NewEncoder(w).Encode(v)
}

type flushWriter struct {
	w     http.ResponseWriter
	wrote bool
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.wrote = true
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}
