package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"hostel/internal/api"
	"hostel/internal/deploy"
	"hostel/internal/failpoint"
	"hostel/internal/nix"
	"hostel/internal/routes"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

var _ api.EnvDaemon = (*Daemon)(nil)

// expiryInterval is how often the daemon looks for previews past their
// ttl, beside once at its start.
const expiryInterval = time.Minute

// expires is when environment g's preview expires: previews.ttl after its
// last deploy.
func expires(g *spec.Generation) time.Time { return g.Time.Add(g.Spec.TTLOrDefault()) }

// startExpiry starts the loop that removes, as env rm does, every preview
// past its ttl: at once, then every expiryInterval.
func (d *Daemon) startExpiry() {
	stop, done := make(chan struct{}), make(chan struct{})
	d.stopExpiry = func() { close(stop); <-done }
	go func() {
		defer close(done)
		d.sweepPreviewData(context.Background())
		d.expireEnvs(time.Now())
		t := time.NewTicker(expiryInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				d.expireEnvs(now)
			}
		}
	}()
}

// expireEnvs removes every preview whose ttl ran out by now.
func (d *Daemon) expireEnvs(now time.Time) {
	ctx := context.Background()
	cs, err := d.store.Currents(ctx)
	if err != nil {
		d.logf("preview expiry: %v", err)
		return
	}
	for name, g := range cs {
		if name == spec.DefaultEnv || g == nil || now.Before(expires(g)) {
			continue
		}
		d.logf("environment %s expired (previews.ttl %s after its last deploy, %s): removing it", name, g.Spec.TTLOrDefault(), g.Time.Format(time.RFC3339))
		if _, err := d.removeEnv(ctx, name, g.Number, func(string) {}); err != nil {
			// Removed (env rm) or deployed again meanwhile: not expired.
			if !errors.Is(err, deploy.ErrNoEnv) && !errors.Is(err, store.ErrConflict) {
				d.logf("removing expired environment %s: %v", name, err)
			}
		}
	}
}

// envCurrent returns environment env's current generation ("" is
// production, which may have none yet). A bad name, or a preview with
// nothing deployed, is an input error.
func (d *Daemon) envCurrent(ctx context.Context, env string) (*spec.Generation, error) {
	if env == "" {
		env = spec.DefaultEnv
	}
	if err := spec.CheckEnv(env); err != nil {
		return nil, api.Invalid(err)
	}
	cur, err := d.store.Current(ctx, env)
	if err != nil {
		return nil, err
	}
	if cur == nil && env != spec.DefaultEnv {
		return nil, api.Invalid(fmt.Errorf("environment %q: %w", env, deploy.ErrNoEnv))
	}
	return cur, nil
}

// Envs implements api.EnvDaemon.
func (d *Daemon) Envs(ctx context.Context) (*api.EnvList, error) {
	cs, err := d.store.Currents(ctx)
	if err != nil {
		return nil, err
	}
	gens, err := d.store.List(ctx)
	if err != nil {
		return nil, err
	}
	created := map[string]spec.Generation{}
	for _, g := range gens {
		if c, ok := created[g.EnvOrDefault()]; !ok || g.Number < c.Number {
			created[g.EnvOrDefault()] = *g
		}
	}
	out := &api.EnvList{Envs: []api.Env{}}
	for name, g := range cs {
		if name == spec.DefaultEnv || g == nil {
			continue
		}
		e := api.Env{Name: name, Generation: g.Number, Created: created[name].Time, Expires: expires(g),
			Started: []string{}, Shared: map[string]string{}, URLs: []string{}, State: "running"}
		zone := g.Spec.ZoneOrDefault()
		for _, svc := range g.Spec.Names() {
			if owner := g.Owner(svc); owner != name {
				e.Shared[svc] = owner
			} else {
				e.Started = append(e.Started, svc)
			}
			e.URLs = append(e.URLs, "http://"+routes.PreviewHost(svc, name, zone))
			if h := g.Spec.PreviewHost(svc, name); h != "" {
				scheme := "https://"
				if !g.Spec.Services[svc].TLSEnabled() || d.certs == nil {
					scheme = "http://"
				}
				e.URLs = append(e.URLs, scheme+h)
			}
			if st, ok := d.sup.Status(g.Instance(svc)); !ok || !st.Ready {
				e.State = "degraded"
			}
		}
		out.Envs = append(out.Envs, e)
	}
	sort.Slice(out.Envs, func(i, j int) bool { return out.Envs[i].Name < out.Envs[j].Name })
	return out, nil
}

