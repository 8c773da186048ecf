//go:build !linux

package front

// alive reports whether a pooled connection may still be used; without a
// non-blocking peek it can only check for bytes the backend sent unasked
// that were read already.
func (pc *pconn) alive() bool { return !pc.buffered() }
