package failpoint

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestCatalogueNames(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)+$`)
	seen := map[string]bool{}
	for _, p := range Catalogue() {
		if !valid.MatchString(p.Name) {
			t.Errorf("%q: a name is lowercase words joined by -, the area first", p.Name)
		}
		if seen[p.Name] {
			t.Errorf("%s: in the catalogue twice", p.Name)
		}
		seen[p.Name] = true
		if p.Actions == 0 || p.Actions&^(Error|Sleep|Kill) != 0 {
			t.Errorf("%s: actions %b", p.Name, p.Actions)
		}
		if p.Doc == "" {
			t.Errorf("%s: no description", p.Name)
		}
	}
}

// site is a call of Hit or Inject found in the repository.
type site struct {
	fn, name string
	pos      token.Position
}

// TestSitesAreCatalogued reads every Go file of the repository and
// checks each failpoint call against the catalogue: its name is a
// string literal there, Hit is only called for points that cannot fail
// and Inject for points that can; and every point has a site.
func TestSitesAreCatalogued(t *testing.T) {
	root := filepath.Join("..", "..")
	fset := token.NewFileSet()
	var sites []site
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor" || n == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		sites = append(sites, callsIn(t, fset, f)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	hasSite := map[string]bool{}
	for _, s := range sites {
		p, ok := Lookup(s.name)
		switch {
		case !ok:
			t.Errorf("%s: failpoint.%s(%q): no such failpoint: add it to the catalogue (internal/failpoint/catalogue.go) and docs/failpoints.md", s.pos, s.fn, s.name)
		case s.fn == "Hit" && p.Actions&Error != 0:
			t.Errorf("%s: failpoint.Hit(%q): the point can fail (its actions: %s): call Inject and return its error", s.pos, s.name, p.Actions)
		case s.fn == "Inject" && p.Actions&Error == 0:
			t.Errorf("%s: failpoint.Inject(%q): the point cannot fail (its actions: %s): call Hit, or give it Error in the catalogue", s.pos, s.name, p.Actions)
		}
		if (s.fn == "Hit" || s.fn == "Inject") && !strings.HasSuffix(s.pos.Filename, "_test.go") {
			hasSite[s.name] = true
		}
	}
	for _, p := range Catalogue() {
		if !hasSite[p.Name] {
			t.Errorf("%s: in the catalogue, but no Hit or Inject names it", p.Name)
		}
	}
	if len(sites) < len(catalogue) {
		t.Errorf("found %d sites for %d points: the walk of %s missed files", len(sites), len(catalogue), root)
	}
}

// callsIn returns the calls of Hit, Inject, Enable and Disable of this
// package in f (qualified outside it, plain inside), and fails t for one
// whose name is not a string literal.
func callsIn(t *testing.T, fset *token.FileSet, f *ast.File) []site {
	t.Helper()
	local := ""
	for _, imp := range f.Imports {
		if imp.Path.Value == `"hostel/internal/failpoint"` {
			local = "failpoint"
			if imp.Name != nil {
				local = imp.Name.Name
			}
		}
	}
	// This package's own tests arm names the catalogue lacks, on purpose.
	inside := f.Name.Name == "failpoint"
	if local == "" && !inside || inside && strings.HasSuffix(fset.Position(f.Pos()).Filename, "_test.go") {
		return nil
	}
	var out []site
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		var fn string
		switch e := call.Fun.(type) {
		case *ast.SelectorExpr:
			if x, ok := e.X.(*ast.Ident); ok && x.Name == local {
				fn = e.Sel.Name
			}
		case *ast.Ident:
			if inside {
				fn = e.Name
			}
		}
		if fn != "Hit" && fn != "Inject" && fn != "Enable" && fn != "Disable" {
			return true
		}
		pos := fset.Position(call.Pos())
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			// Enable fails for a name not in the catalogue by itself.
			if fn == "Hit" || fn == "Inject" {
				t.Errorf("%s: failpoint.%s: the name must be a string literal, so that the catalogue can be checked", pos, fn)
			}
			return true
		}
		name, err := strconv.Unquote(lit.Value)
		if err != nil {
			t.Errorf("%s: %v", pos, err)
			return true
		}
		out = append(out, site{fn: fn, name: name, pos: pos})
		return true
	})
	return out
}

// TestDocsListTheCatalogue: docs/failpoints.md names every point.
func TestDocsListTheCatalogue(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "failpoints.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range Catalogue() {
		if !strings.Contains(string(b), "`"+p.Name+"`") {
			t.Errorf("docs/failpoints.md does not list %s", p.Name)
		}
	}
}
