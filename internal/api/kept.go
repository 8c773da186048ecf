package api

import (
	"context"
	"net/http"
	"net/url"
)

// AllStatusDaemon is a daemon whose status also lists every version
// still kept — asleep, callable, draining — beside the current ones
// (`GET /v1/status?all=1`, `hostel status --all`).
type AllStatusDaemon interface {
	// AllStatus is the status of environment env ("" is production)
	// with every version still kept; those no current generation holds
	// have Kept set.
	AllStatus(ctx context.Context, env string) (*Status, error)
}

// AllStatus returns the status of environment env ("" is production)
// with every version still kept.
func (c *Client) AllStatus(ctx context.Context, env string) (*Status, error) {
	q := url.Values{"all": {"1"}}
	if env != "" {
		q.Set("env", env)
	}
	var s Status
	return &s, c.call(ctx, http.MethodGet, "/v1/status?"+q.Encode(), nil, &s)
}
