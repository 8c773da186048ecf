package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"hostel/internal/nix"
)

// privateStore runs a daemon in a mount namespace of its own whose /nix is
// an empty tmpfs: a machine with a Nix store of its own, which has none of
// what the test builds (Debian's Nix, in /usr/bin, makes its database on
// first use).
var privateStore = []string{"unshare", "--mount", "--propagation", "private",
	"sh", "-c", `mount -t tmpfs hostel-test-nix /nix && exec "$0" "$@"`}

// cacheSpec is a Nix spec of one service, quotes, placed on n3: its
// package is a wrapper script and the app's binary, and the wrapper reads
// its greeting from another store path (a reference: the closure is two
// paths); stamp makes both new.
func cacheSpec(e *Env, stamp string) string {
	return fmt.Sprintf(`let
  sys = builtins.currentSystem;
  data = derivation { name = "cache-greeting"; system = sys; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir $out && /bin/echo %[1]s > $out/greeting" ]; };
  pkg = derivation { name = "cache-quotes"; system = sys; builder = "/bin/sh";
    args = [ "-c" ''
      /bin/mkdir -p $out/bin
      /bin/cp %[2]s $out/bin/quotes-bin
      /bin/echo '#!/bin/sh' > $out/bin/quotes
      /bin/echo "GREETING=\$(/bin/cat ${data}/greeting) exec $out/bin/quotes-bin" >> $out/bin/quotes
      /bin/chmod +x $out/bin/quotes
    '' ]; };
in {
  services.quotes = { package = pkg; exec = [ "bin/quotes" ]; domains = [ "quotes.example" ];
    health.path = "/healthz"; placement.node = "n3"; };
}
`, stamp, filepath.Join(e.Apps, "quotes", "bin", "quotes"))
}

// TestClusterServesItsClosures: n3 has a Nix store of its own, empty; a
// Nix spec whose service is placed on n3 is deployed through n1 (whose
// store, the machine's, has the closure the CLI built): n3 takes the
// closure from the other nodes' caches, its Nix checking the cluster's
// signatures, and the service answers through every node's router; a
// redeploy with a new closure does it again; a store path no node has
// fails the deploy before its commit, naming the path and the nodes
// asked.
func TestClusterServesItsClosures(t *testing.T) {
	if !nix.Available() {
		t.Fatal("Nix is not installed (apt-get install nix-bin; .ci/run does it)")
	}
	n1, n2, n3 := NewEnv(t), NewEnv(t), NewEnv(t)
	n3.Wrap = privateStore
	for _, e := range []*Env{n1, n2} {
		t.Cleanup(func() { nix.RootsFor(e.Root).RemoveAll() })
	}
	c := startCluster(t, n1, n2, n3)
	inN3Store := func(paths ...string) []string {
		t.Helper()
		out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(n3.daemon.Process.Pid), "-m",
			"nix-store", "--check-validity", "--print-invalid"}, paths...)...).Output()
		if err != nil {
			t.Fatalf("nix-store --check-validity in n3's store: %v", err)
		}
		return strings.Fields(string(out))
	}

	for round, stamp := range []string{"first-" + time.Now().Format("150405.000000"), "second-" + time.Now().Format("150405.000000")} {
		n1.writeFile("hostel.nix", cacheSpec(n1, stamp))
		n1.MustRun("deploy", "--no-confirm")
		st := n1.nixStatus()
		pkg := st["quotes"].Package
		if !strings.HasPrefix(pkg, "/nix/store/") {
			t.Fatalf("round %d: quotes: %+v", round+1, st["quotes"])
		}
		if on := c.envs[0].nodes()["n3"].Instances; len(on) != 1 || !strings.HasPrefix(on[0], "quotes-") {
			t.Errorf("round %d: n3 runs %v, want quotes", round+1, on)
		}
		if missing := inN3Store(pkg); len(missing) > 0 {
			t.Errorf("round %d: n3's store lacks %v", round+1, missing)
		}
		// Pinned there while it runs, as on one machine.
		root := filepath.Join(nix.RootsFor(n3.Root).Dir, "quotes-"+st["quotes"].Version, filepath.Base(pkg))
		if err := exec.Command("nsenter", "-t", strconv.Itoa(n3.daemon.Process.Pid), "-m", "test", "-L", root).Run(); err != nil {
			t.Errorf("round %d: no GC root %s in n3's store: %v", round+1, root, err)
		}
		// The store is n3's own: the derivation the CLI wrote to the
		// machine's store is not there (nothing fetches it).
		drv, err := exec.Command("nix-store", "--query", "--deriver", pkg).Output()
		if err != nil {
			t.Fatal(err)
		}
		if d := strings.TrimSpace(string(drv)); len(inN3Store(d)) != 1 {
			t.Errorf("round %d: n3's store has %s: it is not a store of its own", round+1, d)
		}
		for i, e := range c.envs {
			if code, _, body := e.Get("quotes.example", "/quote"); code != 200 || !strings.Contains(body, `"greeting":"`+stamp+`"`) {
				t.Errorf("round %d: quotes.example through %s: %d %q, want the greeting %s", round+1, c.names[i], code, body, stamp)
			}
		}
	}

	// A store path no node has valid — a directory in the machine's
	// /nix/store, which the CLI sees, that Nix never registered: n3's
	// start fails, and so does the deploy, before its commit.
	ghost := "/nix/store/11111111111111111111111111111111-hostel-test-ghost"
	if err := os.MkdirAll(ghost+"/bin", 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(ghost) })
	if err := os.WriteFile(ghost+"/bin/quotes", []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	n1.writeFile("hostel.nix", `{ services.quotes = { package = "`+ghost+`"; exec = [ "bin/quotes" ]; domains = [ "quotes.example" ]; placement.node = "n3"; }; }`)
	_, stderr, code := n1.Run("deploy", "--no-confirm")
	if code != 1 || !strings.Contains(stderr, ghost+" is not in this machine's Nix store and no other node serves it (n1 at https://") ||
		!strings.Contains(stderr, "n2 at https://") {
		t.Errorf("deploy of a path no node has: exit %d\n%s\nwant exit 1 naming the path and the nodes asked", code, stderr)
	}
	if gen, _ := n1.Status(); gen != 2 {
		t.Errorf("generation %d after a failed deploy, want 2", gen)
	}
}
