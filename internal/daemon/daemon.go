// Package daemon is `hostel serve`: it wires the state store, the
// supervisor, the router and the deploy engine together, serves the router
// on the public listeners and the API on ROOT/hostel.sock.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"hostel/internal/acme"
	"hostel/internal/api"
	"hostel/internal/cgroup"
	"hostel/internal/deploy"
	"hostel/internal/front"
	"hostel/internal/idle"
	"hostel/internal/nix"
	"hostel/internal/router"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// Options configure a daemon.
type Options struct {
	// Root holds all state: store, sockets, logs, service state.
	Root string
	// HTTPAddr is the public HTTP listener, e.g. ":80" or "127.0.0.1:0".
	HTTPAddr string
	// HTTPSAddr is the public HTTPS listener; "" serves everything on HTTP.
	HTTPSAddr string
	// Logf is the daemon's own log; nil logs to stderr.
	Logf func(format string, args ...any)
	// MaxConnections bounds the client connections of the public
	// listeners (front.Options.MaxConnections); 0 derives it from the
	// open-file limit.
	MaxConnections int
	// Hold bounds what the bodies of held requests take
	// (front.HoldLimits; zero fields take its defaults). Their temporary
	// files go to ROOT/tmp, whatever Hold.Dir says.
	Hold front.HoldLimits
}

// Daemon is a running `hostel serve`.
type Daemon struct {
	opts   Options
	store  store.Store
	sup    *supervisor.Supervisor
	router *router.Router
	engine *deploy.Engine
	// sleeper puts idle versions to sleep and wakes them (sleep.go); nil
	// until just before the current generations are resumed; its watch
	// starts after.
	sleeper *idle.Sleeper
	// watching is set once the sleeper's watch started (its Stop waits
	// for it).
	watching bool
	// live are the generations the routes switched to last, by
	// environment (the switch hook), for certificate management; guarded
	// by liveMu.
	liveMu sync.Mutex
	live   map[string]*spec.Generation
	// stopExpiry stops the loop that removes expired previews (env.go);
	// nil before it starts.
	stopExpiry func()
	logf       func(string, ...any)
	// hostKey is the machine's age identity, which decrypts secrets.
	hostKey *secrets.HostKey
	// db provisions PostgreSQL databases and runs release steps.
	db *databases
	// cgroups enforce services' limits; nil where there are none.
	cgroups *cgroup.Hierarchy

	httpLn  net.Listener
	apiLn   net.Listener
	httpsLn net.Listener  // nil when --https is ""
	certs   *acme.Manager // nil when --https is ""
	servers []*http.Server
	front   *front.Front // serves httpLn and httpsLn
	wg      sync.WaitGroup
	// quit is closed by Shutdown to end Run.
	quit     chan struct{}
	quitOnce sync.Once
}

// SocketPath is where the API of the daemon with root listens.
func SocketPath(root string) string { return filepath.Join(root, "hostel.sock") }

