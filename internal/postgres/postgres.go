// Package postgres gives each service its own PostgreSQL database and role
// on a server shared by all services: it provisions them idempotently, tells
// a service how to connect, sizes, backs up, restores and drops them.
//
// hostel reaches the server as an administrator through a libpq conninfo
// or URL (the spec's postgres.admin). Names are always quoted as
// identifiers; no SQL is built by concatenating names.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"hostel/internal/postgres/conninfo"
)

// DefaultAdmin is how hostel reaches the server when the spec says nothing:
// the local unix socket, as the postgres user.
const DefaultAdmin = "host=/run/postgresql user=postgres"

// Server is the administrative side of one PostgreSQL server.
type Server struct {
	admin string
	cfg   *pgx.ConnConfig
	tls   conninfo.TLS
}

// Open parses an administrator conninfo or URL; "" means DefaultAdmin. It
// does not connect.
func Open(admin string) (*Server, error) {
	if admin == "" {
		admin = DefaultAdmin
	}
	cfg, err := pgx.ParseConfig(admin)
	if err != nil {
		return nil, fmt.Errorf("postgres.admin: %w", err)
	}
	t, err := conninfo.ParseTLS(admin)
	if err != nil {
		return nil, fmt.Errorf("postgres.admin: %w", err)
	}
	return &Server{admin: admin, cfg: cfg, tls: t}, nil
}

// Admin returns the conninfo the server was opened with.
func (s *Server) Admin() string { return s.admin }

// Host is the server's host: a socket directory (starting with "/") or a
// host name.
func (s *Server) Host() string { return s.cfg.Host }

// Port is the server's port (which also names its unix socket).
func (s *Server) Port() uint16 { return s.cfg.Port }

// ServiceTLS is how a service's connections are secured: see
// conninfo.TLS.ForService.
func (s *Server) ServiceTLS() conninfo.TLS { return s.tls.ForService(s.UnixSocket()) }

// UnixSocket reports whether hostel reaches the server over a unix socket,
// where peer authentication is possible.
func (s *Server) UnixSocket() bool { return strings.HasPrefix(s.cfg.Host, "/") }

// connect opens an administrator connection to database ("" for the admin
// conninfo's own).
func (s *Server) connect(ctx context.Context, database string) (*pgx.Conn, error) {
	cfg := s.cfg.Copy()
	if database != "" {
		cfg.Database = database
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to postgres as %s: %w", cfg.User, err)
	}
	return c, nil
}

// Ping checks that the server answers to the administrator.
func (s *Server) Ping(ctx context.Context) error {
	c, err := s.connect(ctx, "")
	if err != nil {
		return err
	}
	return c.Close(ctx)
}

// Database is one service's database and the role that owns it.
type Database struct {
	// Name is the database's name.
	Name string
	// Role is the login role that owns it; for peer authentication it is
	// the name of the system user the service runs as.
	Role string
	// Password is the role's password; empty means the role has none and
	// connects with peer authentication over the unix socket.
	Password string
}

func (d Database) check() error {
	if d.Name == "" || d.Role == "" {
		return errors.New("database and role names must not be empty")
	}
	if strings.ContainsRune(d.Name+d.Role+d.Password, 0) {
		return errors.New("names must not contain NUL")
	}
	return nil
}

// Provision makes the role and the database exist as d says: the role can
// log in and is neither superuser nor allowed to create databases or roles;
// the database is owned by the role; only the role (and superusers) may
// connect to it. Everything that already exists is kept: running it twice
// changes nothing, and a crash at any point leaves something a later call
// completes. A database that exists but belongs to another role is an
// error, never taken over.
func (s *Server) Provision(ctx context.Context, d Database) error {
	if err := d.check(); err != nil {
		return err
	}
	c, err := s.connect(ctx, "")
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	role := pgx.Identifier{d.Role}.Sanitize()
	db := pgx.Identifier{d.Name}.Sanitize()

	// Daemons sharing a deployment may provision the same role at once
	// (two nodes start the service). Catalog changes to one object from
	// two sessions fail ("tuple concurrently updated"), so provisioning a
	// role waits for any other of the same role: a session lock, released
	// at the end or with the connection.
	if _, err := c.Exec(ctx, "SELECT pg_advisory_lock($1, hashtext($2))", provisionLock, d.Role); err != nil {
		return fmt.Errorf("role %s: waiting for another provisioning: %w", d.Role, err)
	}
	defer c.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1, hashtext($2))", provisionLock, d.Role)

	// The role, checked and created in one transaction.
	err = pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error { return s.ensureRole(ctx, tx, d, role) })
	if err != nil {
		return fmt.Errorf("role %s: %w", d.Role, err)
	}

	// The database. CREATE DATABASE cannot run in a transaction: check,
	// create, and take "already exists" (a concurrent or crashed earlier
	// attempt) as success once the owner is right.
	owner, err := dbOwner(ctx, c, d.Name)
	if err != nil {
		return fmt.Errorf("database %s: %w", d.Name, err)
	}
	if owner == "" {
		_, err := c.Exec(ctx, "CREATE DATABASE "+db+" OWNER "+role+" ENCODING 'UTF8' TEMPLATE template0")
		if err != nil && !alreadyExists(err) {
			return fmt.Errorf("creating database %s: %w", d.Name, err)
		}
		if owner, err = dbOwner(ctx, c, d.Name); err != nil {
			return fmt.Errorf("database %s: %w", d.Name, err)
		}
	}
	if owner != d.Role {
		return fmt.Errorf("database %s already exists and belongs to role %s, not %s; hostel does not take over a database it did not make", d.Name, owner, d.Role)
	}
	return s.grantOnly(ctx, c, d, db, role)
}

