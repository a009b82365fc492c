package claimload

import (
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Step is one stretch of a load profile: Rate claims per second for For.
type Step struct {
	Rate float64
	For  time.Duration
}

// ParseSteps reads a profile such as "0x5s,8x30s,0x40s" (rate x duration, in order).
func ParseSteps(s string) ([]Step, error) {
	var out []Step
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		r, d, ok := strings.Cut(part, "x")
		if !ok {
			return nil, fmt.Errorf("step %q: want RATExDURATION such as 8x30s", part)
		}
		rate, err := strconv.ParseFloat(r, 64)
		if err != nil || rate < 0 {
			return nil, fmt.Errorf("step %q: rate must be a number >= 0", part)
		}
		dur, err := time.ParseDuration(d)
		if err != nil || dur <= 0 {
			return nil, fmt.Errorf("step %q: duration must be positive, such as 30s", part)
		}
		out = append(out, Step{rate, dur})
	}
	if len(out) == 0 {
		return nil, ErrNoSteps
	}
	return out, nil
}

// Sample is one second of a profile run, as the client and the controller saw it.
type Sample struct {
	T        time.Duration // since the profile started, at the end of the second
	Rate     float64       // the profile's rate in this second
	Claims   int           // claims that finished in this second
	Errors   int
	Warm     float64 // the controller's warm and waited counts in this second
	Waited   float64
	Target   int
	Ready    int
	Creating int // creating + warming
}

// StepsSummary sums a profile run up.
type StepsSummary struct {
	Claims, Errors int
	// WarmLast10 is the warm share of the claims in the last 10 s of load.
	WarmLast10 float64
	// WarmAll is the warm share of every claim of the run.
	WarmAll   float64
	MaxTarget int
	// IdleSandboxSeconds integrates the ready count over the whole run.
	IdleSandboxSeconds float64
	// BackTo is how long after the last claim the target fell to the floor
	// given to Steps (-1 when it did not within the run).
	BackTo time.Duration
	Floor  int
}

// Line is the summary as key=value pairs.
func (s StepsSummary) Line() string {
	back := "never"
	if s.BackTo >= 0 {
		back = strconv.FormatFloat(s.BackTo.Seconds(), 'f', 1, 64)
	}
	return fmt.Sprintf("mode=steps claims=%d errors=%d warm_last10_pct=%.1f warm_all_pct=%.1f max_target=%d idle_sandbox_s=%.0f back_to_%d_after_s=%s",
		s.Claims, s.Errors, 100*s.WarmLast10, 100*s.WarmAll, s.MaxTarget, s.IdleSandboxSeconds, s.Floor, back)
}

// Header and Row print samples as a table.
const sampleHeader = "   t  rate  claims  errors  warm  waited  target  ready  creating"

func (s Sample) row() string {
	return fmt.Sprintf("%4.0f  %4.1f  %6d  %6d  %4.0f  %6.0f  %6d  %5d  %8d",
		s.T.Seconds(), s.Rate, s.Claims, s.Errors, s.Warm, s.Waited, s.Target, s.Ready, s.Creating)
}

// Steps runs the profile, then keeps sampling for tail, printing one row
// per second to out. floor is the target the pool should fall back to
// after the load (for BackTo).
func (c *Client) Steps(ctx context.Context, steps []Step, tail time.Duration, floor int, out io.Writer) (StepsSummary, []Sample, error) {
	var (
		mu           sync.Mutex
		claims, errs int
		total        time.Duration
		hasLoad      bool
		loadEnd      time.Duration
	)
	for _, st := range steps {
		if st.Rate > 0 {
			hasLoad = true
			loadEnd = total + st.For
		}
		total += st.For
	}
	rateAt := func(t time.Duration) float64 {
		var at time.Duration
		for _, st := range steps {
			if t < at+st.For {
				return st.Rate
			}
			at += st.For
		}
		return 0
	}
	prev, err := c.Metrics(ctx)
	if err != nil {
		return StepsSummary{}, nil, fmt.Errorf("read counters: %w", err)
	}
	start := time.Now()
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for _, st := range steps {
			c.openLoop(ctx, st.Rate, st.For, func(_ time.Time, err error) {
				mu.Lock()
				claims++
				if err != nil {
					errs++
				}
				mu.Unlock()
			})
		}
	}()
	fmt.Fprintln(out, sampleHeader)
	var (
		samples    []Sample
		sum        StepsSummary
		lastClaims int
		lastErrs   int
		prevAt     = start
	)
	sum.Floor, sum.BackTo = floor, -1
	for i := 1; ; i++ {
		sleepUntil(ctx, start.Add(time.Duration(i)*time.Second))
		if ctx.Err() != nil {
			break
		}
		m, err := c.Metrics(ctx)
		if err != nil {
			continue
		}
		now := time.Now()
		mu.Lock()
		s := Sample{T: now.Sub(start), Rate: rateAt(time.Duration(i-1) * time.Second),
			Claims: claims - lastClaims, Errors: errs - lastErrs}
		lastClaims, lastErrs = claims, errs
		mu.Unlock()
		s.Warm, s.Waited = m[SeriesWarm]-prev[SeriesWarm], m[SeriesWaited]-prev[SeriesWaited]
		s.Target, s.Ready = int(m[SeriesTarget]), int(m[SeriesReady])
		s.Creating = int(m[SeriesCreating] + m[SeriesWarming])
		sum.IdleSandboxSeconds += float64(s.Ready) * now.Sub(prevAt).Seconds()
		prev, prevAt = m, now
		samples = append(samples, s)
		fmt.Fprintln(out, s.row())
		if s.T >= loadEnd && sum.BackTo < 0 && s.Target <= floor && hasLoad {
			sum.BackTo = s.T - loadEnd
		}
		if s.T >= total+tail {
			break
		}
	}
	<-loadDone
	mu.Lock()
	sum.Claims, sum.Errors = claims, errs
	mu.Unlock()
	var warm, waited, w10, d10 float64
	for _, s := range samples {
		warm += s.Warm
		waited += s.Waited
		sum.MaxTarget = max(sum.MaxTarget, s.Target)
		if s.T > loadEnd-10*time.Second && s.T <= loadEnd+time.Second/2 {
			w10 += s.Warm
			d10 += s.Waited
		}
	}
	sum.WarmAll, sum.WarmLast10 = share(warm, waited), share(w10, d10)
	return sum, samples, ctx.Err()
}

func share(warm, waited float64) float64 {
	if warm+waited == 0 {
		return math.NaN()
	}
	return warm / (warm + waited)
}