// Start opens the store, binds the listeners, resumes the current
// generation and starts serving. Close undoes whatever Start did, even after
// a partial start.
func Start(ctx context.Context, opts Options) (_ *Daemon, err error) {
	d := &Daemon{opts: opts, logf: opts.Logf, quit: make(chan struct{})}
	if d.logf == nil {
		l := log.New(os.Stderr, "hostel: ", log.LstdFlags)
		d.logf = l.Printf
	}
	defer func() {
		if err != nil {
			d.Close() // undoes whatever part of Start ran
		}
	}()
	// Services get paths under the root (STATE_DIRECTORY …) and run in
	// other directories; a later daemon finds them by those paths.
	if d.opts.Root, err = filepath.Abs(opts.Root); err != nil {
		return nil, err
	}
	opts = d.opts
	// As root, each service runs as its own user, and its database role
	// authenticates as that user.
	runAsUsers := os.Geteuid() == 0
	if runAsUsers {
		if err := checkRootReachable(opts.Root); err != nil {
			return nil, err
		}
	}
	for _, dir := range []struct {
		path string
		mode os.FileMode
	}{{opts.Root, 0o755}, {filepath.Join(opts.Root, "state"), 0o755}, {filepath.Join(opts.Root, "run"), 0o755}, {filepath.Join(opts.Root, "logs"), 0o700},
		{filepath.Join(opts.Root, "tmp"), 0o700}} {
		if err := os.MkdirAll(dir.path, dir.mode); err != nil {
			return nil, err
		}
		if err := os.Chmod(dir.path, dir.mode); err != nil {
			return nil, err
		}
	}
	if d.hostKey, err = secrets.EnsureHostKey(opts.Root); err != nil {
		return nil, err
	}
	st, err := store.OpenBolt(filepath.Join(opts.Root, "state.db"))
	if err != nil {
		return nil, err
	}
	d.store = st
	if err := migrateRecords(ctx, opts.Root, st); err != nil {
		return nil, err
	}
	zone := spec.DefaultZone
	if cur, err := st.Current(ctx, spec.DefaultEnv); err != nil {
		return nil, err
	} else if cur != nil {
		zone = cur.Spec.ZoneOrDefault()
	}
	d.sup = supervisor.New(supervisor.Options{Root: opts.Root, Logf: d.logf, RunAsUsers: runAsUsers,
		Cgroups: d.openCgroups()})
	// Held bodies past memory go to the root's disk: /tmp may be a tmpfs,
	// whose files are memory.
	hold := opts.Hold
	hold.Dir = filepath.Join(opts.Root, "tmp")
	d.router = router.New(router.Options{Zone: zone, Logf: d.logf, Waker: wakeVia{d}, Hold: hold})
	d.engine = deploy.New(st, d.sup, d.router)
	// Every switch also updates certificates and TLS policy.
	d.engine.OnSwitch(d.switched)
	d.engine.SetLog(func(f string, a ...any) { d.logf(f, a...) })
	d.engine.SetAsleep(func(k spec.VersionKey) bool {
		sl, ok := d.router.Sleeping(k)
		return ok && sl.Asleep
	})
	d.engine.Use(&secrets.Preparer{Key: d.hostKey})
	d.db = newDatabases(opts.Root, d.store, d.sup, runAsUsers, d.logf)
	// A database (and DATABASE_URL) before a version starts.
	d.engine.Use(newProvisioner(d.db))
	d.engine.Use(newStateCopier(opts.Root, d.sup))   // a preview's state directory, when previews.state is "copy"
	d.engine.Use(newPinner(nix.RootsFor(opts.Root))) // GC roots before a version starts
	// releaser runs the release step with the version's full environment:
	// keep it the last preparer (add new ones above this line).
	d.engine.Use(releaser{d.db})

	if d.httpLn, err = net.Listen("tcp", opts.HTTPAddr); err != nil {
		return nil, fmt.Errorf("--http: %w", err)
	}
	if err := d.startHTTPS(); err != nil {
		return nil, err
	}
	sock := SocketPath(opts.Root)
	if err := removeStaleSocket(sock); err != nil {
		return nil, err
	}
	if d.apiLn, err = net.Listen("unix", sock); err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		return nil, err
	}
	// Before anything is adopted: what a daemon killed mid-launch left
	// running without a record.
	d.sup.Leftovers()
	// Before the resume, which registers what slept asleep with it.
	d.newSleeper()
	if err := d.engine.Resume(ctx, func(f string, a ...any) { d.logf(f, a...) }); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	d.startSleeper()
	d.startExpiry()
	d.serveFront()
	d.serveHTTPS()
	d.serve(d.apiLn, api.NewHandler(d))
	d.logf("serving HTTP on %s, API on %s", d.httpLn.Addr(), sock)
	return d, nil
}

func (d *Daemon) serve(ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	d.servers = append(d.servers, srv)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logf("serve %s: %v", ln.Addr(), err)
		}
	}()
}

// removeStaleSocket removes a socket left by a daemon that died, and refuses
// to start beside a live one.
func removeStaleSocket(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another hostel daemon is serving %s", path)
	}
	return os.Remove(path)
}

// HTTPAddr returns the bound public HTTP address.
func (d *Daemon) HTTPAddr() string { return d.httpLn.Addr().String() }

// Close stops serving without cutting a request in flight, lets go of the
// services (they keep running, for the next daemon to adopt) and closes the
// store. Shutdown stops the services.
func (d *Daemon) Close() error {
	d.stopServing()
	for _, ln := range []net.Listener{d.httpLn, d.httpsLn, d.apiLn} {
		if ln != nil {
			ln.Close()
		}
	}
	d.wg.Wait()
	if d.stopExpiry != nil {
		d.stopExpiry()
	}
	if d.watching {
		d.sleeper.Stop()
	}
	if d.engine != nil {
		d.engine.Detach() // a confirm window left open is the next daemon's to finish
	}
	if d.sup != nil {
		d.sup.Detach()
	}
	if d.cgroups != nil {
		// Only once no group is left in it (after hostel shutdown): the
		// groups of detached services stay for the next daemon.
		d.cgroups.Remove()
	}
	if d.certs != nil {
		d.certs.Close()
	}
	if d.router != nil {
		d.router.Close()
	}
	if d.store != nil {
		return d.store.Close()
	}
	return nil
}

// Run starts a daemon and serves until ctx ends.
func Run(ctx context.Context, opts Options) error {
	d, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		d.logf("stopping; services keep running")
	case <-d.quit:
	}
	return d.Close()
}
