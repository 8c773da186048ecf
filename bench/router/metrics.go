package main

import (
	"context"
	"fmt"
	"slices"
)

// This file measures what the daemon's request hook costs the router:
// the metrics (internal/metrics) and the access log (internal/accesslog).

// measureMetrics measures the router behind the front end with metrics
// off, on, and on with the access log, one right after the other in
// each round.
func measureMetrics(ctx context.Context, cfg config, procs *children, backend target, tmp string) error {
	off, err := procs.startSelf(ctx, "hostel", "router", "-backend", backend.addr)
	if err != nil {
		return err
	}
	targets, err := startMetricsTargets(ctx, procs, backend, tmp)
	if err != nil {
		return err
	}
	targets = append([]target{off}, targets...)
	results, runs, err := measureAll(ctx, cfg, targets, nil)
	if err != nil {
		return err
	}
	printTable(results)
	fmt.Println()
	printMetricsCost(runs[0], runs[1:], results[0], results[1:])
	return nil
}

// startMetricsTargets starts the router counting into hostel's
// Prometheus series, then the same also writing the access log (the
// daemon's hook).
func startMetricsTargets(ctx context.Context, procs *children, backend target, tmp string) ([]target, error) {
	var targets []target
	for _, c := range []struct {
		name string
		args []string
	}{
		{"hostel (metrics)", []string{"-metrics"}},
		{"hostel (metrics, access log)", []string{"-metrics", "-access-log", tmp}},
	} {
		t, err := procs.startSelf(ctx, c.name, "router", append([]string{"-backend", backend.addr}, c.args...)...)
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	return targets, nil
}

// printMetricsCost prints what the metrics (on[0]) and the metrics with
// the access log (on[1]) cost the router: their throughput ÷ the
// router's without (off), round by round (measured one after the
// other), and the CPU time per request they add (medians).
func printMetricsCost(off []result, on [][]result, offMed result, onMed []result) {
	for i, what := range []string{"Metrics", "Metrics and access log"} {
		fmt.Printf("%s on ÷ off throughput, round by round:", what)
		ratios := make([]float64, len(off))
		for k := range off {
			ratios[k] = on[i][k].rps / off[k].rps
			fmt.Printf(" %.3f", ratios[k])
		}
		slices.Sort(ratios)
		fmt.Printf("; median %.3f", ratios[len(ratios)/2])
		if i == 0 {
			fmt.Print(" (bar: ≥ 0.97)")
		}
		fmt.Printf(". CPU per request: %s off, %s on, %+d ns", offMed.cpu, onMed[i].cpu, (onMed[i].cpu - offMed.cpu).Nanoseconds())
		if i == 0 {
			fmt.Print(" (bar: ≤ 1 µs)")
		}
		fmt.Println(".")
	}
}
