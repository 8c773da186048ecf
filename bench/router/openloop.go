package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// measureRate sends requests to t at a fixed rate (open loop) over conns
// keep-alive connections for d and returns the latency of each, counted
// from when it was due: a request that waits for a busy connection counts
// its wait too, so a slow target cannot lower the load it is measured at.
func measureRate(ctx context.Context, t target, rate, conns int, d time.Duration) (lats []time.Duration, errs int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	interval := time.Second / time.Duration(rate)
	start := time.Now().Add(10 * time.Millisecond)
	var (
		next   atomic.Int64 // the next request's number
		mu     sync.Mutex
		wg     sync.WaitGroup
		fatal  error
		nerrs  atomic.Int64
		result []time.Duration
	)
	for range conns {
		c, derr := dialTarget(t.addr)
		if derr != nil {
			return nil, 0, derr
		}
		wg.Go(func() {
			defer c.Close()
			br := bufio.NewReader(c)
			var local []time.Duration
			defer func() {
				mu.Lock()
				result = append(result, local...)
				mu.Unlock()
			}()
			for {
				due := start.Add(time.Duration(next.Add(1)-1) * interval)
				if wait := time.Until(due); wait > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(wait):
					}
				} else if ctx.Err() != nil {
					return
				}
				status, _, err := exchange(c, br)
				if err != nil {
					mu.Lock()
					fatal = err
					mu.Unlock()
					return
				}
				if status != 200 {
					nerrs.Add(1)
				}
				local = append(local, time.Since(due))
			}
		})
	}
	wg.Wait()
	if fatal != nil {
		return nil, 0, fatal
	}
	slices.Sort(result)
	return result, nerrs.Load(), nil
}

// printRateTable measures targets at a fixed rate, rounds times each
// (every other round in reverse), and prints their latency percentiles
// (medians over the rounds) and what each adds to direct's.
func printRateTable(ctx context.Context, cfg config, targets []target) error {
	pcts := []float64{50, 90, 99, 99.9}
	got := make([][][]time.Duration, len(targets)) // [target][round][pct]
	errs := make([]int64, len(targets))
	for round := range cfg.rounds {
		for k := range targets {
			i := k
			if round%2 == 1 {
				i = len(targets) - 1 - k
			}
			t := targets[i]
			fmt.Fprintf(os.Stderr, "bench/router: round %d: %s at %d req/s…\n", round+1, t.name, cfg.rate)
			if _, _, err := measureRate(ctx, t, cfg.rate, cfg.rateConns, cfg.warmup); err != nil {
				return fmt.Errorf("%s: warm-up: %w", t.name, err)
			}
			lats, n, err := measureRate(ctx, t, cfg.rate, cfg.rateConns, cfg.duration)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			if len(lats) == 0 {
				return fmt.Errorf("%s: no request completed", t.name)
			}
			errs[i] += n
			var ps []time.Duration
			for _, p := range pcts {
				ps = append(ps, lats[min(len(lats)-1, int(float64(len(lats))*p/100))])
			}
			got[i] = append(got[i], ps)
		}
	}
	med := func(i, p int) time.Duration {
		v := make([]time.Duration, 0, len(got[i]))
		for _, r := range got[i] {
			v = append(v, r[p])
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	fmt.Printf("\n## Latency at a fixed %d req/s (open loop, %d connections)\n\n", cfg.rate, cfg.rateConns)
	fmt.Println("| target | p50 | p90 | p99 | p99.9 | added p50 | added p99 | errors |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for i, t := range targets {
		added50, added99 := "—", "—"
		if i > 0 {
			added50, added99 = signed(med(i, 0)-med(0, 0)), signed(med(i, 2)-med(0, 2))
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %d |\n", t.name,
			fmtDur(med(i, 0)), fmtDur(med(i, 1)), fmtDur(med(i, 2)), fmtDur(med(i, 3)), added50, added99, errs[i])
	}
	return nil
}
