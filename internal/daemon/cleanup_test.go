package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"hostel/internal/agent"
	"hostel/internal/deploy"
	"hostel/internal/keyring"
	"hostel/internal/nix"
	"hostel/internal/node/nodetest"
	"hostel/internal/postgres"
	"hostel/internal/postgres/pgtest"
	"hostel/internal/secrets"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// prepared is an engine with the daemon's real preparers: secrets as
// credentials, a PostgreSQL database per service, Nix GC roots, release
// steps.
type prepared struct {
	root   string
	engine *deploy.Engine
	store  store.Store
	roots  nix.Roots
	key    *secrets.HostKey
}

func newPrepared(t *testing.T) *prepared {
	t.Helper()
	root := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(root, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	hk, err := secrets.EnsureHostKey(root)
	if err != nil {
		t.Fatal(err)
	}
	p := &prepared{root: root, store: st, roots: nix.Roots{Dir: filepath.Join(root, "gcroots")}, key: hk}
	sup := supervisor.New(supervisor.Options{Root: root, Logf: t.Logf})
	keys := keyring.New(st, hk)
	if err := keys.Join(t.Context()); err != nil {
		t.Fatal(err)
	}
	db := newDatabases(root, st, keys, sup, false, t.Logf)
	n := nodetest.New(t, st, root, nodetest.Options{Sup: sup, Preparers: []agent.Preparer{&secrets.Preparer{Key: hk}, newProvisioner(db), newPinner(p.roots, nil), newReleaser(db, newOwnLease(st, claimTTL), hk.PublicKey(), root)}})
	p.engine = deploy.New(st, deploy.Options{Node: n.Name, Logf: t.Logf})
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.engine.Start(ctx); err != nil {
		t.Fatal(err)
	}
	n.Start(t)
	t.Cleanup(func() {
		p.engine.Detach()
		n.Shutdown()
		cancel()
		st.Close()
	})
	return p
}

// storePath adds a directory holding a program that serves nothing to the
// Nix store and returns its path.
func storePath(t *testing.T) string {
	t.Helper()
	if !nix.Available() {
		t.Skip("nix is not installed")
	}
	dir := filepath.Join(t.TempDir(), "cleanup-app")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", dir).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestFailedStartCleansUp: a version whose process does not start, after
// every preparer ran for it (its database created, its release run, its
// secret written as a credential, its store path pinned), leaves none of
// them behind; a database and roots that existed before stay.
func TestFailedStartCleansUp(t *testing.T) {
	pg := pgtest.Start(t)
	pkg := storePath(t)
	p := newPrepared(t)
	ct, err := secrets.Encrypt([]byte("s3cret"), []secrets.Recipient{{Recipient: p.key.Recipient()}})
	if err != nil {
		t.Fatal(err)
	}
	crashing := &spec.Service{Package: pkg, Exec: []string{"run"}, Postgres: &spec.Database{Database: "api_db"},
		Secrets: []string{"token"}, Release: []string{"/bin/true"}}
	s := &spec.Spec{Postgres: &spec.PostgresAdmin{Admin: pg.Admin()}, Services: map[string]*spec.Service{"api": crashing}}
	req := deploy.Request{Source: "test.json", Spec: s, Secrets: map[string][]byte{"token": ct}}
	_, err = p.engine.Deploy(t.Context(), req, t.Logf)
	if fs := deploy.Failures(err); len(fs) != 1 || fs[0].Service != "api" {
		t.Fatalf("deploy of a version that exits = %v, want api failing", err)
	}
	version, err := spec.Versions(s, spec.Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	key := spec.Key("api", version["api"])

	srv, err := postgres.Open(pg.Admin())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, ok, err := srv.Exists(ctx, "api_db"); err != nil || ok {
		t.Errorf("database api_db exists after a failed start (%v)", err)
	}
	if _, ok, err := srv.RoleInfo(ctx, supervisor.UserName("api")); err != nil || ok {
		t.Errorf("role %s exists after a failed start (%v)", supervisor.UserName("api"), err)
	}
	for _, kind := range []string{store.KindDatabase, store.KindPassword, store.KindRelease, store.KindReleaseClaim} {
		if recs, err := p.store.Records(ctx, kind); err != nil || len(recs) > 0 {
			t.Errorf("%s records after a failed start: %v (%v)", kind, recs, err)
		}
	}
	if p.roots.Pinned(string(key)) {
		t.Errorf("GC root of %s left after a failed start", key)
	}
	sum := sha256.Sum256([]byte(p.root))
	for _, dir := range []string{p.root, filepath.Join("/dev/shm", "hostel-"+hex.EncodeToString(sum[:6]))} {
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.Name() == "token" {
				t.Errorf("credential file %s left after a failed start", path)
			}
			return nil
		})
	}

	// What was there before a failed start stays: the database of a
	// version that runs, and its roots.
	serve := "import http.server, os; http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), http.server.BaseHTTPRequestHandler).serve_forever()"
	good := &spec.Service{Package: pkg, Exec: []string{"/usr/bin/python3", "-c", serve}, Postgres: &spec.Database{Database: "api_db"}}
	s.Services["api"] = good
	if _, err := p.engine.Deploy(ctx, deploy.Request{Source: "test.json", Spec: s}, t.Logf); err != nil {
		t.Fatalf("deploy of a version that runs: %v", err)
	}
	goodVersions, _ := spec.Versions(s, spec.Inputs{})
	goodKey := spec.Key("api", goodVersions["api"])
	s2 := &spec.Spec{Postgres: s.Postgres, Services: map[string]*spec.Service{"api": crashing}}
	if _, err := p.engine.Deploy(ctx, deploy.Request{Source: "test.json", Spec: s2, Secrets: map[string][]byte{"token": ct}}, t.Logf); err == nil {
		t.Fatal("the crashing version deployed")
	}
	if _, ok, err := srv.Exists(ctx, "api_db"); err != nil || !ok {
		t.Errorf("database api_db of the running version was dropped by a failed start (%v)", err)
	}
	if _, err := p.store.Record(ctx, store.KindDatabase, "api"); err != nil {
		t.Errorf("database record of the running version: %v", err)
	}
	if !p.roots.Pinned(string(goodKey)) {
		t.Errorf("GC root of the running version %s removed", goodKey)
	}
	if p.roots.Pinned(string(key)) {
		t.Errorf("GC root of %s left after a failed start", key)
	}
}

// TestGCHoldsUploadedClosures: in a cluster, the collection of `hostel gc`
// keeps the store paths of a kept generation's version that this node
// holds without running it (a deploy copied them here for another node);
// a lone daemon pins only what it runs, as before.
func TestGCHoldsUploadedClosures(t *testing.T) {
	if !nix.Available() {
		t.Fatal("Nix is not installed (apt-get install nix-bin; .ci/run does it)")
	}
	dir := t.TempDir()
	out, err := exec.Command("nix-build", "--no-out-link", "--option", "sandbox", "false", "--option", "substituters", "", "-E",
		`derivation { name = "held"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "/bin/mkdir $out && /bin/echo `+filepath.Base(dir)+` > $out/x" ]; }`).Output()
	if err != nil {
		t.Fatal(err)
	}
	pkg := strings.TrimSpace(string(out))
	g := &spec.Generation{Number: 1, Spec: &spec.Spec{Services: map[string]*spec.Service{
		"api":   {Package: pkg, Exec: []string{"bin/api"}},
		"ghost": {Package: "/nix/store/33333333333333333333333333333333-hostel-test-ghost", Exec: []string{"bin/ghost"}},
	}}, Versions: map[string]spec.Version{"api": "aaaaaaaaaaaa", "ghost": "bbbbbbbbbbbb"}}
	for _, tc := range []struct {
		name    string
		cluster bool
	}{{"lone daemon", false}, {"cluster", true}} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Daemon{opts: Options{Root: t.TempDir()}, sup: supervisor.New(supervisor.Options{Root: t.TempDir(), Logf: t.Logf})}
			if tc.cluster {
				d.nixCache = &nixCache{}
			}
			roots := nix.RootsFor(d.opts.Root)
			t.Cleanup(func() { roots.RemoveAll() })
			if _, err := d.unpin([]*spec.Generation{g}); err != nil {
				t.Fatal(err)
			}
			if got := roots.Pinned("api-aaaaaaaaaaaa"); got != tc.cluster {
				t.Errorf("api pinned: %v, want %v", got, tc.cluster)
			}
			if roots.Pinned("ghost-bbbbbbbbbbbb") {
				t.Error("a version whose paths are not here is pinned")
			}
		})
	}
}