// provisionLock is the first key of the advisory locks Provision takes
// (the second is the role's name, hashed): "hstl".
const provisionLock int32 = 0x6873746c

// alreadyExists reports whether err says that the database a CREATE made
// exists: made earlier (duplicate_database), or at the same time by
// another session, which the catalog's unique index reports
// (unique_violation).
func alreadyExists(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42P04" || pe.Code == "23505")
}

// ensureRole makes role d.Role exist as Provision says, in tx.
func (s *Server) ensureRole(ctx context.Context, tx pgx.Tx, d Database, role string) error {
	r, ok, err := roleInfo(ctx, tx, d.Role)
	if err != nil {
		return err
	}
	if !ok {
		q := "CREATE ROLE " + role + " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
		if d.Password != "" {
			lit, err := literal(tx, d.Password)
			if err != nil {
				return err
			}
			q += " PASSWORD " + lit
		}
		_, err = tx.Exec(ctx, q)
		return err
	}
	// The role exists. A role hostel made never gains these; fix a role
	// that did rather than hand a service more than its own database.
	if r != (Role{Login: true}) {
		if _, err := tx.Exec(ctx, "ALTER ROLE "+role+" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"); err != nil {
			return err
		}
	}
	if d.Password != "" {
		// The caller keeps the password; set it so that a password
		// generated after a crash (or by an earlier daemon) is the one
		// that works. Setting the same password again is harmless.
		ok, err := passwordMatches(ctx, tx, d.Role, d.Password)
		if err != nil {
			return err
		}
		if !ok {
			lit, err := literal(tx, d.Password)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "ALTER ROLE "+role+" PASSWORD "+lit); err != nil {
				return err
			}
		}
	}
	return nil
}

// grantOnly lets only role d.Role (and superusers) connect to database d.
// GRANT and REVOKE are idempotent; they run only when needed so that
// provisioning twice does not touch the catalog.
func (s *Server) grantOnly(ctx context.Context, c *pgx.Conn, d Database, db, role string) error {
	err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		var publicConnect, publicTemp, roleConnect bool
		err := tx.QueryRow(ctx, `SELECT
			has_database_privilege('public', $1, 'CONNECT'),
			has_database_privilege('public', $1, 'TEMP'),
			has_database_privilege($2, $1, 'CONNECT')`, d.Name, d.Role).Scan(&publicConnect, &publicTemp, &roleConnect)
		if err != nil {
			return err
		}
		if publicConnect || publicTemp {
			if _, err := tx.Exec(ctx, "REVOKE CONNECT, TEMPORARY ON DATABASE "+db+" FROM PUBLIC"); err != nil {
				return err
			}
		}
		if !roleConnect {
			if _, err := tx.Exec(ctx, "GRANT CONNECT, TEMPORARY ON DATABASE "+db+" TO "+role); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("database %s: privileges: %w", d.Name, err)
	}
	return nil
}

