// Command nixcache measures how fast a node takes a large closure from
// another node's binary cache (nix.Cache on the node-to-node port: mutual
// TLS with the cluster's CA, .narinfo signed with the cluster's key, NAR
// streamed from nix-store --dump; nix.Fetch on the other side) against
// `nix copy --from http://…` of the same closure from a file:// binary
// cache (uncompressed, signed) served by nginx, on the same machine, side
// by side in one run — and, for reference, the fetch from the same cache
// without TLS, and `nix copy` straight from it. Each fetch goes to a new, empty store (a chroot
// store, local?root=DIR, on the same disk). Results go to BENCHMARKS.md
// by hand.
//
//	go run ./bench/nixcache [-mb 200] [-rounds 3]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"hostel/internal/nix"
	"hostel/internal/peer"
)

// fetchEnv, set, makes this program the fetching node (fetch): what the
// parent measures, in a process of its own whose Nix commands go to the
// store NIX_REMOTE names.
const fetchEnv = "HOSTEL_BENCH_FETCH"

func main() {
	mb := flag.Int("mb", 200, "the closure's size in MiB: half in one path, half in 50 paths it references")
	rounds := flag.Int("rounds", 3, "rounds; each fetches the closure both ways")
	flag.Parse()
	var err error
	if os.Getenv(fetchEnv) != "" {
		err = fetch(flag.Args())
	} else {
		err = run(*mb, *rounds)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nixcache bench:", err)
		os.Exit(1)
	}
}

func run(mb, rounds int) error {
	if !nix.Available() {
		return errors.New("Nix is not installed (apt-get install nix-bin)")
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "hostel-bench-nixcache-")
	if err != nil {
		return err
	}
	defer removeAll(dir)
	os.Chmod(dir, 0o755) // nginx's workers read the cache in it

	top, err := buildClosure(dir, mb)
	if err != nil {
		return err
	}
	closure, err := nix.Closure(ctx, []string{top})
	if err != nil {
		return err
	}
	size, err := nix.ClosureSize(ctx, []string{top})
	if err != nil {
		return err
	}
	fmt.Printf("closure of %s: %d paths, %.0f MiB\n", top, len(closure), float64(size)/(1<<20))

	key, err := nix.NewSigningKey("hostel-bench")
	if err != nil {
		return err
	}

	// The node that has the closure: its cache on a peer port of its own.
	ca, err := peer.NewCA()
	if err != nil {
		return err
	}
	server, err := ca.Identity("server", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ln, err := server.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	cache := &nix.Cache{Key: key, Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }}
	srv := &http.Server{Handler: cache}
	go srv.Serve(ln)
	defer srv.Close()
	// The same cache without TLS, for reference: what the node-to-node
	// port's TLS costs (the peer over plain HTTP), and what the fetching
	// node's relay does (nix copy straight from the cache, which Nix
	// cannot do over the port: it presents no client certificate).
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	plain := &http.Server{Handler: cache}
	go plain.Serve(plainLn)
	defer plain.Close()
	caCert, caKey, err := ca.PEM()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), caCert, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca-key.pem"), caKey, 0o600); err != nil {
		return err
	}

	// The baseline: the same closure in a file:// cache, uncompressed and
	// signed with the same key, served by nginx.
	nginxURL, stop, err := startNginx(dir, key, top)
	if err != nil {
		return err
	}
	defer stop()

	self, err := os.Executable()
	if err != nil {
		return err
	}
	ways := []struct {
		name string
		cmd  func(store string) *exec.Cmd
	}{
		{"peer (hostel's cache, mTLS)", func(store string) *exec.Cmd {
			c := exec.Command(self, "https://"+ln.Addr().String(), key.Public(), top, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"), store)
			c.Env = append(os.Environ(), fetchEnv+"=1")
			return c
		}},
		{"peer, plain HTTP", func(store string) *exec.Cmd {
			c := exec.Command(self, "http://"+plainLn.Addr().String(), key.Public(), top, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"), store)
			c.Env = append(os.Environ(), fetchEnv+"=1")
			return c
		}},
		{"nix copy from the cache, plain", func(store string) *exec.Cmd {
			return exec.Command("nix", "--extra-experimental-features", "nix-command", "copy", "--from", "http://"+plainLn.Addr().String(),
				"--option", "trusted-public-keys", key.Public(), "--option", "substituters", "", top)
		}},
		{"nix copy from nginx", func(store string) *exec.Cmd {
			return exec.Command("nix", "--extra-experimental-features", "nix-command", "copy", "--from", nginxURL,
				"--option", "trusted-public-keys", key.Public(), "--option", "substituters", "", top)
		}},
	}
	times := make([][]time.Duration, len(ways))
	for r := range rounds {
		for i := range ways {
			w := ways[(i+r)%len(ways)] // alternate which goes first
			store := filepath.Join(dir, fmt.Sprintf("store-%d-%d", r, i))
			cmd := w.cmd(store)
			cmd.Env = append(cmd.Environ(), "NIX_REMOTE=local?root="+store)
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%s: %v\n%s", w.name, err, out)
			}
			took := time.Since(start)
			check := exec.Command("nix-store", "--check-validity", top)
			check.Env = append(os.Environ(), "NIX_REMOTE=local?root="+store)
			if out, err := check.CombinedOutput(); err != nil {
				return fmt.Errorf("%s: the closure is not in the new store: %v\n%s", w.name, err, out)
			}
			times[(i+r)%len(ways)] = append(times[(i+r)%len(ways)], took)
			removeAll(store)
		}
	}
	var medians []time.Duration
	for i, w := range ways {
		slices.Sort(times[i])
		m := times[i][len(times[i])/2]
		medians = append(medians, m)
		fmt.Printf("%-32s median %6.2f s  (%4.0f MiB/s)  min %.2f s, max %.2f s over %d rounds\n", w.name, m.Seconds(),
			float64(size)/(1<<20)/m.Seconds(), times[i][0].Seconds(), times[i][len(times[i])-1].Seconds(), rounds)
	}
	nginx := medians[len(medians)-1].Seconds()
	fmt.Printf("against nginx: peer %.2f× the time, peer over plain HTTP %.2f×, nix copy straight from the cache %.2f×\n",
		medians[0].Seconds()/nginx, medians[1].Seconds()/nginx, medians[2].Seconds()/nginx)
	return nil
}

