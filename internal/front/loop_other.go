//go:build !linux

package front

import (
	"crypto/tls"
	"errors"
	"net"
)

// Event loops are Linux's (loop_linux.go); elsewhere every connection is
// served by a goroutine.
type loops struct{}

func (f *Front) startLoops(int) *loops { return nil }

func (ls *loops) adopt(net.Conn, *connTicket) error { return errors.New("no event loops") }

func (ls *loops) adoptTLS(*tls.Conn, string, *connTicket) error { return errors.New("no event loops") }

func (ls *loops) count() int { return 0 }

func (ls *loops) tick() {}

func (ls *loops) stop() {}

func (ls *loops) close() {}
