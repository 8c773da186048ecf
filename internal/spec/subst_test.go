package spec

import (
	"strings"
	"testing"
)

// substEnv is a process's environment for the substitution tests.
var substEnv = []string{"PORT=41234", "HOST=127.0.0.1", "STATE_DIRECTORY=/var/lib/hostel/state/web",
	"EMPTY=", "SPACED=a b  c", "DOLLARS=$HOME $$ ${PORT}", "_X1=x"}

func TestExpandArg(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"no dollar", "--serve", "--serve"},
		{"whole argument", "$PORT", "41234"},
		{"braces whole", "${PORT}", "41234"},
		{"braces in a word", "--port=${PORT}", "--port=41234"},
		{"braces twice", "${HOST}:${PORT}", "127.0.0.1:41234"},
		{"braces then path", "${STATE_DIRECTORY}/db.sqlite", "/var/lib/hostel/state/web/db.sqlite"},
		{"underscore and digit", "$_X1", "x"},
		{"empty value", "${EMPTY}", ""},
		{"whole argument is never split", "$SPACED", "a b  c"},
		{"a value is not substituted again", "${DOLLARS}", "$HOME $$ ${PORT}"},
		{"dollar dollar", "$$", "$"},
		{"dollar dollar in a word", "price$$5", "price$5"},
		{"escaped reference", "$${PORT}", "${PORT}"},
		{"escaped whole argument", "$$PORT", "$PORT"},
		{"four dollars", "$$$$", "$$"},
		{"escaped then reference", "$$${PORT}", "$41234"},
		{"shell's own variable in a script", `exec app --port "$PORT" --x=$x`, `exec app --port "$PORT" --x=$x`},
		{"shell positional and special", `echo $1 $@ $? $# $* $- $! $0`, `echo $1 $@ $? $# $* $- $! $0`},
		{"shell pid written for hostel", `echo $$$$`, `echo $$`},
		{"word with $NAME inside", "--port=$PORT", "--port=$PORT"},
		{"lone dollar", "$", "$"},
		{"trailing dollar", "cost$", "cost$"},
		{"whole positional", "$1", "$1"},
		{"whole special", "$@", "$@"},
		{"dollar space", "$ x", "$ x"},
		{"non-ASCII", "${HOST}é$", "127.0.0.1é$"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ExpandArg(tt.in, substEnv)
			if err != nil {
				t.Fatalf("ExpandArg(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ExpandArg(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestExpandArgErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"unknown whole", "$NOPE", "$NOPE is not in the environment (write $$ for a literal $)"},
		{"unknown braces", "--x=${NOPE}", "$NOPE is not in the environment"},
		{"names are case-sensitive", "${port}", "$port is not in the environment"},
		{"unclosed brace", "${PORT", `"${PORT": ${ must be followed by a name and }`},
		{"empty braces", "${}", `"${}": ${ must be followed by a name and }`},
		{"shell default", "${PORT:-8080}", `"${PORT:-8080}": ${ must be followed by a name and } (${NAME}, NAME of letters, digits and _); write $${ for a literal ${`},
		{"shell length", "${#PORT}", "${ must be followed by a name"},
		{"positional in braces", "${1}", "${ must be followed by a name"},
		{"whole argument goes on", "$STATE_DIRECTORY/db", `"$STATE_DIRECTORY/db" starts with $STATE_DIRECTORY and goes on: write ${STATE_DIRECTORY}/db, or $$ for a literal $`},
		{"script starting with a variable", "$APP serve", `"$APP serve" starts with $APP and goes on: write ${APP} serve`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ExpandArg(tt.in, substEnv)
			if err == nil {
				t.Fatalf("ExpandArg(%q) = %q, want an error containing %q", tt.in, got, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ExpandArg(%q): %q, want it to contain %q", tt.in, err, tt.want)
			}
		})
	}
}

// TestArgRefsInSpec checks the refusal at plan time: every reference
// names a variable the process of that field has; the error names the
// service, the argument and the name, and suggests $$.
func TestArgRefsInSpec(t *testing.T) {
	ok := []struct{ name, in string }{
		{"what hostel sets", `{"services":{"web":{"exec":["/a","$PORT","--bind","${HOST}","${STATE_DIRECTORY}/x","$RUNTIME_DIRECTORY","$HOSTEL_SERVICE","$HOSTEL_VERSION","$NOTIFY_SOCKET","$PATH","$HOME"]}}}`},
		{"env", `{"services":{"web":{"exec":["/a","--level=${LOG_LEVEL}"],"env":{"LOG_LEVEL":"info"}}}}`},
		{"need url", `{"services":{"api":{"exec":["/a"]},"web":{"exec":["/a","$API_URL"],"needs":["api"]},"b-c":{"exec":["/a"]},"d":{"exec":["/a","${B_C_URL}/x"],"needs":["b-c"]}}}`},
		{"database's fixed variables", `{"services":{"web":{"exec":["/a","$PGHOST","$PGDATABASE","$PGUSER"],"postgres":true}}}`},
		{"credentials directory", `{"services":{"web":{"exec":["/a","${CREDENTIALS_DIRECTORY}/key"],"secrets":["key"]}}}`},
		{"release", `{"services":{"web":{"exec":["/a"],"release":["/a","migrate","--dir=${STATE_DIRECTORY}"]}}}`},
		{"sh -c keeps working", `{"services":{"web":{"exec":["/bin/sh","-c","exec app --port \"$PORT\" --name $x; echo $1 $@ $?"]}}}`},
		{"literal dollars", `{"services":{"web":{"exec":["/a","$$NOPE","$${NOPE}","a$$b"]}}}`},
		{"program with a plain dollar", `{"services":{"web":{"exec":["/opt/a$b"]}}}`},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Decode("hostel.json", []byte(tt.in)); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
	bad := []struct{ name, in, want string }{
		{"unknown name", `{"services":{"web":{"exec":["/a","--port","$PRT"]}}}`,
			`hostel.json: service "web": exec[2]: $PRT is not in the service's environment (write $$ for a literal $)`},
		{"unknown in braces", `{"services":{"web":{"exec":["/a","--x=${NOPE}"]}}}`,
			`hostel.json: service "web": exec[1]: $NOPE is not in the service's environment (write $$ for a literal $)`},
		{"need not needed", `{"services":{"api":{"exec":["/a"]},"web":{"exec":["/a","$API_URL"]}}}`,
			`hostel.json: service "web": exec[1]: $API_URL is not in the service's environment (write $$ for a literal $)`},
		{"port in a release", `{"services":{"web":{"exec":["/a"],"release":["/a","$PORT"]}}}`,
			`hostel.json: service "web": release[1]: $PORT is not in a release's environment (a release serves nothing) (write $$ for a literal $)`},
		{"unknown in a release", `{"services":{"web":{"exec":["/a"],"release":["/a","${X}"]}}}`,
			`hostel.json: service "web": release[1]: $X is not in the service's environment (write $$ for a literal $)`},
		{"database without postgres", `{"services":{"web":{"exec":["/a","$PGHOST"]}}}`,
			`hostel.json: service "web": exec[1]: $PGHOST is not in the service's environment (write $$ for a literal $)`},
		{"database url", `{"services":{"web":{"exec":["/a","--db=${DATABASE_URL}"],"postgres":true}}}`,
			`hostel.json: service "web": exec[1]: $DATABASE_URL is never put in a program's arguments: it may hold the database's password, and a process's arguments are readable by every user of the machine: let the program read it from its environment`},
		{"credentials without secrets", `{"services":{"web":{"exec":["/a","$CREDENTIALS_DIRECTORY"]}}}`,
			`hostel.json: service "web": exec[1]: $CREDENTIALS_DIRECTORY is not in the service's environment (write $$ for a literal $)`},
		{"shell default", `{"services":{"web":{"exec":["/bin/sh","-c","exec app ${PORT:-80}"]}}}`,
			`hostel.json: service "web": exec[2]: "exec app ${PORT:-80}": ${ must be followed by a name and } (${NAME}, NAME of letters, digits and _); write $${ for a literal ${`},
		{"whole argument goes on", `{"services":{"web":{"exec":["/a","$STATE_DIRECTORY/db"]}}}`,
			`hostel.json: service "web": exec[1]: "$STATE_DIRECTORY/db" starts with $STATE_DIRECTORY and goes on: write ${STATE_DIRECTORY}/db, or $$ for a literal $`},
		{"program", `{"services":{"web":{"exec":["${STATE_DIRECTORY}/bin/app"]}}}`,
			`hostel.json: service "web": exec[0]: "${STATE_DIRECTORY}/bin/app": the program is never substituted (write its path as it is)`},
		{"release program", `{"services":{"web":{"exec":["/a"],"release":["$HOME/migrate"]}}}`,
			`hostel.json: service "web": release[0]: "$HOME/migrate": the program is never substituted (write its path as it is)`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode("hostel.json", []byte(tt.in))
			if err == nil {
				t.Fatalf("accepted, want %q", tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestVersionCoversArgsAsWritten: the version hashes the arguments as
// written, not as substituted — $PORT and ${PORT} are two versions, and
// nothing of a start (the port it got) changes a version.
func TestVersionCoversArgsAsWritten(t *testing.T) {
	version := func(arg string) Version {
		t.Helper()
		s, err := Decode("hostel.json", []byte(`{"services":{"web":{"exec":["/a",`+arg+`]}}}`))
		if err != nil {
			t.Fatal(err)
		}
		v, err := Versions(s, Inputs{})
		if err != nil {
			t.Fatal(err)
		}
		return v["web"]
	}
	if a, b := version(`"$PORT"`), version(`"${PORT}"`); a == b {
		t.Errorf("$PORT and ${PORT} have one version %s: the hash must cover the arguments as written", a)
	}
	if a, b := version(`"$PORT"`), version(`"$PORT"`); a != b {
		t.Errorf("one spec, two versions: %s, %s", a, b)
	}
}

// FuzzExpandArg: substitution is total; what EscapeArg writes comes back
// as it was; every reference is a valid name; a value is put in as it is,
// never read again.
func FuzzExpandArg(f *testing.F) {
	for _, s := range []string{"", "$", "$$", "$PORT", "${PORT}", "$${PORT}", "--port=${PORT}x", "${PORT:-1}",
		"$STATE_DIRECTORY/db", "sh -c 'echo $1 $$'", "--db=${DATABASE_URL}", "${", "${}", "$$$", "${A}${B}", "\x00$\xff{Z}"} {
		f.Add(s, "v$a${b}")
	}
	f.Fuzz(func(t *testing.T, arg, value string) {
		if got, err := ExpandArg(EscapeArg(arg), nil); err != nil || got != arg {
			t.Fatalf("ExpandArg(EscapeArg(%q)) = %q, %v; want it back", arg, got, err)
		}
		refs, err := ArgRefs(arg)
		if err != nil {
			if _, err2 := ExpandArg(arg, nil); err2 == nil && strings.Contains(arg, "$") {
				t.Fatalf("ArgRefs(%q) refused (%v), ExpandArg did not", arg, err)
			}
			return
		}
		env := []string{}
		for _, r := range refs {
			if nameLen(r) != len(r) {
				t.Fatalf("ArgRefs(%q) gave %q, not a name", arg, r)
			}
			env = append(env, r+"="+value)
		}
		got, err := ExpandArg(arg, env)
		if refersToNever(refs) {
			if err == nil {
				t.Fatalf("ExpandArg(%q) = %q: put in a variable never put in arguments", arg, got)
			}
			return
		}
		if err != nil {
			t.Fatalf("ExpandArg(%q) with every name set: %v", arg, err)
		}
		// With the value of every reference a marker of its own, what
		// is substituted is each reference's value, in order.
		if !strings.Contains(value, "$") && len(refs) > 0 && strings.Count(got, value) < len(refs) && value != "" {
			t.Fatalf("ExpandArg(%q) = %q: fewer than %d copies of %q", arg, got, len(refs), value)
		}
		if len(refs) == 0 && !strings.Contains(arg, "$$") && !strings.Contains(arg, "${") && got != arg {
			t.Fatalf("ExpandArg(%q) = %q: changed an argument without references", arg, got)
		}
		if len(refs) > 0 {
			if _, err := ExpandArg(arg, nil); err == nil {
				t.Fatalf("ExpandArg(%q) without %v in the environment: no error", arg, refs)
			}
		}
	})
}

// refersToNever reports whether refs name a variable never put in
// arguments (DATABASE_URL).
func refersToNever(refs []string) bool {
	for _, r := range refs {
		if _, ok := argNeverSubstituted[r]; ok {
			return true
		}
	}
	return false
}
