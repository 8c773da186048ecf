# hostel's helpers for hostel.nix files that build without nixpkgs.
#
#   let lib = import ./nix/lib.nix; in
#   { services.api = { package = lib.goApp { name = "api"; src = ./api; }; exec = [ "bin/api" ]; }; }
#
# goApp builds a Go main package with the HOST's Go toolchain (default
# /usr/local/go/bin/go), so it needs Nix's sandbox off (`sandbox = false`,
# Debian's default; hostel passes `--option sandbox false`). It is meant for
# offline machines and examples: the toolchain is not part of the hash, so a
# Go upgrade does not rebuild anything. With nixpkgs, write
# `pkgs.buildGoModule { pname = "api"; version = "1"; src = ./api; vendorHash = ...; }`
# instead; hostel only needs a derivation whose output has the program.
#
# Only the standard library can be used offline (no module downloads),
# unless the source vendors its dependencies (go mod vendor).
{
  goApp =
    { name                       # the program: $out/bin/NAME
    , src                        # the main package's directory (copied into the store)
    , go ? "/usr/local/go/bin/go"
    , subPackage ? "."           # the main package, relative to src
    , ldflags ? "-s -w"
    }:
    derivation {
      inherit name src go subPackage ldflags;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" ''
        set -eu
        export HOME="$TMPDIR" GOPATH="$TMPDIR/gopath" GOFLAGS="-trimpath" CGO_ENABLED=0 \
          GOTOOLCHAIN=local GOPROXY=off GOTELEMETRY=off GOENV=off
        # Go's build cache is content-addressed, so sharing it between builds
        # (per build user, when there is no sandbox) only saves time.
        cache="/tmp/hostel-go-build-$(/usr/bin/id -u)"
        if /bin/mkdir -p -m 700 "$cache" 2>/dev/null && [ -O "$cache" ]; then
          export GOCACHE="$cache"
        else
          export GOCACHE="$TMPDIR/go-build"
        fi
        /bin/cp -r "$src" "$TMPDIR/src"
        /bin/chmod -R u+w "$TMPDIR/src"
        cd "$TMPDIR/src"
        [ -f go.mod ] || "$go" mod init "$name" 2>/dev/null
        /bin/mkdir -p "$out/bin"
        "$go" build -ldflags="$ldflags" -o "$out/bin/$name" "$subPackage"
      '' ];
    };
}
