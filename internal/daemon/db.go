package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"hostel/internal/api"
	"hostel/internal/atomicfile"
	"hostel/internal/deploy"
	"hostel/internal/failpoint"
	"hostel/internal/keyring"
	"hostel/internal/postgres"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

var _ api.DBDaemon = (*Daemon)(nil)

// Limits of the database capability.
const (
	// keptBackups is how many backups per service ROOT/backups keeps.
	keptBackups = 10
	// releaseTimeout bounds one run of a release command.
	releaseTimeout = 10 * time.Minute
	// provisionTimeout bounds provisioning one database.
	provisionTimeout = time.Minute
)

// databases is the daemon's side of "PostgreSQL for every service": it
// provisions before a version starts, runs release steps, and serves the
// db commands. What must hold once per deployment is in the store:
//
//	database NAME              which server, database and role
//	password NAME              the role's password, when it has one, sealed
//	                           to the machine keys (keyring)
//	release NAME/VERSION       the release of VERSION ran and succeeded
//	release-claim NAME/VERSION it runs now, on the daemon the claim names
//
// and what belongs to this machine is under ROOT:
//
//	backups/NAME/TIME-WHAT.dump
//
// where NAME is a data name (dataName): SERVICE for production's instances,
// SERVICE@ENV for a preview's own. A preview's own instance has its own
// database and its own role, named after the system user it runs as
// (supervisor.InstanceUser): neither reaches the other's data, by peer
// authentication or by password. Both are made with the database and
// dropped with it.
type databases struct {
	root  string
	store store.Store
	// keys seals role passwords to the deployment's machines and opens
	// them with this machine's key.
	keys *keyring.Keyring
	// peer: the daemon is root and services run as their own users, so
	// roles authenticate by peer over a unix socket, without a password.
	peer bool
	sup  *supervisor.Supervisor
	logf func(string, ...any)

	mu sync.Mutex
	// done remembers what this process provisioned, so that a version
	// start does not reconnect for nothing.
	done map[string]record
}

// record is the store's database record of a service.
type record struct {
	Admin    string `json:"admin"`
	Database string `json:"database"`
	Role     string `json:"role"`
	Password bool   `json:"password"`
}

func newDatabases(root string, st store.Store, keys *keyring.Keyring, sup *supervisor.Supervisor, runAsUsers bool, logf func(string, ...any)) *databases {
	return &databases{root: root, store: st, keys: keys, peer: runAsUsers, sup: sup, logf: logf, done: map[string]record{}}
}

func (db *databases) backupDir(service string) string {
	return filepath.Join(db.root, "backups", service)
}

// writeFile writes a private file under ROOT, creating its directory.
func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, data, 0o600)
}

// readRecord returns the database record of service and its revision, or
// nil if it has none.
func (db *databases) readRecord(ctx context.Context, service string) (*record, uint64, error) {
	sr, err := db.store.Record(ctx, store.KindDatabase, service)
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, nil
	} else if err != nil {
		return nil, 0, err
	}
	var r record
	if err := json.Unmarshal(sr.Value, &r); err != nil {
		return nil, 0, fmt.Errorf("database record of %s: %w", service, err)
	}
	return &r, sr.Revision, nil
}

// password returns the password of the role of data name, generating one
// and keeping it in the store, sealed, the first time. It is kept before
// the role is made, so a crash in between leaves a password that the next
// provisioning sets; of two daemons that make one at once, the first to
// store it wins and the other takes it.
func (db *databases) password(ctx context.Context, name string) (string, error) {
	for {
		pw, err := db.keys.Load(ctx, store.KindPassword, name)
		if err == nil {
			return string(pw), nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return "", fmt.Errorf("password of %s: %w", name, err)
		}
		raw := make([]byte, 24)
		if _, err := rand.Read(raw); err != nil {
			return "", err
		}
		v, err := db.keys.Seal(ctx, []byte(hex.EncodeToString(raw)))
		if err != nil {
			return "", fmt.Errorf("password of %s: %w", name, err)
		}
		if _, err := db.store.PutRecord(ctx, store.KindPassword, name, v, 0); err != nil && !errors.Is(err, store.ErrConflict) {
			return "", fmt.Errorf("password of %s: %w", name, err)
		}
		// Read back what the store kept: this one, or another daemon's.
	}
}

