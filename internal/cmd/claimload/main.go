// Command claimload drives a running sandboxpool's claim API and prints what
// it measured as key=value pairs on one line (testdata/perf.sh reads them).
// A development tool, not part of the shipped binary:
//
//	go run ./internal/cmd/claimload MODE [flags]
//
// Modes:
//
//	floor       -n keep-alive HTTP round trips to an empty handler in a child
//	            process, back to back, or -gap apart when -gap is given, or
//	            shared by -clients concurrent clients -repeat times (a burst)
//	wait-ready  poll /metrics until -want sandboxes are ready (fill time from -since)
//	paced       one client, -n claims -gap apart
//	b2b         one client, -n claims back to back
//	burst       -clients clients share -n claims; -repeat times, refilling to -refill (and resting -settle) between; -cpu-pid reports a process's CPU over the claims alone; with -url2, bursts to two pools in turn
//	rate        -rate claims/s for -for, open loop
//	steps       a profile such as 0x5s,8x30s,0x30s, one row per second, then a summary
//	alternate   one client, -n claims from each of -url and -url2 in turn, -gap apart (two pools compared in the same minutes)
//	claimed     claim at -rate until the pool shows -want claimed entries or -max-wait passes
//	cpu         CPU ms of every process of the pool under -state-dir (and -pid's tree)
//	machine     the machine now: one core's time for a fixed task (speed_ms) and
//	            /proc/stat's total and steal ticks, for a run's start and end
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/claimload"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: claimload floor|wait-ready|paced|b2b|burst|rate|steps|cpu [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	if mode == claimload.FloorServerMode {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		fmt.Println(ln.Addr())
		fail(claimload.ServeFloor(ln))
	}
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	var (
		base     = fs.String("url", "http://127.0.0.1:7780", "the API")
		base2    = fs.String("url2", "", "alternate: the second API (claims go to -url and -url2 in turn); burst: bursts go to -url and -url2 in turn")
		token    = fs.String("token", os.Getenv("SANDBOXPOOL_TOKEN"), "bearer token")
		noCheck  = fs.Bool("no-health-check", false, "claim with check_health=false")
		timeout  = fs.Duration("timeout", 10*time.Second, "each claim's server-side wait")
		n        = fs.Int("n", 100, "claims (paced, b2b, burst) or round trips (floor)")
		gap      = fs.Duration("gap", 300*time.Millisecond, "paced (and floor, when given): time between starts")
		clients  = fs.Int("clients", 20, "burst: concurrent clients")
		repeat   = fs.Int("repeat", 1, "burst: how many bursts")
		refill   = fs.Int("refill", 0, "burst: before each burst, wait until this many are ready")
		cold     = fs.Bool("cold", false, "burst (and floor bursts): every burst on new connections (by default the clients open theirs before the first burst and keep them)")
		rate     = fs.Float64("rate", 200, "rate: claims per second")
		dur      = fs.Duration("for", 10*time.Second, "rate: how long")
		profile  = fs.String("profile", "0x5s,8x30s,0x30s", "steps: RATExDURATION,...")
		tail     = fs.Duration("tail", 0, "steps: keep sampling this long after the profile")
		floor    = fs.Int("floor", 1, "steps: the target the pool should fall back to")
		want     = fs.Int("want", 50, "wait-ready: ready sandboxes to wait for")
		since    = fs.Int64("since", 0, "wait-ready: start instant (unix ns) to report the fill time from")
		every    = fs.Duration("every", 5*time.Millisecond, "wait-ready: poll interval (each poll is a /metrics scrape, which costs the controller CPU)")
		maxWait  = fs.Duration("max-wait", 2*time.Minute, "wait-ready and burst refills: give up after this")
		stateDir = fs.String("state-dir", "", "cpu: the pool's --state-dir")
		pid      = fs.Int("pid", 0, "cpu: the controller's pid (its process tree counts too)")
		cpuPid   = fs.Int("cpu-pid", 0, "paced, b2b, burst: report this process's CPU time over the claims alone (cpu_ms, cpu_ms_per_claim)")
		cpuPid2  = fs.Int("cpu-pid2", 0, "burst with -url2: -cpu-pid of the second pool")
		spans    = fs.String("spans", "", "paced, b2b, burst: append each run's span (CLOCK_MONOTONIC seconds, START END) to this file, to keep `perf record -k CLOCK_MONOTONIC` samples of the claims alone")
		settle   = fs.Duration("settle", 0, "burst: after each refill, wait this long (the backfill's last creations and store writes end) before the burst")
	)
	_ = fs.Parse(os.Args[2:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c := claimload.NewClient(*base)
	c.Token, c.NoHealthCheck, c.Timeout, c.Every, c.CPUPid = *token, *noCheck, *timeout, *every, *cpuPid
	if *spans != "" {
		f, ferr := os.OpenFile(*spans, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if ferr != nil {
			fail(ferr)
		}
		defer f.Close()
		c.Spans = f
	}

	var (
		res claimload.Result
		err error
	)
	switch mode {
	case "floor":
		exe, xerr := os.Executable()
		if xerr != nil {
			fail(xerr)
		}
		base, stopServer, serr := claimload.StartFloorServer(ctx, exe)
		if serr != nil {
			fail(serr)
		}
		floorGap := time.Duration(0) // back to back unless -gap is given
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "gap" {
				floorGap = *gap
			}
		})
		burst := false
		fs.Visit(func(f *flag.Flag) { burst = burst || f.Name == "clients" })
		if burst {
			res, err = claimload.FloorBurst(ctx, base, *clients, *n, *repeat, !*cold)
		} else {
			res, err = claimload.Floor(ctx, base, *n, floorGap)
		}
		stopServer()
	case "wait-ready":
		wctx, cancel := context.WithTimeout(ctx, *maxWait)
		defer cancel()
		at, err := c.WaitReady(wctx, *want)
		if err != nil {
			fail(err)
		}
		from := time.Now()
		if *since > 0 {
			from = time.Unix(0, *since)
		}
		fmt.Printf("mode=wait-ready ready=%d secs=%.3f\n", *want, at.Sub(from).Seconds())
		return
	case "paced":
		res, err = c.Paced(ctx, *n, *gap)
	case "b2b":
		res, err = c.BackToBack(ctx, *n)
	case "burst":
		// With -url2, two pools in turn, burst by burst, each refilled
		// before every burst of either: both are measured in the same
		// minutes (an A/B whose load comes and goes alike for both).
		targets := []*claimload.Client{c}
		if *base2 != "" {
			c2 := claimload.NewClient(*base2)
			c2.Token, c2.NoHealthCheck, c2.Timeout, c2.Every, c2.CPUPid = c.Token, c.NoHealthCheck, c.Timeout, c.Every, *cpuPid2
			targets = append(targets, c2)
		}
		if !*cold {
			for _, t := range targets {
				if cerr := t.Connect(ctx, *clients, "/healthz"); cerr != nil {
					fail(cerr)
				}
			}
		}
		results := make([]claimload.Result, len(targets))
	bursts:
		for i := range *repeat {
			for j, t := range targets {
				if *refill > 0 {
					for _, u := range targets {
						wctx, cancel := context.WithTimeout(ctx, *maxWait)
						_, werr := u.WaitReady(wctx, *refill)
						cancel()
						if werr != nil {
							fail(fmt.Errorf("burst %d: waiting for %d ready at %s: %w", i+1, *refill, u.Base, werr))
						}
					}
				}
				if *settle > 0 {
					time.Sleep(*settle)
				}
				bc := t
				if *cold {
					bc = claimload.NewClient(t.Base)
					bc.Token, bc.NoHealthCheck, bc.Timeout, bc.CPUPid, bc.Spans = t.Token, t.NoHealthCheck, t.Timeout, t.CPUPid, t.Spans
				}
				r, berr := bc.Burst(ctx, *clients, *n)
				if *cold {
					bc.Close() // its connections end with its burst
				}
				results[j] = merge(results[j], r)
				if berr != nil {
					err = berr
					break bursts
				}
			}
		}
		if len(targets) == 2 {
			fmt.Println(results[0].Line("burst-a"))
			fmt.Println(results[1].Line("burst-b"))
			if err != nil {
				fail(err)
			}
			return
		}
		res = results[0]
	case "rate":
		res, err = c.Rate(ctx, *rate, *dur)
	case "steps":
		steps, perr := claimload.ParseSteps(*profile)
		if perr != nil {
			fail(perr)
		}
		sum, _, serr := c.Steps(ctx, steps, *tail, *floor, os.Stdout)
		fmt.Println(sum.Line())
		if serr != nil {
			fail(serr)
		}
		return
	case "alternate":
		c2 := claimload.NewClient(*base2)
		c2.Token, c2.NoHealthCheck, c2.Timeout = c.Token, c.NoHealthCheck, c.Timeout
		ra, rb, aerr := claimload.Alternate(ctx, c, c2, *n, *gap)
		if aerr != nil {
			fail(aerr)
		}
		fmt.Println(ra.Line("alternate-a"))
		fmt.Println(rb.Line("alternate-b"))
		return
	case "claimed":
		deadline := time.Now().Add(*maxWait)
		have := 0.0
		for time.Now().Before(deadline) && ctx.Err() == nil {
			m, merr := c.Metrics(ctx)
			if merr != nil {
				fail(merr)
			}
			have = m[claimload.SeriesClaimed]
			if have >= float64(*want) {
				break
			}
			chunk := min(2*time.Second, time.Until(deadline))
			r, rerr := c.Rate(ctx, *rate, chunk)
			res = merge(res, r)
			if rerr != nil {
				fail(rerr)
			}
		}
		fmt.Printf("%s claimed_entries=%.0f\n", res.Line(mode), have)
		return
	case "machine":
		t, err := claimload.ReadCPUTimes()
		if err != nil {
			fail(err)
		}
		fmt.Printf("mode=machine speed_ms=%.0f ticks=%d steal_ticks=%d\n",
			float64(claimload.Speed().Microseconds())/1000, t.Total, t.Steal)
		return
	case "cpu":
		if *stateDir == "" {
			fail(fmt.Errorf("cpu: -state-dir is required"))
		}
		ms, pids, err := claimload.PoolCPU(*stateDir, *pid)
		if err != nil {
			fail(err)
		}
		list := make([]string, len(pids))
		for i, p := range pids {
			list[i] = strconv.Itoa(p)
		}
		fmt.Printf("mode=cpu cpu_ms=%.0f procs=%d pids=%s\n", ms, len(pids), strings.Join(list, ","))
		return
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
	fmt.Println(res.Line(mode))
	if err != nil {
		fail(err)
	}
}

func merge(a, b claimload.Result) claimload.Result {
	a.Claims += b.Claims
	a.Errors += b.Errors
	if a.FirstErr == "" {
		a.FirstErr = b.FirstErr
	}
	a.Latency = append(a.Latency, b.Latency...)
	a.Elapsed += b.Elapsed
	a.Warm += b.Warm
	a.Waited += b.Waited
	a.CPU += b.CPU
	return a
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "claimload:", err)
	os.Exit(1)
}
