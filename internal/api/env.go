package api

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Env is one environment, as `GET /v1/envs` lists it.
type Env struct {
	Name string `json:"name"`
	// Generation is the environment's current generation.
	Generation uint64 `json:"generation"`
	// Created is when its first generation still kept was committed.
	Created time.Time `json:"created"`
	// Expires is when the daemon removes it: previews.ttl after its last
	// deploy.
	Expires time.Time `json:"expires"`
	// Started are the services the environment runs its own instance of
	// (own data); Shared maps the others to the environment whose
	// instance they use (and whose data they write to).
	Started []string          `json:"started"`
	Shared  map[string]string `json:"shared"`
	// URLs are where its services answer (SERVICE.ENV.ZONE, for
	// loopback clients).
	URLs []string `json:"urls"`
	// State is "running" when every instance it uses runs and is ready,
	// else "degraded".
	State string `json:"state"`
}

// EnvList is `GET /v1/envs`: every preview environment, by name.
type EnvList struct {
	Envs []Env `json:"envs"`
}

// EnvRemoved is what `DELETE /v1/envs/{name}` did.
type EnvRemoved struct {
	Env        string `json:"env"`
	Generation uint64 `json:"generation"`
	// Stopped are the instances that stopped (the ones only the
	// environment held); Removed, what went with them: state directories
	// and GC roots, one path or name each.
	Stopped []string `json:"stopped"`
	Removed []string `json:"removed"`
	Aborted int64    `json:"aborted"`
}

// EnvDaemon is what a daemon with preview environments serves, in
// addition to Daemon: the environments, and status, generations and logs
// of one environment (`?env=NAME`; production without it).
type EnvDaemon interface {
	Envs(ctx context.Context) (*EnvList, error)
	RemoveEnv(ctx context.Context, name string, progress func(string)) (*EnvRemoved, error)
	EnvStatus(ctx context.Context, env string) (*Status, error)
	EnvGenerations(ctx context.Context, env string) (*Generations, error)
}

// EnvLogs is a daemon that serves the logs of a preview's services
// (`GET /v1/logs?env=NAME`).
type EnvLogs interface {
	EnvLogs(ctx context.Context, env, service, version string, n int, follow bool, w io.Writer) error
}

// AccessLogs is a daemon that serves its services' access logs
// (`GET /v1/logs?access=1`): env "" is production.
type AccessLogs interface {
	AccessLogs(ctx context.Context, env, service string, n int, follow bool, w io.Writer) error
}

// handleEnvs adds the environment endpoints when d serves them.
func handleEnvs(mux *http.ServeMux, d Daemon) {
	ed, ok := d.(EnvDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("GET /v1/envs", func(w http.ResponseWriter, r *http.Request) {
		l, err := ed.Envs(r.Context())
		reply(w, l, err)
	})
	mux.HandleFunc("DELETE /v1/envs/{name}", func(w http.ResponseWriter, r *http.Request) {
		res, err := ed.RemoveEnv(r.Context(), r.PathValue("name"), func(string) {})
		reply(w, res, err)
	})
}

// envQuery is the query that names environment env; "" for production.
func envQuery(env string) string {
	if env == "" {
		return ""
	}
	return "?" + url.Values{"env": {env}}.Encode()
}

// Envs lists the preview environments.
func (c *Client) Envs(ctx context.Context) (*EnvList, error) {
	var l EnvList
	return &l, c.call(ctx, http.MethodGet, "/v1/envs", nil, &l)
}

// RemoveEnv removes preview environment name.
func (c *Client) RemoveEnv(ctx context.Context, name string) (*EnvRemoved, error) {
	var r EnvRemoved
	return &r, c.call(ctx, http.MethodDelete, "/v1/envs/"+url.PathEscape(name), nil, &r)
}

// EnvStatus returns what runs for environment env ("" is production).
func (c *Client) EnvStatus(ctx context.Context, env string) (*Status, error) {
	var s Status
	return &s, c.call(ctx, http.MethodGet, "/v1/status"+envQuery(env), nil, &s)
}

// EnvGenerations returns environment env's history ("" is production).
func (c *Client) EnvGenerations(ctx context.Context, env string) (*Generations, error) {
	var g Generations
	return &g, c.call(ctx, http.MethodGet, "/v1/generations"+envQuery(env), nil, &g)
}
