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
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"hostel/internal/accesslog"
	"hostel/internal/acme"
	"hostel/internal/agent"
	"hostel/internal/api"
	"hostel/internal/cgroup"
	"hostel/internal/dashboard"
	"hostel/internal/deploy"
	"hostel/internal/drain"
	"hostel/internal/failpoint"
	"hostel/internal/front"
	"hostel/internal/handover"
	"hostel/internal/idle"
	"hostel/internal/keyring"
	"hostel/internal/metrics"
	"hostel/internal/nix"
	"hostel/internal/router"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/store/etcd"
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
	// Store chooses the state store: ROOT/state.db (bbolt) by default,
	// or etcd.
	Store StoreOptions
	// Node names this daemon's node among those sharing the store; ""
	// is the machine's host name.
	Node string
	// Advertise is where the other nodes of a cluster reach this one,
	// HOST:PORT (serve --advertise): the node-to-node port listens there
	// (peer.go). "": the node reaches no other, and none reaches it.
	Advertise string
	// APIListen is the remote API's listener, HOST:PORT (serve
	// --api-listen; remoteapi.go): the API over HTTPS to clients with
	// the token in ROOT/api/token. "": none.
	APIListen string
	// Labels and Capacity are what the node offers placement (zero
	// Capacity fields: the machine's).
	Labels   map[string]string
	Capacity Capacity
	// MaxConnections bounds the client connections of the public
	// listeners (front.Options.MaxConnections); 0 derives it from the
	// open-file limit.
	MaxConnections int
	// Hold bounds what the bodies of held requests take
	// (front.HoldLimits; zero fields take its defaults). Their temporary
	// files go to ROOT/tmp, whatever Hold.Dir says.
	Hold front.HoldLimits
	// MetricsAddr is the Prometheus scraper's listener, HOST:PORT (serve
	// --metrics; metrics.go); "": metrics only on the API socket.
	MetricsAddr string
	// Passed holds the sockets the daemon was started with
	// (handover.FromEnv: systemd's socket units, systemd-socket-activate,
	// the daemon that hostel upgrade replaces), taken by name in place of
	// binding HTTPAddr, HTTPSAddr, the API socket and the others. nil: the
	// daemon binds its own. One passed and left unused fails the start.
	Passed *handover.Set
}

// Daemon is a running `hostel serve`.
type Daemon struct {
	opts  Options
	store store.Store
	// member is the etcd member of --etcd-embed; nil without.
	member *etcd.Member
	sup    *supervisor.Supervisor
	router *router.Router
	// agent runs this node's processes; follower has it (and the router)
	// follow the store; engine decides.
	agent    *agent.Agent
	follower *follower
	// grace is the largest stop_grace of the generations the router last
	// switched to, in nanoseconds (drainBound).
	grace  atomic.Int64
	engine *deploy.Engine
	// sleeper puts idle versions to sleep and wakes them (sleep.go); nil
	// until just before the current generations are resumed; its watch
	// starts after.
	sleeper *idle.Sleeper
	// watching is set once the sleeper's watch started (its Stop waits
	// for it).
	watching bool
	// stopExpiry stops the loop that removes expired previews (env.go);
	// nil before it starts.
	stopExpiry func()
	logf       func(string, ...any)
	// hostKey is the machine's age identity, which decrypts secrets.
	hostKey *secrets.HostKey
	// keys seals what only the deployment's machines may read (role
	// passwords, private keys) to their keys, and opens it with hostKey.
	keys *keyring.Keyring
	// stopKeys stops resealing to machines that join; nil before.
	stopKeys func()
	// lease is the daemon's lease for its claims (a release step it
	// runs, a certificate it orders).
	lease *ownLease
	// db provisions PostgreSQL databases and runs release steps.
	db *databases
	// cgroups enforce services' limits; nil where there are none.
	cgroups *cgroup.Hierarchy

	httpLn net.Listener
	// sockets are the listening sockets, by name (listen.go), which
	// hostel upgrade passes on; apiPassed: the API socket was passed, so
	// its path is not the daemon's to remove.
	sockets   []namedListener
	socketsMu sync.Mutex
	apiPassed bool
	// upgradeMu is held by an upgrade (upgrade.go); handedOver is set
	// once it gave up the API, the store and the services to the daemon
	// replacing this one.
	upgradeMu  sync.Mutex
	handedOver atomic.Bool
	// holder is the connection to the holder of the sockets
	// (listen.go), nil without one; holderMu guards it, endpointsKick
	// asks for the holder's copies of the endpoints to be made again.
	holderMu      sync.Mutex
	holder        net.Conn
	endpointsKick chan struct{}
	// holderWrite makes the messages to the holder one at a time.
	holderWrite sync.Mutex
	// fence is the lease the node's exclusive instances run under
	// (fence.go); nil before the node has one.
	fence atomic.Pointer[fenceLease]
	// peerLn is the node-to-node port (TLS) and peerAddr the address
	// advertised for it; nil and "" without Options.Advertise.
	peerLn   net.Listener
	peerAddr string
	apiLn    net.Listener
	// remoteLn is the remote API's listener (TLS) and remoteToken what
	// its clients must send; nil without Options.APIListen.
	remoteLn    net.Listener
	remoteToken api.Token
	httpsLn     net.Listener  // nil when --https is ""
	certs       *acme.Manager // nil when --https is ""
	servers     []*drain.Server
	front       *front.Front // serves httpLn and httpsLn
	wg          sync.WaitGroup
	// dashboard is the dashboard served on remoteLn; nil without.
	dashboard *dashboard.Server
	// quit is closed by Shutdown to end Run.
	quit     chan struct{}
	quitOnce sync.Once

	// peers is the node's one client to the other nodes' peer ports
	// (peer.Identity.Transport): its router's, and the one a standby
	// passes API requests to the leader with (leader.go); nil without
	// Options.Advertise.
	peers http.RoundTripper
	// nixCache is the node's part of the cluster's binary cache
	// (nixcache.go); nil without Options.Advertise or without Nix.
	nixCache *nixCache

	// metrics is the node's Prometheus registry; metricsLn the listener
	// of --metrics, nil without (metrics.go).
	metrics   *metrics.Registry
	metricsLn net.Listener
	// access is the access log (ROOT/logs/SERVICE/access.log).
	access *accesslog.Log
}

