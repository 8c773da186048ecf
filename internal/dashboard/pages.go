package dashboard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"hostel/internal/api"
	"hostel/internal/plan"
)

var funcs = template.FuncMap{
	"bytes": func(n int64) string {
		switch {
		case n == 0:
			return "—"
		case n >= 1<<30:
			return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
		case n >= 1<<20:
			return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
		default:
			return fmt.Sprintf("%d KiB", n>>10)
		}
	},
	"ago": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return time.Since(*t).Truncate(time.Second).String() + " ago"
	},
	"when":  func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"deref": func(t *time.Time) time.Time { return *t },
	"ms": func(d time.Duration) string {
		if d < 10*time.Millisecond {
			return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
		}
		return d.Round(time.Millisecond).String()
	},
	"join": strings.Join,
	"pct":  func(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + " %" },
	"cpu": func(s float64) string {
		if s == 0 {
			return "—"
		}
		return strconv.FormatFloat(s, 'f', 1, 64) + " s"
	},
}

// page is what every page's template gets.
type page struct {
	Title string
	// Live makes the page reload itself when /events says the daemon's
	// state changed.
	Live bool
	CSRF string
	Err  string
	Data any
}

// render executes template name into a buffer first, so that a failing
// template sends a 500 and not half a page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, name string, p page) {
	p.CSRF, _ = s.sessionCSRF(r)
	var b bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&b, name, p); err != nil {
		http.Error(w, "internal error: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(b.Bytes())
}

// serviceRow is one instance of a service on the services page.
type serviceRow struct {
	api.ServiceStatus
	// Env is the environment shown: "production" or a preview's name.
	Env string
	// Rates are its traffic's, from the daemon's metrics.
	Rates Rates
}

// allServices returns the status of production and of every preview
// environment, production's first.
func (s *Server) allServices(r *http.Request, withRates bool) (gen uint64, rows []serviceRow, certs []api.CertStatus, err error) {
	ctx := r.Context()
	st, err := s.daemon.Status(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	var rates map[instance]Rates
	if withRates {
		rates = s.history.rates()
	}
	add := func(env string, st *api.Status) {
		for _, svc := range st.Services {
			rows = append(rows, serviceRow{ServiceStatus: svc, Env: env, Rates: rates[instance{svc.Name, env}]})
		}
	}
	add("production", st)
	envs, err := s.daemon.Envs(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	for _, e := range envs.Envs {
		est, err := s.daemon.EnvStatus(ctx, e.Name)
		if err != nil {
			return 0, nil, nil, err
		}
		add(e.Name, est)
	}
	return st.Generation, rows, st.Certificates, nil
}

func (s *Server) services(w http.ResponseWriter, r *http.Request) {
	gen, rows, _, err := s.allServices(r, true)
	p := page{Title: "Services", Live: true}
	if err != nil {
		p.Err = err.Error()
	}
	p.Data = struct {
		Generation uint64
		Rows       []serviceRow
		// RatesNote stands for the rates of a row without any.
		RatesNote string
	}{gen, rows, s.history.note()}
	s.render(w, r, "services.html", p)
}

// generationRow is a generation with what its deploy did, and why.
type generationRow struct {
	api.Generation
	// Planned is set when the generation kept its plan, and Did are then
	// its entries that changed something (keep is left out).
	Planned bool
	Did     []plan.Change
	// Changes, for a generation without a plan (made by an older hostel),
	// is what changed from the one before it, without reasons.
	Changes []string
}

// diff lists the services a generation added, changed or removed against
// the one before it.
func diff(prev, cur map[string]string) []string {
	var out []string
	for name, v := range cur {
		switch old, ok := prev[name]; {
		case !ok:
			out = append(out, "add "+name+" "+v)
		case old != v:
			out = append(out, "change "+name+" "+old+" → "+v)
		}
	}
	for name, v := range prev {
		if _, ok := cur[name]; !ok {
			out = append(out, "remove "+name+" "+v)
		}
	}
	slices.SortFunc(out, func(a, b string) int {
		return strings.Compare(strings.SplitN(a, " ", 3)[1], strings.SplitN(b, " ", 3)[1])
	})
	return out
}

func (s *Server) generations(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Generations", Live: true}
	g, err := s.daemon.Generations(r.Context())
	if err != nil {
		p.Err = err.Error()
		s.render(w, r, "generations.html", p)
		return
	}
	gens := slices.Clone(g.Generations)
	slices.SortFunc(gens, func(a, b api.Generation) int { return int(a.Number) - int(b.Number) })
	rows := make([]generationRow, len(gens))
	var prev map[string]string
	for i, gen := range gens {
		rows[i] = generationRow{Generation: gen, Planned: gen.Plan != nil}
		if rows[i].Planned {
			for _, c := range gen.Plan {
				if c.Action != plan.Keep {
					rows[i].Did = append(rows[i].Did, c)
				}
			}
		} else {
			rows[i].Changes = diff(prev, gen.Versions)
		}
		prev = gen.Versions
	}
	slices.Reverse(rows)
	p.Data = struct {
		Current uint64
		Rows    []generationRow
		Message string
	}{g.Current, rows, r.URL.Query().Get("msg")}
	s.render(w, r, "generations.html", p)
}

// rollback rolls production back to the generation of the form, which
// must carry the session's CSRF token; the browser asked for confirmation
// before it sent it.
func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	csrf, _ := s.sessionCSRF(r)
	if got := r.PostFormValue("csrf"); !subtleEqual(got, csrf) {
		http.Error(w, "the form's CSRF token is not this session's", http.StatusForbidden)
		return
	}
	to, err := strconv.ParseUint(r.PostFormValue("to"), 10, 64)
	if err != nil {
		http.Error(w, "to: not a generation number", http.StatusBadRequest)
		return
	}
	res, err := s.daemon.Rollback(r.Context(), api.RollbackRequest{To: to}, nil)
	msg := ""
	switch {
	case err != nil:
		msg = "rollback to " + strconv.FormatUint(to, 10) + " failed: " + err.Error()
	default:
		msg = "rolled back: generation " + strconv.FormatUint(res.Generation, 10) + " is live"
	}
	http.Redirect(w, r, "/generations?msg="+url.QueryEscape(msg), http.StatusSeeOther)
}

func (s *Server) certificates(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Certificates"}
	st, err := s.daemon.Status(r.Context())
	if err != nil {
		p.Err = err.Error()
	} else {
		p.Data = st
	}
	s.render(w, r, "certificates.html", p)
}

func (s *Server) databases(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Databases"}
	_, rows, _, err := s.allServices(r, false)
	if err != nil {
		p.Err = err.Error()
	}
	var dbs []serviceRow
	seen := map[string]bool{}
	for _, row := range rows {
		if row.Database != nil && !seen[row.Database.Name] {
			seen[row.Database.Name] = true
			dbs = append(dbs, row)
		}
	}
	p.Data = dbs
	s.render(w, r, "databases.html", p)
}

// logQuery is what a logs page shows: whose log, and which one.
type logQuery struct {
	Service, Env, Version string
	Access                bool
}

func parseLogQuery(r *http.Request) logQuery {
	q := r.URL.Query()
	return logQuery{Service: q.Get("service"), Env: q.Get("env"), Version: q.Get("version"), Access: q.Get("access") == "1"}
}

func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	lq := parseLogQuery(r)
	p := page{Title: "Logs", Data: lq}
	if lq.Access {
		p.Title = "Access log"
	}
	if lq.Service != "" {
		p.Title += " of " + lq.Service
	}
	s.render(w, r, "logs.html", p)
}

// logStream follows a log as server-sent events, one line an event.
func (s *Server) logStream(w http.ResponseWriter, r *http.Request) {
	lq := parseLogQuery(r)
	if lq.Service == "" {
		http.Error(w, "service: missing", http.StatusBadRequest)
		return
	}
	sse, ok := startSSE(w)
	if !ok {
		return
	}
	ctx, cancel := s.streamContext(r)
	defer cancel()
	pr, pw := io.Pipe()
	go func() {
		var err error
		if lq.Access {
			err = s.daemon.AccessLogs(ctx, lq.Env, lq.Service, 200, true, pw)
		} else {
			err = s.daemon.EnvLogs(ctx, lq.Env, lq.Service, lq.Version, 200, true, pw)
		}
		pw.CloseWithError(err)
	}()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		sse.send("line", sc.Text())
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		sse.send("failed", err.Error())
	}
	pr.Close()
}

