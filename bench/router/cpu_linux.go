package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux this runs on).
const clockTick = 10 * time.Millisecond

// groupCPU is the CPU time (user + system) the live processes of process
// group pgid have used so far; false when it cannot be read.
func groupCPU(pgid int) (time.Duration, bool) {
	if pgid <= 0 {
		return 0, false
	}
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return 0, false
	}
	var total time.Duration
	found := false
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the process went away
		}
		// The command name may hold spaces and parentheses: fields
		// are counted after its last ')'. Field 3 is the state, 5 the
		// process group, 14 and 15 utime and stime.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g != pgid {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * clockTick
		found = true
	}
	return total, found
}