// SocketPath is where the API of the daemon with root listens.
func SocketPath(root string) string { return filepath.Join(root, "hostel.sock") }

// Start opens the store, binds the listeners, resumes the current
// generation and starts serving. Close undoes whatever Start did, even after
// a partial start.
func Start(ctx context.Context, opts Options) (_ *Daemon, err error) {
	d := &Daemon{opts: opts, logf: opts.Logf, quit: make(chan struct{}), endpointsKick: make(chan struct{}, 1)}
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
	st, err := d.openStore(ctx)
	if err != nil {
		return nil, err
	}
	d.store = st
	d.lease = newOwnLease(st, claimTTL)
	if err := migrateRecords(ctx, opts.Root, st); err != nil {
		return nil, err
	}
	if err := d.startKeyring(ctx); err != nil {
		return nil, err
	}
	zone := spec.DefaultZone
	if cur, err := st.Current(ctx, spec.DefaultEnv); err != nil {
		return nil, err
	} else if cur != nil {
		zone = cur.Spec.ZoneOrDefault()
	}
	sopts := supervisor.Options{Root: opts.Root, Logf: d.logf, RunAsUsers: runAsUsers, Cgroups: d.openCgroups()}
	if opts.Store.etcd() {
		// Other nodes may run what this one runs: fence it (fence.go).
		sopts.Fence = d.fenceUntil
	}
	d.sup = supervisor.New(sopts)
	if d.httpLn, err = d.listen(handover.HTTP, opts.HTTPAddr); err != nil {
		return nil, fmt.Errorf("--http: %w", err)
	}
	// Certificate management before the router, which asks it which
	// certificates are there.
	if err := d.startHTTPS(ctx); err != nil {
		return nil, err
	}
	// Held bodies past memory go to the root's disk: /tmp may be a tmpfs,
	// whose files are memory.
	ropts := d.routerOptions(zone)
	d.newMetrics()
	ropts.Requests = requestHook{d.metrics, d.access}
	if ropts.Peers, err = d.listenPeer(ctx); err != nil {
		return nil, err
	}
	ropts.Hold = opts.Hold
	ropts.Listen = d.listenEndpoint
	ropts.EndpointsChanged = d.kickEndpoints
	ropts.Hold.Dir = filepath.Join(opts.Root, "tmp")
	d.router = router.New(ropts)
	d.agent = agent.New(d.sup, d.router)
	d.agent.SetAsleep(func(k spec.VersionKey) bool {
		sl, ok := d.router.Sleeping(k)
		return ok && sl.Asleep
	})
	d.agent.Use(&secrets.Preparer{Key: d.hostKey, Node: d.nodeName()})
	d.db = newDatabases(opts.Root, d.store, d.keys, d.sup, runAsUsers, d.logf)
	// A database (and DATABASE_URL) before a version starts.
	d.agent.Use(newProvisioner(d.db))
	d.agent.Use(newStateCopier(opts.Root, d.sup))                      // a preview's state directory, when previews.state is "copy"
	d.agent.Use(newPinner(nix.RootsFor(opts.Root), d.fetchStorePaths)) // store paths from other nodes, then GC roots, before a version starts
	// releaser runs the release step with the version's full environment:
	// keep it the last preparer (add new ones above this line).
	d.agent.Use(newReleaser(d.db, d.lease, d.keys.PublicKey(), opts.Root))

	sock := SocketPath(opts.Root)
	if err := d.listenAPI(sock); err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	failpoint.Hit("api-socket-bound")
	if err := d.listenRemoteAPI(); err != nil {
		return nil, err
	}
	if err := d.listenMetrics(); err != nil {
		return nil, err
	}
	if err := d.checkPassed(); err != nil {
		return nil, err
	}
	// Before anything is adopted: what a daemon killed mid-launch left
	// running without a record.
	d.sup.Leftovers()
	// Before the node starts, which registers what slept asleep with it.
	d.newSleeper()
	if err := d.startNode(ctx, d.agent); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	// The services adopted reopened their needs' endpoints on the
	// sockets passed: one no service reopened would hang its callers.
	d.opts.Passed.CloseName(handover.Endpoint)
	d.startSleeper()
	d.startExpiry()
	d.serveFront()
	d.serveHTTPS()
	h := api.NewHandler(meteredDaemon{d})
	// The peer port serves the API a standby passes on as it is (it
	// passes nothing on again); the CLI's listeners pass on what only the
	// leader carries out.
	d.servePeer(h)
	d.serve(d.apiLn, d.withMetrics(d.passToLeader(h)))
	d.serveMetrics()
	d.serveRemoteAPI(d.passToLeader(h))
	d.logf("serving HTTP on %s, API on %s", d.httpLn.Addr(), sock)
	return d, nil
}

