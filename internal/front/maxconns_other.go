//go:build !unix

package front

// fdLimit is the soft limit on open descriptors, 0 if unknown.
func fdLimit() uint64 { return 0 }