// deployStream passes the daemon's deploy progress on as server-sent
// events, one "deploy" event (the api.DeployEvent as JSON) each: every
// page shows the deploys under way as they go.
func (s *Server) deployStream(w http.ResponseWriter, r *http.Request) {
	sse, ok := startSSE(w)
	if !ok {
		return
	}
	ctx, cancel := s.streamContext(r)
	defer cancel()
	err := s.daemon.FollowDeploys(ctx, func(ev api.DeployEvent) {
		b, _ := json.Marshal(ev) // plain data: cannot fail
		sse.send("deploy", string(b))
	})
	if err != nil && ctx.Err() == nil {
		sse.send("failed", err.Error())
	}
}

// events tells the page when the daemon's state changed (a deploy went
// live, a service changed state), so that it reloads: the deploy of
// another terminal shows here as it goes.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	sse, ok := startSSE(w)
	if !ok {
		return
	}
	ctx, cancel := s.streamContext(r)
	defer cancel()
	r = r.WithContext(ctx)
	last := ""
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if cur := s.fingerprint(r); cur != last {
			if last != "" {
				sse.send("change", cur)
			}
			last = cur
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fingerprint sums up what the live pages show that a deploy or a
// rollback changes: the generations and each instance's version and state.
func (s *Server) fingerprint(r *http.Request) string {
	gen, rows, _, err := s.allServices(r, false)
	if err != nil {
		return "error: " + err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d", gen)
	if g, err := s.daemon.Generations(r.Context()); err == nil {
		fmt.Fprintf(&b, " %d/%d", g.Current, len(g.Generations))
	}
	for _, row := range rows {
		fmt.Fprintf(&b, " %s/%s/%s/%s", row.Env, row.Name, row.Version, row.State)
	}
	return b.String()
}

type sseWriter struct {
	w http.ResponseWriter
	f http.Flusher
}

func startSSE(w http.ResponseWriter) (sseWriter, bool) {
	f, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return sseWriter{}, false
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	f.Flush()
	return sseWriter{w, f}, true
}

// send writes one event; data's lines each get their own data: field.
func (s sseWriter) send(event, data string) {
	fmt.Fprintf(s.w, "event: %s\n", event)
	for _, l := range strings.Split(data, "\n") {
		fmt.Fprintf(s.w, "data: %s\n", l)
	}
	fmt.Fprint(s.w, "\n")
	s.f.Flush()
}