func (d *Daemon) serve(ln net.Listener, h http.Handler) {
	srv := drain.New(&http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second})
	d.servers = append(d.servers, srv)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		// net.ErrClosed: an upgrade closed the listener (handOver).
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			d.logf("serve %s: %v", ln.Addr(), err)
		}
	}()
}

// listenAPI listens on the API socket at sock: the one passed, else a new
// one.
func (d *Daemon) listenAPI(sock string) (err error) {
	if ln, ok := d.opts.Passed.TakeFor(handover.API, sock); ok {
		// The daemon replaced passes its own, bound elsewhere and linked
		// at sock (listenPrivate).
		if got := ln.Addr().String(); got != sock && d.opts.Passed.FromSystemd() {
			ln.Close()
			return fmt.Errorf("LISTEN_FDNAMES: the socket passed as %q is %s, not %s (--root's)", handover.API, got, sock)
		}
		// Only the daemon's user may connect, whatever mode the socket
		// was made with (systemd's SocketMode=0600 says the same).
		if err := os.Chmod(sock, 0o600); err != nil {
			ln.Close()
			return err
		}
		// systemd's socket outlives the daemon; one passed by the daemon
		// this one replaces is this one's.
		held := os.Getenv(apiHeldEnv) != ""
		os.Unsetenv(apiHeldEnv)
		d.apiLn, d.apiPassed = ln, !d.opts.Passed.FromDaemon() || held
		d.keep(handover.API, ln)
		return nil
	}
	if err := removeStaleSocket(sock); err != nil {
		return err
	}
	if d.apiLn, err = listenPrivate(sock); err != nil {
		return err
	}
	d.keep(handover.API, d.apiLn)
	return nil
}

// removeStaleSocket removes a socket left by a daemon that died (and the
// directories a listenPrivate cut short left beside it), and refuses to
// start beside a live one.
func removeStaleSocket(path string) error {
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("another hostel daemon is serving %s", path)
		}
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(filepath.Dir(path), privateSockDirs))
	for _, dir := range dirs {
		os.RemoveAll(dir)
	}
	return nil
}

// privateSockDirs names the directories listenPrivate binds in.
const privateSockDirs = ".sock-*"