// dataName names the data of the instance environment owner owns of
// service: SERVICE for production's, SERVICE@ENV for a preview's own.
func dataName(service, owner string) string {
	if owner == "" || owner == spec.DefaultEnv {
		return service
	}
	return service + "@" + owner
}

// serviceOfData returns the service of a data name.
func serviceOfData(name string) string {
	service, _, _ := strings.Cut(name, "@")
	return service
}

// sharesProductionRole reports whether r, the record of data name, is a
// preview's database owned by production's role, as previews' databases
// were before they had roles of their own.
func sharesProductionRole(name string, r *record) bool {
	service := serviceOfData(name)
	return name != service && r.Role == supervisor.UserName(service)
}

// previewDatabase is the name of a preview's own database of a service
// whose production database is named base.
func previewDatabase(base, env string) string {
	return base + "_" + strings.ReplaceAll(env, "-", "_")
}

// target is the database of data name on its server, with its role's
// credential.
func (db *databases) target(ctx context.Context, r *record, name string) (*postgres.Server, postgres.Database, error) {
	srv, err := postgres.Open(r.Admin)
	if err != nil {
		return nil, postgres.Database{}, err
	}
	d := postgres.Database{Name: r.Database, Role: r.Role}
	if sharesProductionRole(name, r) {
		name = serviceOfData(name) // production's role, production's password
	}
	if r.Password {
		if d.Password, err = db.password(ctx, name); err != nil {
			return nil, d, err
		}
	}
	return srv, d, nil
}