// RemoveEnv implements api.EnvDaemon: the engine removes the environment
// and stops what only it held; then what those instances kept goes too —
// their databases (backed up first), state directories, and the GC roots
// of versions nothing holds now.
func (d *Daemon) RemoveEnv(ctx context.Context, name string, progress func(string)) (*api.EnvRemoved, error) {
	out, err := d.removeEnv(ctx, name, 0, progress)
	return out, apiError(err)
}

// removeEnv removes environment name (while from is its current
// generation, unless from is 0) and what its instances kept.
func (d *Daemon) removeEnv(ctx context.Context, name string, from uint64, progress func(string)) (*api.EnvRemoved, error) {
	ctx = context.WithoutCancel(ctx) // like a deploy: run to the end
	// The certificates to remove are listed before the environment leaves
	// the store, which is the last place that names them.
	if err := d.noteCertsToForget(ctx, name); err != nil {
		return nil, err
	}
	res, err := d.engine.RemoveEnv(ctx, name, from, d.progress(progress))
	if err != nil {
		if cur, cerr := d.store.Current(ctx, name); cerr == nil && cur != nil {
			// Still there: nothing of it is to be removed.
			os.Remove(d.certsToForgetPath(name))
		}
		return nil, err
	}
	out := &api.EnvRemoved{Env: name, Generation: res.Generation.Number, Stopped: res.Stopped, Removed: []string{}, Aborted: res.Aborted}
	if out.Stopped == nil {
		out.Stopped = []string{}
	}
	var errs []error
	used, err := d.dataInUse(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, k := range res.Stopped {
		key := spec.VersionKey(k)
		name := dataName(key.Service(), key.Owner())
		if key.Owner() == spec.DefaultEnv || used == nil || used[name] {
			continue // production's, or still another instance's
		}
		used[name] = true // retired once, for all its versions
		removed, err := d.retireData(ctx, name)
		out.Removed = append(out.Removed, removed...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
	}
	if err := d.unmanageCerts(ctx); err != nil {
		errs = append(errs, fmt.Errorf("certificates: %w", err))
	}
	failpoint.Hit("env-rm-before-certs")
	if removed, err := d.forgetCerts(ctx, name); err != nil {
		errs = append(errs, fmt.Errorf("certificates: %w", err))
	} else {
		for _, h := range removed {
			out.Removed = append(out.Removed, "certificate "+h)
		}
	}
	unpinned, err := d.unpinUnheld(ctx)
	out.Removed = append(out.Removed, unpinned...)
	if err != nil {
		errs = append(errs, fmt.Errorf("gc roots: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("environment %s removed, but not all it left: %w", name, err)
	}
	return out, nil
}

// unpinUnheld removes the GC roots of versions that no generation still
// stored holds and no process runs.
func (d *Daemon) unpinUnheld(ctx context.Context) ([]string, error) {
	return nix.RootsFor(d.opts.Root).Prune(func() (map[string]bool, error) {
		gens, err := d.store.List(ctx)
		if err != nil {
			return nil, err
		}
		return d.pinned(gens), nil
	})
}

// pinned is what must keep its GC roots: the versions of gens, of every
// version being prepared (agent.Preparing: pinned before its process
// starts, which a deploy may be doing while the start's sweep, or env rm,
// runs: neither holds the engine) and of every running instance — the
// preparations read before the instances, so that a version started
// between the two is in one of them.
func (d *Daemon) pinned(gens []*spec.Generation) map[string]bool {
	keep := map[string]bool{}
	if d.agent != nil {
		for _, k := range d.agent.Preparing() {
			keep[string(k.Version())] = true
		}
	}
	for _, g := range gens {
		for name := range g.Spec.Services {
			keep[string(spec.Key(name, g.Versions[name]))] = true
		}
	}
	for _, s := range d.sup.List() {
		keep[string(s.Key.Version())] = true
	}
	return keep
}

// dataInUse are the data names (dataName) that a stored generation uses,
// a version being prepared will use (its database and state directory are
// made before its generation is committed, and a deploy may be doing that
// while a start's sweep runs, or just after an env rm) or a process runs
// with — the preparations read before the processes, so that a version
// started between the two is in one of them. Every stored generation
// counts, not only the current ones: a rollback to one brings its
// instances, and their data, back.
func (d *Daemon) dataInUse(ctx context.Context) (map[string]bool, error) {
	gens, err := d.store.List(ctx)
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	if d.agent != nil {
		for _, k := range d.agent.Preparing() {
			used[dataName(k.Service(), k.Owner())] = true
		}
	}
	for _, g := range gens {
		for name := range g.Spec.Services {
			used[dataName(name, g.Owner(name))] = true
		}
	}
	for _, s := range d.sup.List() {
		used[dataName(s.Key.Service(), s.Key.Owner())] = true
	}
	return used, nil
}

// retireData removes what a preview's own instances of a service kept,
// by data name SERVICE@ENV: the database (backed up first) and its role,
// the state directory, then the system user. It returns what it removed.
// The caller has checked that nothing uses the data (dataInUse).
func (d *Daemon) retireData(ctx context.Context, name string) ([]string, error) {
	service, owner, _ := strings.Cut(name, "@")
	var removed []string
	db, err := d.db.retire(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	} else if db != "" {
		removed = append(removed, db)
	}
	dir := supervisor.StateDir(d.opts.Root, service, owner)
	if err := os.RemoveAll(dir); err != nil {
		return removed, fmt.Errorf("state directory: %w", err)
	}
	removed = append(removed, dir)
	if spec.CheckEnv(owner) != nil {
		return removed, nil // not a preview's: no user of its own
	}
	if err := d.sup.RemoveUser(service, owner); err != nil {
		return removed, err
	}
	return removed, nil
}

// retire backs up and drops the database of data name, if it has one,
// and returns the database's name ("" when there was none).
func (db *databases) retire(ctx context.Context, name string) (string, error) {
	r, _, err := db.readRecord(ctx, name)
	if err != nil || r == nil {
		return "", err
	}
	if _, err := db.backup(ctx, name, "env-rm"); err != nil {
		return "", fmt.Errorf("backup before drop: %w", err)
	}
	if err := db.forget(ctx, name); err != nil {
		return "", err
	}
	return "database " + r.Database, nil
}

// sweepPreviewData removes what previews' own instances kept that no
// stored generation uses and no process runs with any more: their databases
// (backed up first), state directories and GC roots, and the certificates
// of removed previews' public names. env rm removes them itself; this is
// for a daemon that died during one, and runs at start, after the resume.
func (d *Daemon) sweepPreviewData(ctx context.Context) {
	// What is left is listed before what is used is asked: data a
	// preparation makes meanwhile is not listed, so not swept.
	recs, err := d.store.Records(ctx, store.KindDatabase)
	if err != nil {
		d.logf("sweeping previews' data: %v", err)
		return
	}
	left := map[string]bool{}
	for _, r := range recs {
		left[r.Key] = true
	}
	ents, _ := os.ReadDir(filepath.Join(d.opts.Root, "state"))
	for _, e := range ents {
		left[e.Name()] = true
	}
	used, err := d.dataInUse(ctx)
	if err != nil {
		d.logf("sweeping previews' data: %v", err)
		return
	}
	for name := range left {
		if !strings.Contains(name, "@") || used[name] {
			continue
		}
		removed, err := d.retireData(ctx, name)
		if len(removed) > 0 {
			d.logf("swept %s of %s, whose preview is gone", strings.Join(removed, ", "), name)
		}
		if err != nil {
			d.logf("sweeping previews' data: %s: %v", name, err)
		}
	}
	if unpinned, err := d.unpinUnheld(ctx); err != nil {
		d.logf("sweeping GC roots: %v", err)
	} else if len(unpinned) > 0 {
		d.logf("unpinned %s: nothing holds them", strings.Join(unpinned, ", "))
	}
	ents, _ = os.ReadDir(d.certsToForgetDir())
	for _, e := range ents {
		env, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || spec.CheckEnv(env) != nil {
			continue
		}
		if removed, err := d.forgetCerts(ctx, env); err != nil {
			d.logf("sweeping the certificates of environment %s: %v", env, err)
		} else if len(removed) > 0 {
			d.logf("swept the certificates of %s, whose preview is gone", strings.Join(removed, ", "))
		}
	}
}

// certsToForgetDir holds, for each preview being removed, ENV.json: the
// public names (previews.domain) whose certificates env rm has still to
// remove from disk. The list is written before the preview leaves the
// store and removed with the certificates, so that a daemon that dies in
// between leaves its next start the names to finish (sweepPreviewData).
func (d *Daemon) certsToForgetDir() string { return filepath.Join(d.opts.Root, "certs", "forget") }

func (d *Daemon) certsToForgetPath(env string) string {
	return filepath.Join(d.certsToForgetDir(), env+".json")
}

// noteCertsToForget lists the public names of every stored generation of
// preview env in certsToForgetDir. Without certificate management, or
// without such names, there is nothing to list.
func (d *Daemon) noteCertsToForget(ctx context.Context, env string) error {
	if d.certs == nil || spec.CheckEnv(env) != nil || env == spec.DefaultEnv {
		return nil // the engine refuses the name
	}
	gens, err := d.store.List(ctx)
	if err != nil {
		return err
	}
	var hosts []string
	for _, g := range gens {
		if g.EnvOrDefault() == env {
			hosts = append(hosts, previewHosts(g)...)
		}
	}
	if len(hosts) == 0 {
		return nil
	}
	slices.Sort(hosts)
	b, err := json.Marshal(slices.Compact(hosts))
	if err != nil {
		return err
	}
	return writeFile(d.certsToForgetPath(env), b)
}

// previewHosts are preview g's public names: SERVICE.ENV.DOMAIN for each
// service, with previews.domain set.
func previewHosts(g *spec.Generation) []string {
	var hosts []string
	for _, name := range g.Spec.Names() {
		if h := g.Spec.PreviewHost(name, g.EnvOrDefault()); h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// hostsInUse are the public names of every stored generation, of every
// environment: production's domains and redirects, previews' names. A
// certificate of one of them is never removed — a rollback, or the
// preview of the same name deployed again, serves it.
func hostsInUse(gens []*spec.Generation) map[string]bool {
	use := map[string]bool{}
	for _, g := range gens {
		for _, svc := range g.Spec.Services {
			for _, h := range slices.Concat(svc.Domains, svc.Redirects) {
				use[strings.ToLower(h)] = true
			}
		}
		if g.EnvOrDefault() != spec.DefaultEnv {
			for _, h := range previewHosts(g) {
				use[strings.ToLower(h)] = true
			}
		}
	}
	return use
}

// unmanageCerts takes a removed preview's names out of certificate
// management, which follows the router's table, before their
// certificates are forgotten: the engine waited for the routers to follow
// the removal, but for a while only, so the table is read again.
func (d *Daemon) unmanageCerts(ctx context.Context) error {
	f := d.follower
	if d.certs == nil || f == nil || f.routes == nil {
		return nil
	}
	_, err := f.routes.Sync(ctx)
	return err
}

// forgetCerts removes from disk the certificates that certsToForgetDir
// lists for env, except those of names a stored generation still uses,
// then the list; it returns the names whose certificates it removed.
func (d *Daemon) forgetCerts(ctx context.Context, env string) ([]string, error) {
	path := d.certsToForgetPath(env)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var listed []string
	if err := json.Unmarshal(b, &listed); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if d.certs == nil {
		return nil, nil // kept for a start that manages certificates
	}
	gens, err := d.store.List(ctx)
	if err != nil {
		return nil, err
	}
	use := hostsInUse(gens)
	var hosts []string
	for _, h := range listed {
		if !use[strings.ToLower(h)] {
			hosts = append(hosts, h)
		}
	}
	if err := d.certs.Forget(ctx, hosts); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	return hosts, nil
}
