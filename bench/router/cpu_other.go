//go:build !linux

package main

import "time"

// groupCPU is not measured outside Linux.
func groupCPU(pgid int) (time.Duration, bool) { return 0, false }