// ensure provisions the database a service asks for and returns how to
// reach it.
//
// created says that the service had no database record before: this call
// made its database, and a failed start may drop it again (forget).
//
// A preview's own instance gets a database and a role of its own
// (dataName, supervisor.InstanceUser).
func (db *databases) ensure(ctx context.Context, g *spec.Generation, service string) (srv *postgres.Server, d postgres.Database, created bool, err error) {
	owner := g.Owner(service)
	name := dataName(service, owner)
	admin := ""
	if g.Spec.Postgres != nil {
		admin = g.Spec.Postgres.Admin
	}
	srv, err = postgres.Open(admin)
	if err != nil {
		return nil, postgres.Database{}, false, err
	}
	want := record{Admin: srv.Admin(), Database: g.Spec.Services[service].Postgres.Name(service),
		Role: supervisor.InstanceUser(service, owner), Password: !(db.peer && srv.UnixSocket())}
	if name != service {
		want.Database = previewDatabase(want.Database, owner)
	}

	db.mu.Lock()
	defer db.mu.Unlock()
	// The record comes first: whatever a crash leaves half made, hostel
	// knows it is there (for db drop and status).
	if old, rev, err := db.readRecord(ctx, name); err != nil {
		return nil, postgres.Database{}, false, err
	} else if old != nil && sharesProductionRole(name, old) {
		return nil, postgres.Database{}, false, fmt.Errorf("database %s of %s belongs to production's role %s (the preview was made before previews had roles of their own): remove the preview with hostel env rm %s and deploy it again", old.Database, name, old.Role, owner)
	} else if old == nil || *old != want {
		b, _ := json.Marshal(want)
		if _, err := db.store.PutRecord(ctx, store.KindDatabase, name, b, rev); err == nil {
			created = old == nil
		} else if !errors.Is(err, store.ErrConflict) {
			return nil, postgres.Database{}, false, fmt.Errorf("database record of %s: %w", name, err)
		} else if now, _, rerr := db.readRecord(ctx, name); rerr != nil || now == nil || *now != want {
			// Another daemon wrote a record this one does not want.
			return nil, postgres.Database{}, false, fmt.Errorf("database record of %s: %w", name, errors.Join(err, rerr))
		} // else another daemon provisions the same at the same time: go on
	}
	srv, d, err = db.target(ctx, &want, name)
	if err != nil {
		return nil, d, created, err
	}
	if db.done[name] == want {
		return srv, d, created, nil
	}
	if err := failpoint.Inject("db-before-provision"); err != nil {
		return nil, d, created, fmt.Errorf("postgres: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
	defer cancel()
	if err := srv.Provision(pctx, d); err != nil {
		return nil, d, created, fmt.Errorf("postgres: %w", err)
	}
	if err := failpoint.Inject("db-after-provision"); err != nil {
		return nil, d, created, fmt.Errorf("postgres: %w", err)
	}
	db.done[name] = want
	db.logf("postgres: database %s provisioned for %s (role %s)", d.Name, name, d.Role)
	return srv, d, created, nil
}

// forget drops the database of data name (a service, or SERVICE@ENV) and
// its role, and forgets them: the record, the role's password and the
// records of release steps that ran against the database (a database made
// again is new, and its releases run again). Backups are kept. db.mu must
// not be held.
func (db *databases) forget(ctx context.Context, name string) error {
	r, rev, err := db.readRecord(ctx, name)
	if err != nil || r == nil {
		return err
	}
	srv, d, err := db.target(ctx, r, name)
	if err != nil {
		return err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if sharesProductionRole(name, r) {
		err = srv.DropDatabase(ctx, d) // the role is production's
	} else {
		err = srv.Drop(ctx, d)
	}
	if err != nil {
		return err
	}
	delete(db.done, name)
	releases, err := db.store.Records(ctx, store.KindRelease)
	if err != nil {
		return err
	}
	for _, rr := range releases {
		if strings.HasPrefix(rr.Key, name+"/") {
			if err := db.store.DeleteRecord(ctx, store.KindRelease, rr.Key, rr.Revision); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
	}
	// The record and the password go together. A preview's database of
	// production's role has no password of its own: AnyRevision deletes
	// only one that exists.
	writes := []store.Write{{Kind: store.KindDatabase, Key: name, Rev: rev, Delete: true}}
	if !sharesProductionRole(name, r) {
		writes = append(writes, store.Write{Kind: store.KindPassword, Key: name, Rev: store.AnyRevision, Delete: true})
	}
	if _, err := db.store.Txn(ctx, writes...); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	db.logf("postgres: dropped database %s of %s", d.Name, name)
	return nil
}

// provisioner is the deploy.Preparer that gives a version its database.
// Its cleanup drops a database it created for a version that then did not
// start; a database that was there before stays.
type provisioner struct {
	db *databases

	mu sync.Mutex
	// created holds the versions whose preparation created their
	// service's database.
	created map[spec.VersionKey]bool
}

func newProvisioner(db *databases) *provisioner {
	return &provisioner{db: db, created: map[spec.VersionKey]bool{}}
}

var _ deploy.Cleaner = (*provisioner)(nil)

// Prepare implements deploy.Preparer.
func (p *provisioner) Prepare(ctx context.Context, g *spec.Generation, service string, cfg *supervisor.Config) error {
	if g.Spec.Services[service].Postgres == nil {
		return nil
	}
	srv, d, created, err := p.db.ensure(ctx, g, service)
	p.mu.Lock()
	p.created[g.Instance(service)] = created
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if mode, _ := g.Spec.PreviewData(); created && g.Owner(service) != spec.DefaultEnv && mode == spec.PreviewCopy {
		if err := p.db.copyProduction(ctx, service, srv, d); err != nil {
			return fmt.Errorf("copying production's database: %w", err)
		}
	}
	if root := srv.ServiceTLS().RootCert; root != "" && p.db.peer {
		// The service runs as its own user: a root certificate only the
		// daemon can read would fail every connection it makes.
		if err := othersCanRead(root); err != nil {
			return fmt.Errorf("postgres.admin: sslrootcert: %w; services (as their own users) must read it", err)
		}
	}
	if cfg.Env == nil {
		cfg.Env = map[string]string{}
	}
	for k, v := range srv.Env(d) {
		cfg.Env[k] = v
	}
	return nil
}

// Cleanup implements deploy.Cleaner.
func (p *provisioner) Cleanup(ctx context.Context, g *spec.Generation, service string, started bool) error {
	key := g.Instance(service)
	p.mu.Lock()
	created := p.created[key]
	delete(p.created, key)
	p.mu.Unlock()
	if started || !created {
		return nil
	}
	return p.db.forget(ctx, dataName(service, g.Owner(service)))
}

// copyProduction fills a preview's new database d with production's rows
// of service, as they are now: a dump of production's database restored
// into d, its objects owned by d's role. Without a production database,
// d stays empty.
func (db *databases) copyProduction(ctx context.Context, service string, srv *postgres.Server, d postgres.Database) error {
	r, _, err := db.readRecord(ctx, service)
	if err != nil || r == nil {
		return err
	}
	psrv, pd, err := db.target(ctx, r, service)
	if err != nil {
		return err
	}
	dir := db.backupDir(service)
	path := filepath.Join(dir, ".preview-copy-"+d.Name+".dump")
	defer os.Remove(path)
	if _, err := psrv.DumpFile(ctx, pd.Name, path); err != nil {
		return err
	}
	if err := srv.Restore(ctx, d.Name, d.Role, path); err != nil {
		return err
	}
	db.logf("postgres: %s is a copy of %s", d.Name, pd.Name)
	return nil
}

// othersCanRead checks that any user may read the file at path: it is
// readable by others and every directory above it may be traversed.
func othersCanRead(path string) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o004 == 0 {
		return fmt.Errorf("%s is not readable by others (mode %v)", path, fi.Mode().Perm())
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		di, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if di.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("directory %s is not searchable by others (mode %v)", dir, di.Mode().Perm())
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}

// lookup finds the database of a service: from its record, which outlives
// the service's removal from the spec.
func (db *databases) lookup(ctx context.Context, service string) (*postgres.Server, postgres.Database, error) {
	if service == "" {
		return nil, postgres.Database{}, api.Invalid(errors.New("name a service"))
	}
	r, _, err := db.readRecord(ctx, service)
	if err != nil {
		return nil, postgres.Database{}, err
	}
	if r == nil {
		return nil, postgres.Database{}, api.Invalid(fmt.Errorf("service %q has no database (none was provisioned; set \"postgres\": true and deploy)", service))
	}
	return db.target(ctx, r, service)
}

// backup dumps a service's database to ROOT/backups/SERVICE/TIME-WHAT.dump
// and keeps the newest keptBackups.
func (db *databases) backup(ctx context.Context, service, what string) (*api.DBBackup, error) {
	srv, d, err := db.lookup(ctx, service)
	if err != nil {
		return nil, err
	}
	dir := db.backupDir(service)
	path := filepath.Join(dir, time.Now().UTC().Format("20060102T150405.000Z")+"-"+what+".dump")
	n, err := srv.DumpFile(ctx, d.Name, path)
	if err != nil {
		return nil, err
	}
	db.logf("postgres: backed up %s to %s (%d bytes)", d.Name, path, n)
	if old, _ := listBackups(dir); len(old) > keptBackups {
		for _, f := range old[:len(old)-keptBackups] {
			os.Remove(filepath.Join(dir, f))
		}
	}
	return &api.DBBackup{File: path, Size: n}, nil
}

// listBackups returns the backup files of a directory, oldest first (their
// names start with the time).
func listBackups(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".dump") && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// DBInfo implements api.DBDaemon.
func (d *Daemon) DBInfo(ctx context.Context, service string) (*api.DBInfo, error) {
	srv, db, err := d.db.lookup(ctx, service)
	if err != nil {
		return nil, err
	}
	info := &api.DBInfo{Service: service, Database: db.Name, Role: db.Role, Host: srv.Host(), Port: int(srv.Port()), Password: db.Password,
		TLSEnv: srv.ServiceTLS().Env()}
	if db.Password == "" {
		info.OSUser = db.Role
	}
	return info, nil
}

// DBBackup implements api.DBDaemon.
func (d *Daemon) DBBackup(ctx context.Context, service string) (*api.DBBackup, error) {
	return d.db.backup(ctx, service, "manual")
}

// DBDump implements api.DBDaemon.
func (d *Daemon) DBDump(ctx context.Context, service string, w io.Writer) error {
	srv, db, err := d.db.lookup(ctx, service)
	if err != nil {
		return err
	}
	return srv.Dump(ctx, db.Name, w)
}

// DBRestore implements api.DBDaemon: it keeps the upload, takes a safety
// backup, stops the service's running version, restores in one
// transaction and starts the version again.
func (d *Daemon) DBRestore(ctx context.Context, service string, r io.Reader) (*api.DBRestore, error) {
	srv, db, err := d.db.lookup(ctx, service)
	if err != nil {
		return nil, err
	}
	dir := d.db.backupDir(service)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, ".restore-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	head := make([]byte, 5)
	n, _ := io.ReadFull(r, head)
	if string(head[:n]) != "PGDMP" {
		f.Close()
		return nil, api.Invalid(errors.New("not a custom-format dump (pg_dump -Fc, as hostel db backup writes)"))
	}
	f.Write(head)
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("receiving the dump: %w", err)
	}
	// Everything after this point runs to its end even if the client goes.
	ctx = context.WithoutCancel(ctx)
	safety, err := d.db.backup(ctx, service, "pre-restore")
	if err != nil {
		return nil, fmt.Errorf("safety backup before restore: %w", err)
	}
	res := &api.DBRestore{SafetyBackup: safety.File}
	if cur, err := d.store.Current(ctx, spec.DefaultEnv); err == nil && cur != nil && cur.Spec.Services[service] != nil {
		if _, ok := d.sup.Get(spec.Key(service, cur.Versions[service])); ok {
			res.Restarted = string(spec.Key(service, cur.Versions[service]))
		}
	}
	err = d.engine.WhileStopped(ctx, service, func() error {
		return srv.Restore(ctx, db.Name, db.Role, f.Name())
	})
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w (the database as it was is in %s)", service, err, safety.File)
	}
	d.logf("postgres: restored %s into %s", service, db.Name)
	return res, nil
}

// DBDrop implements api.DBDaemon. Backups are kept.
func (d *Daemon) DBDrop(ctx context.Context, service string) error {
	_, db, err := d.db.lookup(ctx, service)
	if err != nil {
		return err
	}
	if cur, err := d.store.Current(ctx, spec.DefaultEnv); err != nil {
		return err
	} else if cur != nil && cur.Spec.Services[service] != nil && cur.Spec.Services[service].Postgres != nil {
		return api.Invalid(fmt.Errorf("service %q still uses database %s in generation %d; remove it from the spec and deploy first", service, db.Name, cur.Number))
	}
	return d.db.forget(ctx, service)
}

// addDatabases fills in the database of each service in st that has one:
// its name, size (if the server answers within 2 s) and last backup.
func (d *Daemon) addDatabases(ctx context.Context, st *api.Status) {
	byAdmin := map[string][]string{}
	recs := map[string]*record{}
	for _, s := range st.Services {
		if _, ok := recs[s.Name]; ok {
			continue
		}
		r, _, err := d.db.readRecord(ctx, s.Name)
		if err != nil || r == nil {
			continue
		}
		recs[s.Name] = r
		byAdmin[r.Admin] = append(byAdmin[r.Admin], r.Database)
	}
	if len(recs) == 0 {
		return
	}
	sizes := map[string]map[string]int64{}
	for admin, names := range byAdmin {
		srv, err := postgres.Open(admin)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		sizes[admin], _ = srv.Sizes(sctx, names)
		cancel()
	}
	for i, s := range st.Services {
		r := recs[s.Name]
		if r == nil {
			continue
		}
		ds := &api.DatabaseStatus{Name: r.Database, SizeBytes: sizes[r.Admin][r.Database]}
		dir := d.db.backupDir(s.Name)
		if files, _ := listBackups(dir); len(files) > 0 {
			if fi, err := os.Stat(filepath.Join(dir, files[len(files)-1])); err == nil {
				t := fi.ModTime().UTC()
				ds.LastBackup = &t
			}
		}
		st.Services[i].Database = ds
	}
}
