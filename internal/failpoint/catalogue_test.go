package failpoint

import (
	"regexp"
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