// passwordMatches reports whether role's stored SCRAM secret is for password.
// Without a way to check (no stored secret), it reports false.
func passwordMatches(ctx context.Context, tx pgx.Tx, role, password string) (bool, error) {
	var stored *string
	if err := tx.QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE rolname = $1`, role).Scan(&stored); err != nil {
		return false, err
	}
	if stored == nil {
		return false, nil
	}
	return scramMatches(*stored, password), nil
}

func dbOwner(ctx context.Context, c *pgx.Conn, name string) (string, error) {
	var owner string
	err := c.QueryRow(ctx, `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1`, name).Scan(&owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return owner, err
}

// literal quotes s as an SQL string literal for statements (CREATE ROLE …
// PASSWORD) that take no parameters.
func literal(tx pgx.Tx, s string) (string, error) {
	esc, err := tx.Conn().PgConn().EscapeString(s)
	if err != nil {
		return "", err
	}
	return "'" + esc + "'", nil
}

// Exists reports whether the database exists and, if so, its owner.
func (s *Server) Exists(ctx context.Context, name string) (owner string, ok bool, err error) {
	c, err := s.connect(ctx, "")
	if err != nil {
		return "", false, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	owner, err = dbOwner(ctx, c, name)
	return owner, owner != "", err
}

// Drop removes the database (closing its connections) and then the role,
// if they exist. The role is dropped only if it owns nothing else.
func (s *Server) Drop(ctx context.Context, d Database) error {
	return s.drop(ctx, d, true)
}

// DropDatabase removes database d (closing its connections), if it
// exists, and keeps its role: for a database whose role owns another one
// (a preview's copy of production's database).
func (s *Server) DropDatabase(ctx context.Context, d Database) error {
	return s.drop(ctx, d, false)
}

func (s *Server) drop(ctx context.Context, d Database, role bool) error {
	if err := d.check(); err != nil {
		return err
	}
	c, err := s.connect(ctx, "")
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{d.Name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping database %s: %w", d.Name, err)
	}
	if !role {
		return nil
	}
	if _, err := c.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{d.Role}.Sanitize()); err != nil {
		return fmt.Errorf("dropping role %s: %w", d.Role, err)
	}
	return nil
}

// Sizes returns the size in bytes of each named database that exists.
func (s *Server) Sizes(ctx context.Context, names []string) (map[string]int64, error) {
	c, err := s.connect(ctx, "")
	if err != nil {
		return nil, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	rows, err := c.Query(ctx, `SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname = ANY($1)`, names)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for rows.Next() {
		var n string
		var size int64
		if err := rows.Scan(&n, &size); err != nil {
			return nil, err
		}
		out[n] = size
	}
	return out, rows.Err()
}

// Role describes a role as the catalog has it.
type Role struct {
	Super, CreateDB, CreateRole, Login bool
}

// RoleInfo returns a role's attributes; ok is false when it does not exist.
func (s *Server) RoleInfo(ctx context.Context, name string) (r Role, ok bool, err error) {
	c, err := s.connect(ctx, "")
	if err != nil {
		return r, false, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	return roleInfo(ctx, c, name)
}

// roleInfo reads a role's attributes through c, a connection or a
// transaction.
func roleInfo(ctx context.Context, c interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, name string) (r Role, ok bool, err error) {
	err = c.QueryRow(ctx, `SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = $1`, name).
		Scan(&r.Super, &r.CreateDB, &r.CreateRole, &r.Login)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	return r, err == nil, err
}

// Env is what a service gets to reach its database d on this server:
// DATABASE_URL, and PGHOST, PGPORT (when not 5432), PGDATABASE, PGUSER and
// the PGSSL* variables of ServiceTLS for libpq tools. The password, if any,
// is only in DATABASE_URL.
func (s *Server) Env(d Database) map[string]string {
	env := map[string]string{"PGHOST": s.cfg.Host, "PGDATABASE": d.Name, "PGUSER": d.Role}
	if s.cfg.Port != 5432 {
		env["PGPORT"] = strconv.Itoa(int(s.cfg.Port))
	}
	for _, kv := range s.ServiceTLS().Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	env["DATABASE_URL"] = s.URL(d)
	return env
}

// URL is a postgres:// URL for d on this server: over the unix socket with
// the socket directory in the host parameter, or host:port over TCP; with
// the ssl* parameters of ServiceTLS, sslmode always among them.
func (s *Server) URL(d Database) string {
	u := &url.URL{Scheme: "postgres", Path: "/" + d.Name}
	if d.Password != "" {
		u.User = url.UserPassword(d.Role, d.Password)
	} else {
		u.User = url.User(d.Role)
	}
	q := url.Values{}
	if s.UnixSocket() {
		q.Set("host", s.cfg.Host)
		if s.cfg.Port != 5432 {
			q.Set("port", strconv.Itoa(int(s.cfg.Port)))
		}
	} else {
		u.Host = s.cfg.Host
		if s.cfg.Port != 5432 {
			u.Host += ":" + strconv.Itoa(int(s.cfg.Port))
		}
	}
	s.ServiceTLS().SetQuery(q)
	u.RawQuery = encodeQuery(q)
	return u.String()
}

// toolEnv is the environment of a libpq tool (pg_dump, pg_restore) that
// connects to database as the administrator, secured as the
// administrator's own connections are.
func (s *Server) toolEnv(database string) []string {
	env := []string{
		"PATH=/usr/bin:/bin",
		"PGHOST=" + s.cfg.Host,
		"PGPORT=" + strconv.Itoa(int(s.cfg.Port)),
		"PGUSER=" + s.cfg.User,
		"PGDATABASE=" + database,
		"PGCONNECT_TIMEOUT=10",
	}
	if s.cfg.Password != "" {
		env = append(env, "PGPASSWORD="+s.cfg.Password)
	}
	return append(env, s.tls.Env()...)
}

// encodeQuery encodes q for a postgres:// URL: libpq decodes %XX but takes
// "+" literally, so a space must be %20. (Encode writes a literal "+" as
// %2B, so every "+" it writes is a space.)
func encodeQuery(q url.Values) string {
	return strings.ReplaceAll(q.Encode(), "+", "%20")
}
