package nix

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const scaffoldSpec = `{ ... }:
let lib = import ./lib.nix; in
{
  services = {
    # hostel:services — hostel new adds services here
    quotes = {
      package = lib.goApp { name = "quotes"; src = ./quotes; };
      exec = [ "bin/quotes" ];
      env.GREETING = "quotes-free";
    };

    shop = {
      package = lib.goApp { name = "shop"; src = ./shop; };
      exec = [ "bin/shop" ];
      needs = [ "quotes" ];
      domains = [ "shop.localhost" ];
      redirects = [ "www.shop.localhost" ];
    };
    # hostel:services-end
  };
}
`

func scaffoldRepo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, app := range []string{"quotes", "shop"} {
		os.MkdirAll(filepath.Join(dir, app, "static"), 0o755)
		os.WriteFile(filepath.Join(dir, app, "main.go"), []byte("package main // "+app+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, app, "static", "x.css"), []byte("x"), 0o600)
	}
	os.WriteFile(filepath.Join(dir, "hostel.nix"), []byte(scaffoldSpec), 0o644)
	return dir
}

func TestNewService(t *testing.T) {
	for _, tc := range []struct {
		name, svc, from string
		want            []string // lines the new block must hold
	}{
		{"from a service without domains", "notes", "quotes", []string{
			`    notes = {`, `      package = lib.goApp { name = "notes"; src = ./notes; };`,
			`      exec = [ "bin/notes" ];`, `      env.GREETING = "quotes-free";`, `      domains = [ "notes.localhost" ];`}},
		{"from a service with domains", "store", "shop", []string{
			`    store = {`, `      needs = [ "quotes" ];`, `      domains = [ "store.localhost" ];`, `      redirects = [ "www.store.localhost" ];`}},
		{"a fresh app", "hello", "", []string{
			`    hello = {`, `      package = lib.goApp { name = "hello"; src = ./hello; };`, `      domains = [ "hello.localhost" ];`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := scaffoldRepo(t)
			file := filepath.Join(dir, "hostel.nix")
			if err := NewService(file, tc.svc, tc.from); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(file)
			text := string(b)
			s, e, ok := findBlock(strings.SplitAfter(text, "\n"), tc.svc)
			if !ok {
				t.Fatalf("no block for %s in:\n%s", tc.svc, text)
			}
			block := strings.Join(strings.SplitAfter(text, "\n")[s:e+1], "")
			for _, w := range tc.want {
				if !strings.Contains(block, w+"\n") {
					t.Errorf("block lacks %q:\n%s", w, block)
				}
			}
			if !strings.Contains(text, block+"\n    # hostel:services-end") {
				t.Errorf("block not right before the end marker:\n%s", text)
			}
			if !strings.HasPrefix(text, scaffoldSpec[:strings.Index(scaffoldSpec, "    # hostel:services-end")]) {
				t.Errorf("the rest of hostel.nix changed:\n%s", text)
			}
			if _, err := os.Stat(filepath.Join(dir, tc.svc, "main.go")); err != nil {
				t.Errorf("no ./%s/main.go: %v", tc.svc, err)
			}
			if tc.from != "" {
				st, err := os.Stat(filepath.Join(dir, tc.svc, "static", "x.css"))
				if err != nil || st.Mode().Perm() != 0o600 {
					t.Errorf("folder not copied with modes: %v %v", st, err)
				}
			}
		})
	}
}

func TestNewServiceRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, svc, from, msg string
		prepare              func(dir string)
	}{
		{"taken name", "shop", "quotes", "already defined", nil},
		{"bad name", "Shop!", "", "invalid service name", nil},
		{"unknown source", "x", "nope", "no block", nil},
		{"folder exists", "extra", "quotes", "already exists", func(dir string) { os.Mkdir(filepath.Join(dir, "extra"), 0o755) }},
		{"no source folder", "x", "shop", "does not exist", func(dir string) { os.RemoveAll(filepath.Join(dir, "shop")) }},
		{"no markers", "x", "", "markers", func(dir string) {
			os.WriteFile(filepath.Join(dir, "hostel.nix"), []byte("{ services = { }; }\n"), 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := scaffoldRepo(t)
			if tc.prepare != nil {
				tc.prepare(dir)
			}
			file := filepath.Join(dir, "hostel.nix")
			before, _ := os.ReadFile(file)
			err := NewService(file, tc.svc, tc.from)
			var se *ScaffoldError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want a ScaffoldError with %q", err, tc.msg)
			}
			after, _ := os.ReadFile(file)
			if string(before) != string(after) {
				t.Errorf("hostel.nix changed")
			}
		})
	}
}
