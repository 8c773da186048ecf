//go:build !linux

package front_test

import (
	"net"
	"testing"
	"time"
)

// waitDelivered gives bytes written to c time to reach its peer: without
// Linux's SIOCOUTQ there is no asking whether they did.
func waitDelivered(t testing.TB, c net.Conn) { time.Sleep(50 * time.Millisecond) }
