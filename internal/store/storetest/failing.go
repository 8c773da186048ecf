package storetest

import (
	"context"
	"errors"
	"sync/atomic"

	"hostel/internal/store"
)

// ErrCutOff is what a Txn answers when the etcd member its client talks
// to was cut off or froze: the client's keep-alive went unanswered.
var ErrCutOff = errors.New("rpc error: code = Unavailable desc = keepalive ping failed to receive ACK within timeout")

// FailingWrites is a Store whose transactions fail with ErrCutOff while
// Fail is above zero, each one with a write Match takes using one up: the
// store out of reach for a moment, for the writes a test names.
type FailingWrites struct {
	store.Store
	Match func(store.Write) bool
	Fail  atomic.Int32
}

// Txn implements store.Store.
func (s *FailingWrites) Txn(ctx context.Context, writes ...store.Write) (uint64, error) {
	for _, wr := range writes {
		if s.Match(wr) && s.Fail.Add(-1) >= 0 {
			return 0, ErrCutOff
		}
	}
	return s.Store.Txn(ctx, writes...)
}
