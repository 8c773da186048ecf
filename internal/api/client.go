package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
)

// Client talks to a daemon over its unix socket, or over the remote API
// (remote.go).
type Client struct {
	// socket says where the daemon is, in messages: its socket, or the
	// remote API's URL.
	socket string
	// base is what request paths are appended to; "" is "http://hostel"
	// (the socket's transport ignores the host).
	base string
	// token is sent as the bearer token; "" over the socket.
	token string
	hc    *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// UnreachableError is returned when no daemon answers on the socket.
type UnreachableError struct {
	// Socket is the daemon's socket, or the remote API's URL when Remote.
	Socket string
	Remote bool
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the hostel daemon at %s: %v", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// do sends body, if any, as JSON.
func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	if body == nil {
		return c.send(ctx, method, path, "", nil)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	return c.send(ctx, method, path, "application/json", bytes.NewReader(b))
}

// send does one request with body, of contentType, if any.
func (c *Client) send(ctx context.Context, method, path, contentType string, body io.Reader) (*http.Response, error) {
	base := c.base
	if base == "" {
		base = "http://hostel"
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if rerr := c.remoteError(resp, err); rerr != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return nil, rerr
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &UnreachableError{Socket: c.socket, Remote: c.token != "", Err: err}
	}
	return resp, nil
}

// call does one request and decodes the JSON answer into out.
func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func decodeError(resp *http.Response) error {
	var ev Event
	if err := json.NewDecoder(resp.Body).Decode(&ev); err != nil || ev.Error == nil {
		return &Error{Kind: KindFailed, Message: fmt.Sprintf("daemon answered %s", resp.Status)}
	}
	return ev.Error
}

// streamDeploy does a streamed deploy or rollback: each progress line goes
// to progress. It returns the result whenever the daemon sent one, also
// with the error of an operation that failed after it did something.
func (c *Client) streamDeploy(ctx context.Context, path string, body any, progress func(string)) (*DeployResult, error) {
	resp, err := c.do(ctx, http.MethodPost, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("bad answer from daemon: %w", err)
		}
		if ev.Result == nil && ev.Error == nil {
			if progress != nil {
				progress(ev.Progress)
			}
			continue
		}
		if ev.Error != nil {
			return ev.Result, ev.Error
		}
		return ev.Result, nil
	}
	// What the operation did is in the store: a generation it committed
	// is current, and a confirm window it opened is finished by the
	// daemon's next start.
	const after = "; `hostel status` and `hostel generations` show where it stopped"
	if err := sc.Err(); err != nil {
		return nil, &Error{Kind: KindFailed, Message: "lost the daemon mid-operation: " + err.Error() + after}
	}
	return nil, &Error{Kind: KindFailed, Message: "the daemon closed the connection before it finished" + after}
}

// Plan asks what a deploy would change. out receives the plan's JSON.
func (c *Client) Plan(ctx context.Context, req PlanRequest, out any) error {
	return c.call(ctx, http.MethodPost, "/v1/plan", req, out)
}

// Deploy applies a spec; progress receives each step. A deploy that failed
// after it did something (switched back, say) returns its result and an
// error.
func (c *Client) Deploy(ctx context.Context, req DeployRequest, progress func(string)) (*DeployResult, error) {
	return c.streamDeploy(ctx, "/v1/deploy", req, progress)
}

// Rollback switches to another generation.
func (c *Client) Rollback(ctx context.Context, req RollbackRequest, progress func(string)) (*DeployResult, error) {
	return c.streamDeploy(ctx, "/v1/rollback", req, progress)
}

// Restart restarts a service's running version.
func (c *Client) Restart(ctx context.Context, service string) error {
	return c.call(ctx, http.MethodPost, "/v1/restart", RestartRequest{Service: service}, nil)
}

// GC drops old generations.
func (c *Client) GC(ctx context.Context, keep int) (*GCResult, error) {
	var r GCResult
	return &r, c.call(ctx, http.MethodPost, "/v1/gc", GCRequest{Keep: keep}, &r)
}

// Status returns what runs.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.call(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Generations returns the history.
func (c *Client) Generations(ctx context.Context) (*Generations, error) {
	var g Generations
	return &g, c.call(ctx, http.MethodGet, "/v1/generations", nil, &g)
}

// Logs copies a service's log to w.
func (c *Client) Logs(ctx context.Context, service, version string, n int, follow bool, w io.Writer) error {
	return c.EnvLogs(ctx, "", service, version, n, follow, w)
}

// EnvLogs copies the log of a service of environment env ("" is
// production) to w.
func (c *Client) EnvLogs(ctx context.Context, env, service, version string, n int, follow bool, w io.Writer) error {
	return c.logs(ctx, url.Values{"service": {service}, "version": {version}}, env, n, follow, w)
}

// AccessLogs copies the access log of a service of environment env (""
// is production) to w: its JSON lines as written.
func (c *Client) AccessLogs(ctx context.Context, env, service string, n int, follow bool, w io.Writer) error {
	return c.logs(ctx, url.Values{"service": {service}, "access": {"1"}}, env, n, follow, w)
}

// logs copies what GET /v1/logs answers to q, with env, n and follow, to w.
func (c *Client) logs(ctx context.Context, q url.Values, env string, n int, follow bool, w io.Writer) error {
	q.Set("n", strconv.Itoa(n))
	if env != "" {
		q.Set("env", env)
	}
	if follow {
		q.Set("follow", "1")
	}
	err := c.copyTo(ctx, "/v1/logs?"+q.Encode(), w)
	if ctx.Err() != nil {
		return nil // -f ends when the user interrupts it
	}
	return err
}

// copyTo copies the body of GET path to w.
func (c *Client) copyTo(ctx context.Context, path string, w io.Writer) error {
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// Metrics copies the daemon's Prometheus metrics (GET /metrics, the text
// format of docs/metrics.md) to w.
func (c *Client) Metrics(ctx context.Context, w io.Writer) error {
	return c.copyTo(ctx, "/metrics", w)
}
