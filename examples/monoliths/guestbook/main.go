// Command guestbook is an example web app that keeps its messages in its own
// PostgreSQL database, which hostel provisions and hands it as DATABASE_URL.
// Its table is made by a release step, `guestbook migrate`, which hostel runs
// once per new version before the version takes traffic.
//
//	curl --data 'hello' http://guestbook.localhost:8080/
//	curl http://guestbook.localhost:8080/
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are applied in order, each once; schema_version records how far.
var migrations = []string{
	`CREATE TABLE messages (id bigserial PRIMARY KEY, body text NOT NULL, at timestamptz NOT NULL DEFAULT now())`,
}

func main() {
	ctx := context.Background()
	if len(os.Args) > 1 && os.Args[1] == "migrate" {
		if err := migrate(ctx); err != nil {
			log.Fatalf("migrate: %v", err)
		}
		return
	}
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := pool.Ping(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		rows, err := pool.Query(r.Context(), `SELECT id, body, at FROM messages ORDER BY id`)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer rows.Close()
		fmt.Fprintf(w, "The guestbook (version %s). POST / to sign it.\n", os.Getenv("HOSTEL_VERSION"))
		for rows.Next() {
			var id int64
			var body string
			var at time.Time
			if err := rows.Scan(&id, &body, &at); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(w, "#%d %s %s\n", id, at.UTC().Format(time.DateTime), body)
		}
		if err := rows.Err(); err != nil {
			fmt.Fprintf(w, "error: %v\n", err)
		}
	})
	mux.HandleFunc("POST /{$}", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 4096))
		body := strings.TrimSpace(string(b))
		if err != nil || body == "" {
			http.Error(w, "say something", http.StatusBadRequest)
			return
		}
		var id int64
		if err := pool.QueryRow(r.Context(), `INSERT INTO messages (body) VALUES ($1) RETURNING id`, body).Scan(&id); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "signed #%d\n", id)
	})
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	log.Printf("guestbook %s listening on %s, database %s as %s", os.Getenv("HOSTEL_VERSION"), addr, os.Getenv("PGDATABASE"), os.Getenv("PGUSER"))
	log.Fatal(http.ListenAndServe(addr, mux))
}

// migrate brings the schema up to date in one transaction.
func migrate(ctx context.Context) error {
	c, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)`); err != nil {
			return err
		}
		// Serialize concurrent migrators.
		if _, err := tx.Exec(ctx, `LOCK TABLE schema_version IN EXCLUSIVE MODE`); err != nil {
			return err
		}
		var v int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_version`).Scan(&v); err != nil {
			return err
		}
		for ; v < len(migrations); v++ {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migration %d: %w", v+1, err)
			}
			log.Printf("applied migration %d", v+1)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM schema_version`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO schema_version VALUES ($1)`, v)
		if err == nil {
			log.Printf("schema at version %d", v)
		}
		return err
	})
}
