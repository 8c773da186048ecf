package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"filippo.io/age"
	"golang.org/x/sys/unix"
)

// secretApp builds testdata/secretapp into a package directory every service
// user can read, and returns it.
func secretApp(t testing.TB) string {
	t.Helper()
	return testApp(t, "secretapp", "./test/e2e/testdata/secretapp")
}

func secretService(pkg, domain string, secrets ...string) map[string]any {
	svc := map[string]any{"package": pkg, "exec": []string{"bin/secretapp"}, "domains": []string{domain},
		"health": map[string]any{"path": "/healthz"}, "stop_grace": "2s"}
	if len(secrets) > 0 {
		svc["secrets"] = secrets
	}
	return svc
}

// credInfo is what secretapp's /info says.
type credInfo struct {
	Dir string `json:"credentials_directory"`
	UID int    `json:"uid"`
	PID int    `json:"pid"`
}

func info(t *testing.T, e *Env, host string) credInfo {
	t.Helper()
	code, _, body := e.Get(host, "/info")
	var ci credInfo
	if code != 200 || json.Unmarshal([]byte(body), &ci) != nil {
		t.Fatalf("%s/info: %d %q", host, code, body)
	}
	return ci
}

// TestSecrets is the secrets story: a machine key on first start, a secret
// edited with $EDITOR, deployed, read by the app from CREDENTIALS_DIRECTORY
// with the right owner and modes; a changed secret restarts only its users;
// a rollback decrypts the old one again; a secret this machine cannot
// decrypt fails the deploy with nothing changed; and the plaintext is
// nowhere else to be found.
func TestSecrets(t *testing.T) {
	pkg := secretApp(t)
	e := NewEnv(t)
	e.StartDaemon()

	// The daemon made its identity on first start.
	keyFile := filepath.Join(e.Root, "host.key")
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("host.key: %v, %v; want mode 0600", fi, err)
	}
	machineKey := strings.TrimSpace(e.MustRun("secrets", "recipients"))
	if e.Store == "etcd" {
		// A cluster of one node: its key, as a line of recipients.txt.
		var comment string
		machineKey, comment, _ = strings.Cut(machineKey, "  # ")
		if !strings.HasSuffix(comment, " (this machine)") {
			t.Errorf("secrets recipients on etcd: comment %q, want the node, marked as this machine", comment)
		}
	}
	if !strings.HasPrefix(machineKey, "age1") || strings.ContainsAny(machineKey, " \n") {
		t.Fatalf("secrets recipients = %q", machineKey)
	}
	secDir := filepath.Join(e.Dir, "secrets")
	os.MkdirAll(secDir, 0o755)
	if err := os.WriteFile(filepath.Join(secDir, "recipients.txt"), []byte("# machines\n"+machineKey+" # this machine\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// The editor writes $SECRET_VALUE; it runs on the temp file, which must be private.
	editor := filepath.Join(t.TempDir(), "editor.sh")
	os.WriteFile(editor, []byte("#!/bin/sh\n[ \"$(stat -c %a \"$1\")\" = 600 ] || { echo \"temp file is not 0600\" >&2; exit 1; }\nprintf '%s' \"$SECRET_VALUE\" > \"$1\"\necho \"$1\" > \"$EDITED_PATH_FILE\"\n"), 0o755)
	pathFile := filepath.Join(t.TempDir(), "edited")
	t.Setenv("EDITOR", editor)
	t.Setenv("EDITED_PATH_FILE", pathFile)
	marker := fmt.Sprintf("MARKER-%d-%x", os.Getpid(), os.Getpid()*7919)
	var outputs []string // every CLI output, for the leak check
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := e.Run(args...)
		outputs = append(outputs, out, errOut)
		if code != 0 {
			t.Fatalf("hostel %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		return out
	}
	edit := func(name, value string) {
		t.Helper()
		t.Setenv("SECRET_VALUE", value)
		run("secrets", "edit", name)
		tmp, _ := os.ReadFile(pathFile)
		if p := strings.TrimSpace(string(tmp)); p == "" {
			t.Fatal("the editor did not run")
		} else if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("the temp file %s was not removed: %v", p, err)
		}
	}
	edit("stripe_key", marker)
	edit("db_pass", "db-"+marker)
	if b, _ := os.ReadFile(filepath.Join(secDir, "stripe_key.age")); bytes.Contains(b, []byte(marker)) || !bytes.HasPrefix(b, []byte("age-encryption.org/v1")) {
		t.Fatalf("secrets/stripe_key.age is not an age file without the marker: %q", b)
	}

	e.WriteSpec(map[string]any{"services": map[string]any{
		"vault": secretService(pkg, "vault.example", "stripe_key"),
		"other": secretService(pkg, "other.example", "db_pass"),
		"plain": secretService(pkg, "plain.example"),
	}})
	run("plan")
	run("deploy", "--no-confirm")
	gen1, st1 := e.Status()

	t.Run("round trip", func(t *testing.T) {
		if code, _, body := e.Get("vault.example", "/secret/stripe_key"); code != 200 || body != marker {
			t.Errorf("vault reads stripe_key: %d %q", code, body)
		}
		if code, _, body := e.Get("other.example", "/secret/db_pass"); code != 200 || body != "db-"+marker {
			t.Errorf("other reads db_pass: %d %q", code, body)
		}
		// Only services that list a secret get it.
		if code, _, _ := e.Get("other.example", "/secret/stripe_key"); code != 404 {
			t.Errorf("other reads stripe_key: %d, want 404", code)
		}
		if ci := info(t, e, "plain.example"); ci.Dir != "" {
			t.Errorf("plain has CREDENTIALS_DIRECTORY=%s", ci.Dir)
		}
	})

	vaultDir := info(t, e, "vault.example").Dir
	t.Run("permissions", func(t *testing.T) {
		u, err := user.Lookup("hostel-vault")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		if ci := info(t, e, "vault.example"); ci.UID != uid {
			t.Errorf("vault runs as uid %d, want %d (hostel-vault)", ci.UID, uid)
		}
		check := func(p string, mode fs.FileMode) {
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode().Perm() != mode || int(st.Uid) != uid {
				t.Errorf("%s: mode %o uid %d, want %o uid %d", p, fi.Mode().Perm(), st.Uid, mode, uid)
			}
		}
		check(vaultDir, 0o500)
		check(filepath.Join(vaultDir, "stripe_key"), 0o400)
		ents, _ := os.ReadDir(vaultDir)
		if len(ents) != 1 {
			t.Errorf("vault's credentials directory holds %d files, want 1", len(ents))
		}
		var sfs unix.Statfs_t
		if unix.Statfs("/dev/shm", &sfs) == nil && sfs.Type == unix.TMPFS_MAGIC {
			if unix.Statfs(vaultDir, &sfs); sfs.Type != unix.TMPFS_MAGIC {
				t.Errorf("%s is not on tmpfs although /dev/shm is", vaultDir)
			}
		}
		// Another service's user cannot read it.
		cmd := exec.Command("runuser", "-u", "hostel-other", "--", "cat", filepath.Join(vaultDir, "stripe_key"))
		if out, err := cmd.CombinedOutput(); err == nil || bytes.Contains(out, []byte(marker)) {
			t.Errorf("hostel-other read vault's secret: %v %q", err, out)
		}
	})

	t.Run("list", func(t *testing.T) {
		out := run("secrets", "list")
		for _, want := range []string{machineKey + "  # this machine", "stripe_key", "vault", "db_pass", "other"} {
			if !strings.Contains(out, want) {
				t.Errorf("secrets list lacks %q:\n%s", want, out)
			}
		}
		var l struct {
			Secrets []struct {
				Name       string
				Recipients int
				UsedBy     []string `json:"used_by"`
			}
		}
		if err := json.Unmarshal([]byte(run("secrets", "list", "--json")), &l); err != nil {
			t.Fatal(err)
		}
		if len(l.Secrets) != 2 || l.Secrets[1].Name != "stripe_key" || l.Secrets[1].Recipients != 1 || strings.Join(l.Secrets[1].UsedBy, ",") != "vault" {
			t.Errorf("secrets list --json = %+v", l.Secrets)
		}
	})

	// A changed secret gives exactly its users new versions.
	marker2 := marker + "-v2"
	edit("stripe_key", marker2)
	var p struct {
		Services []struct {
			Name, Action string
			Reasons      []string
		}
	}
	if err := json.Unmarshal([]byte(run("plan", "--json")), &p); err != nil {
		t.Fatal(err)
	}
	for _, c := range p.Services {
		want := map[string]string{"vault": "update", "other": "keep", "plain": "keep"}[c.Name]
		if c.Action != want {
			t.Errorf("plan: %s %s, want %s", c.Name, c.Action, want)
		}
		if c.Name == "vault" && strings.Join(c.Reasons, ";") != "secret stripe_key changed" {
			t.Errorf("plan reasons for vault = %v", c.Reasons)
		}
	}
	run("plan")
	run("deploy", "--no-confirm")
	gen2, st2 := e.Status()
	t.Run("changed secret restarts only its users", func(t *testing.T) {
		if gen2 != gen1+1 {
			t.Fatalf("generation %d → %d", gen1, gen2)
		}
		if st2["vault"].PID == st1["vault"].PID || st2["vault"].Version == st1["vault"].Version {
			t.Errorf("vault was not replaced: %+v → %+v", st1["vault"], st2["vault"])
		}
		for _, n := range []string{"other", "plain"} {
			if st2[n].PID != st1[n].PID {
				t.Errorf("%s restarted: pid %d → %d", n, st1[n].PID, st2[n].PID)
			}
		}
		if _, _, body := e.Get("vault.example", "/secret/stripe_key"); body != marker2 {
			t.Errorf("vault reads %q after the change", body)
		}
		// The old version's credentials went with it.
		if _, err := os.Stat(vaultDir); !os.IsNotExist(err) {
			t.Errorf("the old version's credentials %s survive it: %v", vaultDir, err)
		}
	})

	t.Run("rollback decrypts the old secret again", func(t *testing.T) {
		run("rollback")
		if _, _, body := e.Get("vault.example", "/secret/stripe_key"); body != marker {
			t.Errorf("vault reads %q after rollback, want the first value", body)
		}
		run("rollback", "--to", strconv.FormatUint(gen2, 10))
		if _, _, body := e.Get("vault.example", "/secret/stripe_key"); body != marker2 {
			t.Errorf("vault reads %q after rolling forward", body)
		}
	})

	t.Run("not a recipient", func(t *testing.T) {
		stranger, _ := age.GenerateX25519Identity()
		var buf bytes.Buffer
		w, _ := age.Encrypt(&buf, stranger.Recipient())
		w.Write([]byte("stranger-" + marker))
		w.Close()
		path := filepath.Join(secDir, "stripe_key.age")
		orig, _ := os.ReadFile(path)
		os.WriteFile(path, buf.Bytes(), 0o644)
		defer os.WriteFile(path, orig, 0o644)
		genBefore, stBefore := e.Status()
		out, errOut, code := e.Run("deploy", "--no-confirm")
		outputs = append(outputs, out, errOut)
		if code != 2 {
			t.Fatalf("deploy with a secret for another machine: exit %d, want 2\n%s", code, errOut)
		}
		first := strings.SplitN(errOut, "\n", 2)[0]
		for _, want := range []string{`service "vault"`, `secret "stripe_key"`, machineKey, "not one of its recipients"} {
			if !strings.Contains(first, want) {
				t.Errorf("error line lacks %q: %s", want, first)
			}
		}
		genAfter, stAfter := e.Status()
		if genAfter != genBefore {
			t.Errorf("generation %d → %d", genBefore, genAfter)
		}
		for n, s := range stBefore {
			if stAfter[n].PID != s.PID || stAfter[n].Version != s.Version {
				t.Errorf("%s changed: %+v → %+v", n, s, stAfter[n])
			}
		}
	})

	t.Run("missing secret file", func(t *testing.T) {
		e.WriteSpec(map[string]any{"services": map[string]any{"vault": secretService(pkg, "vault.example", "stripe_key", "nope")}})
		defer e.WriteSpec(map[string]any{"services": map[string]any{
			"vault": secretService(pkg, "vault.example", "stripe_key"),
			"other": secretService(pkg, "other.example", "db_pass"),
			"plain": secretService(pkg, "plain.example"),
		}})
		_, errOut, code := e.Run("deploy", "--no-confirm")
		want := `hostel.json: service "vault": secrets: secret "nope": secrets/nope.age does not exist`
		if code != 2 || !strings.HasPrefix(errOut, want) {
			t.Errorf("exit %d, stderr %q; want 2 and %q", code, errOut, want)
		}
	})

	t.Run("no leaks", func(t *testing.T) {
		_, st := e.Status()
		for _, args := range [][]string{{"status"}, {"status", "--json"}, {"plan"}, {"plan", "--json"},
			{"generations"}, {"generations", "--json"}, {"logs", "vault"}, {"logs", "other"}, {"secrets", "list"}, {"secrets", "list", "--json"}} {
			run(args...)
		}
		leak := func(where string, b []byte) {
			for _, m := range []string{marker, "db-" + marker} {
				if bytes.Contains(b, []byte(m)) {
					t.Errorf("the secret is in %s", where)
				}
			}
		}
		for i, o := range outputs {
			leak(fmt.Sprintf("CLI output #%d", i), []byte(o))
		}
		leak("the daemon's log", []byte(e.DaemonLog()))
		credDirs := map[string]bool{}
		for _, h := range []string{"vault.example", "other.example"} {
			credDirs[info(t, e, h).Dir] = true
		}
		files := 0
		filepath.WalkDir(e.Root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() && credDirs[p] {
				return filepath.SkipDir
			}
			if d.Type().IsRegular() {
				files++
				b, _ := os.ReadFile(p)
				leak(p, b)
			}
			return nil
		})
		if files < 3 {
			t.Errorf("walked only %d files under ROOT", files)
		}
		for n, s := range st {
			for _, pid := range append([]int{s.PID}, children(s.PID)...) {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
				if err != nil {
					t.Errorf("%s: %v", n, err)
					continue
				}
				leak(fmt.Sprintf("/proc/%d/environ (%s)", pid, n), b)
				if n == "vault" && !bytes.Contains(b, []byte("CREDENTIALS_DIRECTORY=")) {
					t.Errorf("vault's environment has no CREDENTIALS_DIRECTORY")
				}
			}
		}
		if _, err := os.Stat("/nix/store"); err == nil {
			out, _ := exec.Command("grep", "-rlFs", marker, "/nix/store").Output()
			if len(bytes.TrimSpace(out)) > 0 {
				t.Errorf("the secret is in the Nix store: %s", out)
			}
		}
	})

	t.Run("credentials removed when the services stop", func(t *testing.T) {
		// A plain stop of the daemon keeps services and their credentials;
		// hostel shutdown stops them.
		e.Shutdown()
		entries, _ := filepath.Glob(filepath.Join(filepath.Dir(vaultDir), "*"))
		if len(entries) != 0 {
			t.Errorf("credentials left after stop: %v", entries)
		}
	})
}

// children returns the pids whose parent is pid.
func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}
