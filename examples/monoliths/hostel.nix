# The example monoliths as Nix builds them: the same services as hostel.json,
# each package a derivation of its own folder (./NAME), so changing one
# app's source rebuilds and redeploys only it and what needs it.
#
# nix/lib.nix's goApp builds with the host's Go toolchain and needs no
# nixpkgs; with nixpkgs you would write pkgs.buildGoModule instead.
{ ... }:
let
  lib = import ../../nix/lib.nix;
in
{
  # The demo's PostgreSQL (scripts/demo-postgres.sh), for the guestbook.
  postgres.admin = "host=/tmp/hostel-demo-pg port=5433 user=postgres";

  services = {
    # hostel:services — `hostel new NAME --from SERVICE` adds services here.
    # Keep one `NAME = { ... };` block per service, its source in ./NAME.

    quotes = {
      package = lib.goApp { name = "quotes"; src = ./quotes; };
      exec = [ "bin/quotes" ];
      env.GREETING = "Hello";
      health = { path = "/healthz"; timeout = "20s"; };
    };

    blog = {
      package = lib.goApp { name = "blog"; src = ./blog; };
      exec = [ "bin/blog" ];
      needs = [ "quotes" ];
      domains = [ "blog.localhost" ];
      health.path = "/healthz";
    };

    shop = {
      package = lib.goApp { name = "shop"; src = ./shop; };
      exec = [ "bin/shop" ];
      env.SHOP_TITLE = "The Teapot Shop";
      domains = [ "shop.localhost" ];
      redirects = [ "www.shop.localhost" ];
      stop_grace = "5s";
    };

    wiki = {
      package = lib.goApp { name = "wiki"; src = ./wiki; };
      exec = [ "bin/wiki" ];
      domains = [ "wiki.localhost" ];
      health.path = "/healthz";
    };

    # The guestbook needs modules from outside the standard library (pgx),
    # which goApp cannot download offline: its package is the directory
    # scripts/build-examples.sh (make examples) builds, copied into the
    # store as it is (a path value, not a string). With nixpkgs:
    # pkgs.buildGoModule { ...; vendorHash = "sha256-…"; }.
    guestbook = {
      package = ./build/guestbook;
      exec = [ "bin/guestbook" ];
      postgres = true;
      release = [ "bin/guestbook" "migrate" ];
      domains = [ "guestbook.localhost" ];
      health.path = "/healthz";
    };

    # hostel:services-end
  };
}
