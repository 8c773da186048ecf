package nix

import (
	"fmt"
	"hostel/internal/atomicfile"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// The services of a hostel.nix that `hostel new` edits lie between two
// marker comments, one block per service, its source in ./NAME:
//
//	services = {
//	  # hostel:services
//	  api = {
//	    package = lib.goApp { name = "api"; src = ./api; };
//	    ...
//	  };
//	  # hostel:services-end
//	};
//
// A block starts with a line `NAME = {` and ends with the first line `};`
// indented as deeply.
const (
	BeginMarker = "# hostel:services"
	EndMarker   = "# hostel:services-end"
)

var serviceNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,40}$`)

// ScaffoldError is a request `hostel new` cannot do; nothing was changed.
type ScaffoldError struct {
	File, Service, Msg string
}

func (e *ScaffoldError) Error() string {
	if e.Service != "" {
		return fmt.Sprintf("%s: service %q: %s", e.File, e.Service, e.Msg)
	}
	return e.File + ": " + e.Msg
}

// NewService adds service name to the hostel.nix at file: it copies the
// folder of service from (next to file) to ./name, or writes a small Go
// web app there if from is "", and registers a block for it before the end
// marker. The block of from is copied with every whole-word occurrence of
// from renamed (so "shop.localhost" becomes "name.localhost"); a service
// without domains gets "name.localhost".
func NewService(file, name, from string) error {
	fail := func(svc, format string, a ...any) error {
		return &ScaffoldError{File: file, Service: svc, Msg: fmt.Sprintf(format, a...)}
	}
	if !serviceNameRE.MatchString(name) {
		return fail("", "invalid service name %q (want [a-z][a-z0-9-]{0,40})", name)
	}
	src, err := os.ReadFile(file)
	if err != nil {
		return fail("", "%v", err)
	}
	text := string(src)
	lines := strings.SplitAfter(text, "\n")
	begin, end := -1, -1
	for i, l := range lines {
		switch strings.TrimSpace(l) {
		case EndMarker:
			end = i
		}
		if begin < 0 && strings.HasPrefix(strings.TrimSpace(l), BeginMarker) && strings.TrimSpace(l) != EndMarker {
			begin = i
		}
	}
	if begin < 0 || end < begin {
		return fail("", "no %q … %q markers around the services; see docs/nix.md", BeginMarker, EndMarker)
	}
	dir := filepath.Dir(file)
	if _, _, ok := findBlock(lines[begin:end], name); ok {
		return fail(name, "already defined")
	}
	dst := filepath.Join(dir, name)
	if _, err := os.Lstat(dst); err == nil {
		return fail(name, "%s already exists", dst)
	}
	indent := leadingSpace(lines[end])
	var block string
	if from != "" {
		s, e, ok := findBlock(lines[begin:end], from)
		if !ok {
			return fail(from, "no block `%s = {` between the markers", from)
		}
		srcDir := filepath.Join(dir, from)
		if st, err := os.Stat(srcDir); err != nil || !st.IsDir() {
			return fail(from, "its source folder %s does not exist (the convention: each service's source in ./NAME)", srcDir)
		}
		word := regexp.MustCompile(`(^|[^A-Za-z0-9_-])` + regexp.QuoteMeta(from) + `($|[^A-Za-z0-9_-])`)
		var renamed []string
		hasDomains := false
		for _, l := range lines[begin+s : begin+e+1] {
			// Twice: adjacent occurrences share a delimiter.
			l = word.ReplaceAllString(word.ReplaceAllString(l, "${1}"+name+"${2}"), "${1}"+name+"${2}")
			hasDomains = hasDomains || strings.HasPrefix(strings.TrimSpace(l), "domains")
			renamed = append(renamed, l)
		}
		if !hasDomains {
			last := len(renamed) - 1
			dom := leadingSpace(renamed[0]) + "  " + fmt.Sprintf("domains = [ %q ];\n", name+".localhost")
			renamed = append(renamed[:last:last], dom, renamed[last])
		}
		block = strings.Join(renamed, "")
		if err := copyDir(srcDir, dst); err != nil {
			os.RemoveAll(dst)
			return fail(name, "copy %s: %v", srcDir, err)
		}
	} else {
		block = fmt.Sprintf(`%[2]s%[1]s = {
%[2]s  package = lib.goApp { name = %[1]q; src = ./%[1]s; };
%[2]s  exec = [ "bin/%[1]s" ];
%[2]s  domains = [ "%[1]s.localhost" ];
%[2]s  health.path = "/healthz";
%[2]s};
`, name, indent)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fail(name, "%v", err)
		}
		if err := os.WriteFile(filepath.Join(dst, "main.go"), []byte(fmt.Sprintf(appTemplate, name)), 0o644); err != nil {
			os.RemoveAll(dst)
			return fail(name, "%v", err)
		}
	}
	if end > 0 && strings.TrimSpace(lines[end-1]) != "" {
		block = "\n" + block
	}
	out := strings.Join(lines[:end], "") + block + "\n" + strings.Join(lines[end:], "")
	mode := os.FileMode(0o644)
	if st, err := os.Stat(file); err == nil {
		mode = st.Mode().Perm()
	}
	if err := atomicfile.WriteFile(file, []byte(out), mode); err != nil {
		os.RemoveAll(dst)
		return fail("", "%v", err)
	}
	return nil
}

// findBlock finds `name = {` … `};` in lines: the indexes of its first and
// last line.
func findBlock(lines []string, name string) (start, end int, ok bool) {
	head := regexp.MustCompile(`^(\s*)` + regexp.QuoteMeta(name) + `\s*=\s*\{\s*$`)
	for i, l := range lines {
		m := head.FindStringSubmatch(strings.TrimRight(l, "\n"))
		if m == nil {
			continue
		}
		for j := i + 1; j < len(lines); j++ {
			if strings.TrimRight(lines[j], " \t\n") == m[1]+"};" {
				return i, j, true
			}
		}
	}
	return 0, 0, false
}

func leadingSpace(s string) string { return s[:len(s)-len(strings.TrimLeft(s, " \t"))] }

func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm()|0o700)
		case info.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		default:
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, info.Mode().Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		}
	})
}

// appTemplate is the app `hostel new NAME` writes without --from.
const appTemplate = `// Command %[1]s is a web app hostel runs: it listens on HOST:PORT and
// answers /healthz when it is ready.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %[1]s %%s\n", os.Getenv("HOSTEL_VERSION"))
	})
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	log.Printf("%[1]s listening on %%s", addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
`
