// Command envapp is a test service that records what it was given. Like a
// PaaS-style app it refuses a PORT it cannot listen on whenever PORT is
// set. `envapp` serves HTTP; `envapp release` is its release step. Each
// writes its environment (sorted, one NAME=value a line) to
// $STATE_DIRECTORY/MODE.env and, when it has a DATABASE_URL, connects with
// it and writes whether the connection is encrypted to
// $STATE_DIRECTORY/MODE.ssl; the release also makes a table.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	mode := "serve"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	if p, ok := os.LookupEnv("PORT"); ok {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			log.Fatalf("invalid PORT %q: want 1-65535", p)
		}
	}
	state := os.Getenv("STATE_DIRECTORY")
	env := os.Environ()
	slices.Sort(env)
	if err := os.WriteFile(filepath.Join(state, mode+".env"), []byte(strings.Join(env, "\n")+"\n"), 0o600); err != nil {
		log.Fatal(err)
	}
	if url := os.Getenv("DATABASE_URL"); url != "" {
		if err := useDatabase(url, mode, state); err != nil {
			log.Fatalf("database: %v", err)
		}
	}
	if mode == "release" {
		return
	}
	log.Fatal(http.ListenAndServe(net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT")), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})))
}

func useDatabase(url, mode, state string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	var ssl bool
	if err := c.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
		return err
	}
	if mode == "release" {
		if _, err := c.Exec(ctx, "CREATE TABLE IF NOT EXISTS releases (at timestamptz NOT NULL DEFAULT now()); INSERT INTO releases DEFAULT VALUES"); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(state, mode+".ssl"), []byte(strconv.FormatBool(ssl)), 0o600)
}
