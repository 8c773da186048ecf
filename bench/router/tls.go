package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"time"

	"hostel/internal/acme"
	"hostel/internal/front"
	"hostel/internal/keyring"
	"hostel/internal/router"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// benchVersionHost is the immutable name whose certificate (from hostel's
// internal CA) the HTTPS router child serves, whatever name the client
// asks for: load generators connect to 127.0.0.1.
var benchVersionHost = spec.VersionHost("hello", "000000000000", spec.DefaultZone)

// childMainTLS is childMain for the HTTPS router: the router behind the
// same front end and TLS configuration `hostel serve` uses.
func childMainTLS() {
	fs := flag.NewFlagSet("router-tls", flag.ContinueOnError)
	backend := fs.String("backend", "", "backend address host:port")
	if err := fs.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "bench/router router-tls: %v\n", err)
		os.Exit(1)
	}
	h, err := runRouter([]string{"-backend", *backend})
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	root, err := os.MkdirTemp("", "hostel-bench-tls-")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(root)
	// Certificate management keeps the internal CA in a store; no ACME
	// order takes a lock here.
	st, err := store.OpenBolt(filepath.Join(root, "state.db"))
	if err != nil {
		fail(err)
	}
	hk, err := secrets.EnsureHostKey(root)
	if err != nil {
		fail(err)
	}
	m, err := acme.New(context.Background(), acme.Options{Store: st, Keys: keyring.New(st, hk),
		Lease: func(ctx context.Context) (store.Lease, error) { return st.Grant(ctx, time.Minute) },
		Root:  root, HTTPAddr: "127.0.0.1:0", HTTPSAddr: ln.Addr().String()})
	if err != nil {
		fail(err)
	}
	cfg := m.TLSConfig()
	get := cfg.GetCertificate
	cfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		h := *hello
		h.ServerName = benchVersionHost
		return get(&h)
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.RemoveAll(root)
		os.Exit(0)
	}()
	fmt.Printf("listening https://%s\n", ln.Addr())
	r := h.(*router.Router)
	f := front.New(r, front.Options{TLSConfig: cfg, DirectTLS: r.DirectTLS,
		ReadHeaderTimeout: 10 * time.Second,
		// Load generators hang up mid-handshake when a run ends.
		ErrorLog: log.New(io.Discard, "", 0)})
	if err := f.ServeTLS(ln); err != nil {
		fail(err)
	}
}

// insecureTLS is the client side of the benchmark: the certificate is not
// what is measured.
var insecureTLS = &tls.Config{InsecureSkipVerify: true}
