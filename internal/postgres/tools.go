package postgres

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Tool finds a PostgreSQL client program (pg_dump, pg_restore, psql): the
// newest /usr/lib/postgresql/N/bin first (Debian's layout; a dump tool must
// be at least as new as the server), else PATH.
func Tool(name string) (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in /usr/lib/postgresql/*/bin or PATH (install postgresql-client)", name)
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Dump writes a custom-format dump (pg_dump -Fc) of database to w.
func (s *Server) Dump(ctx context.Context, database string, w io.Writer) error {
	pgDump, err := Tool("pg_dump")
	if err != nil {
		return err
	}
	// The database comes from PGDATABASE, so a name is never parsed as a
	// conninfo or an option.
	cmd := exec.CommandContext(ctx, pgDump, "--format=custom", "--no-password")
	cmd.Env = s.toolEnv(database)
	cmd.Stdout = w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_dump %s: %v: %s", database, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// DumpFile dumps database into path atomically: a half-written dump never
// has the final name.
func (s *Server) DumpFile(ctx context.Context, database, path string) (int64, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	f, err := os.CreateTemp(dir, ".dump-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	if err := s.Dump(ctx, database, f); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return 0, err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return st.Size(), nil
}

// Restore loads a custom-format dump into database in one transaction:
// objects in the dump are dropped first if they exist (--clean
// --if-exists) and everything it creates is owned by role. On error
// nothing changed.
func (s *Server) Restore(ctx context.Context, database, role, dumpPath string) error {
	pgRestore, err := Tool("pg_restore")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, pgRestore, "--clean", "--if-exists", "--single-transaction",
		"--no-owner", "--no-acl", "--role="+role, "--no-password", "--dbname="+s.conninfo(database), dumpPath)
	cmd.Env = s.toolEnv(database)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_restore into %s: %v: %s", database, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// conninfo is a conninfo naming only the database, quoted as libpq wants
// (pg_restore requires --dbname; the rest comes from the environment).
func (s *Server) conninfo(database string) string {
	q := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(database)
	return "dbname='" + q + "'"
}
