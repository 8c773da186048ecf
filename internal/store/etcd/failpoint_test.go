//go:build failpoints

package etcd_test

import (
	"testing"

	"hostel/internal/store/storetest"
)

// TestMemberFailpoints checks the store's failpoints against an etcd
// member in this process.
func TestMemberFailpoints(t *testing.T) {
	storetest.RunFailpoints(t, fresh(startMember(t)))
}