// listenPrivate listens on a unix socket at path that only the daemon's
// user can connect to from the moment it exists: it is bound in a new
// 0700 directory beside path, made 0600 there, then linked to path. Bound
// at path and chmod-ed after, it would for a moment have the mode the
// umask leaves (0777 under umask 0): any local user could connect and
// deploy, or read secrets. Like a bind, the link fails if path exists.
// Closing the listener does not remove path; the caller does.
func listenPrivate(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), privateSockDirs)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	if err := errors.Join(os.Chmod(tmp, 0o600), os.Link(tmp, path)); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// HTTPAddr returns the bound public HTTP address.
func (d *Daemon) HTTPAddr() string { return d.httpLn.Addr().String() }

// Close stops serving without cutting a request in flight, lets go of the
// services (they keep running, for the next daemon to adopt) and closes the
// store. Shutdown stops the services.
func (d *Daemon) Close() error {
	if d.apiLn != nil && !d.apiPassed {
		// Before the listener closes: removed after, it could be the
		// socket of a daemon that started meanwhile (a start removes a
		// dead socket and makes its own).
		os.Remove(SocketPath(d.opts.Root))
	}
	// The holder outlives this daemon with the endpoints as they are:
	// what closes from here on is not told to it.
	d.holderMu.Lock()
	d.holder = nil
	d.holderMu.Unlock()
	d.stopServing()
	if d.dashboard != nil {
		d.dashboard.Close()
	}
	for _, ln := range []net.Listener{d.httpLn, d.httpsLn, d.peerLn, d.apiLn, d.remoteLn, d.metricsLn} {
		if ln != nil {
			ln.Close()
		}
	}
	d.wg.Wait()
	var err error
	if !d.handedOver.Load() {
		err = d.detach()
		if d.cgroups != nil {
			// Only once no group is left in it (after hostel shutdown): the
			// groups of detached services stay for the next daemon.
			d.cgroups.Remove()
		}
	}
	if d.certs != nil {
		d.certs.Close()
	}
	if d.router != nil {
		d.router.Close()
	}
	d.closeAccessLog()
	return errors.Join(err, d.member.Close(), d.opts.Passed.Close())
}

// detach stops following the store, lets go of the services (they keep
// running, for the next daemon to adopt) and closes the store: what Close
// does once nothing is served any more, and an upgrade before the daemon
// replacing this one starts (upgrade.go).
func (d *Daemon) detach() error {
	if d.stopExpiry != nil {
		d.stopExpiry()
	}
	if d.watching {
		d.sleeper.Stop()
	}
	if d.engine != nil {
		d.engine.Detach() // a confirm window left open is the next daemon's to finish
	}
	d.stopNode()
	if d.sup != nil {
		d.sup.Detach()
	}
	if d.stopKeys != nil {
		d.stopKeys()
	}
	if d.store == nil {
		return nil
	}
	// Claims end now: a daemon that waits for one need not wait out the
	// lease. A store with a quorum answers in milliseconds (an etcd
	// leader elected in one or two); one without — the last members of a
	// cluster stopping — never would, and the lease ends with its TTL
	// anyway.
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	d.lease.revoke(rctx)
	cancel()
	return d.store.Close()
}

// Run starts a daemon and serves until ctx ends.
func Run(ctx context.Context, opts Options) error {
	// Started by hostel upgrade: the daemon replaced lets go of the store
	// and the services once this one has taken its sockets.
	ctl, err := controlFromEnv()
	if err == nil {
		err = ctl.await()
	}
	// Else, the sockets a holder kept of the last daemon.
	var held net.Conn
	if err == nil && ctl == nil {
		held, err = fetchHeld(&opts)
	}
	if err != nil {
		opts.Passed.Close()
		return err
	}
	// SIGHUP is hostel upgrade to the daemon's own path (systemctl reload).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d, err := Start(ctx, opts)
	ctl.done(err)
	if err != nil {
		opts.Passed.Close()
		if held != nil {
			held.Close()
		}
		return err
	}
	go ctl.receive(d)
	d.startHolder(held, ctl.holderConn())
	// To systemd (Type=notify): this process serves — after an upgrade,
	// in place of the one systemd started.
	if err := handover.Notify(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid())); err != nil {
		d.logf("%v", err)
	}
	for stop := false; !stop; {
		select {
		case <-ctx.Done():
			d.logf("stopping; services keep running")
			stop = true
		case <-d.quit:
			stop = true
		case <-hup:
			go func() {
				if _, err := d.Upgrade(context.Background(), api.UpgradeRequest{}); err != nil {
					d.logf("SIGHUP: %v", err)
				}
			}()
		}
	}
	if !d.handedOver.Load() {
		handover.Notify("STOPPING=1")
	}
	return d.Close()
}