// buildClosure builds, offline, a closure of 51 paths of mb MiB in all
// (random bytes, so that nothing compresses or deduplicates them): 50
// paths of one file, and one with a file of half the size that
// references them all — many paths, as an app's closure has. The same mb
// gives the same derivations, built once per machine (until a garbage
// collection).
func buildClosure(dir string, mb int) (string, error) {
	expr := fmt.Sprintf(`let
  sys = builtins.currentSystem;
  dep = i: derivation { name = "hostel-bench-dep-%[1]d-${toString i}"; system = sys; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir $out; /bin/dd if=/dev/urandom of=$out/data bs=1k count=%[2]d status=none" ]; };
in derivation { name = "hostel-bench-closure-%[1]d"; system = sys; builder = "/bin/sh";
  args = [ "-c" "/bin/mkdir $out; /bin/echo ${toString (builtins.genList dep 50)} > $out/deps; /bin/dd if=/dev/urandom of=$out/blob bs=1M count=%[3]d status=none" ]; }
`, mb, mb*1024/2/50, mb-mb/2)
	file := filepath.Join(dir, "closure.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		return "", err
	}
	// The out-link in dir is a GC root while the bench runs: other
	// work on the machine may collect garbage meanwhile.
	out, err := exec.Command("nix-build", "--out-link", filepath.Join(dir, "result"), "--option", "sandbox", "false", "--option", "substituters", "", file).Output()
	if err != nil {
		return "", fmt.Errorf("nix-build: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// startNginx copies top's closure to a file:// cache in dir (no
// compression, signed with key) and serves it with nginx on a free
// loopback port; it returns the cache's URL.
func startNginx(dir string, key *nix.SigningKey, top string) (string, func(), error) {
	cache := filepath.Join(dir, "cache")
	keyFile := filepath.Join(dir, "key.sec")
	if err := os.WriteFile(keyFile, []byte(key.String()), 0o600); err != nil {
		return "", nil, err
	}
	if out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "copy", "--to",
		"file://"+cache+"?compression=none&secret-key="+keyFile, top).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("nix copy --to file://: %v\n%s", err, out)
	}
	exec.Command("chmod", "-R", "a+rX", cache).Run()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := l.Addr().String()
	l.Close()
	conf := fmt.Sprintf(`worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  server { listen %[2]s; root %[3]s; }
}
`, dir, addr, cache)
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command("nginx", "-c", confFile, "-p", dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("nginx (scripts/install-deps.sh bench installs it): %w", err)
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	url := "http://" + addr
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(url + "/nix-cache-info"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url, stop, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, errors.New("nginx does not serve the cache")
		}
	}
}

// fetch is the fetching node: URL PUBKEY PATH CA-CERT CA-KEY STORE-DIR
// (the store is NIX_REMOTE's; its directory is named for the record).
func fetch(args []string) error {
	if len(args) != 6 {
		return fmt.Errorf("fetch: want URL PUBKEY PATH CA-CERT CA-KEY STORE-DIR, got %q", args)
	}
	certPEM, err := os.ReadFile(args[3])
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(args[4])
	if err != nil {
		return err
	}
	ca, err := peer.ParseCA(certPEM, keyPEM)
	if err != nil {
		return err
	}
	id, err := ca.Identity("client", "127.0.0.1:0")
	if err != nil {
		return err
	}
	client := &http.Client{Transport: id.Transport()}
	if strings.HasPrefix(args[0], "http://") {
		client = http.DefaultClient
	}
	peers := func(context.Context) ([]nix.CachePeer, error) {
		return []nix.CachePeer{{Name: "server", URL: args[0]}}, nil
	}
	_, err = nix.Fetch(context.Background(), client, peers, []string{args[2]}, args[1])
	return err
}

// removeAll removes a directory that holds a store's read-only paths.
func removeAll(dir string) {
	exec.Command("chmod", "-R", "u+w", dir).Run()
	os.RemoveAll(dir)
}
