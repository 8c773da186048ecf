// Package e2e holds hostel's end-to-end tests: they build the real binary,
// run `hostel serve` in a temporary root on port 0, and drive it with the
// CLI like a user, against real processes, real Nix, PostgreSQL, Pebble and
// sshd. The harness is in harness_test.go.
package e2e
