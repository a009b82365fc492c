package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/claimload"
	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// TestAutosizeFollowsAClaimLoad runs the real binary with --autosize under a
// claim load from the load tool: the target rises with the load, never
// passes --max-size, and falls back to --min-size after the window.
func TestAutosizeFollowsAClaimLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary under load for ~20 s")
	}
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	// --warmup: with the agent a bare creation takes ~3 ms, and a pool needs no
	// headroom for that; the issue sizes against sandboxes that take time.
	ctl := startRun(t, env, "--autosize", "--min-size", "2", "--max-size", "12", "--autosize-window", "3s", "--warmup", "1s",
		"--price-per-hour", "0.36", "--health-every", "500ms", "--listen", "127.0.0.1:0")
	var base string
	testkit.Eventually(t, 30*time.Second, "the API address in the log", func() bool {
		m := apiAddrRE.FindStringSubmatch(ctl.logs.String())
		if m != nil {
			base = m[1]
		}
		return base != ""
	})
	c := claimload.NewClient(base)
	ctx := context.Background()
	metric := func(name string) float64 {
		t.Helper()
		m, err := c.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m[name]
	}
	testkit.Eventually(t, 30*time.Second, "2 ready at the floor", func() bool {
		return metric(claimload.SeriesReady) == 2 && metric(claimload.SeriesTarget) == 2
	})
	if metric("sandboxpool_autosize_enabled") != 1 || metric("sandboxpool_cost_per_hour") <= 0 {
		t.Fatalf("autosize or cost missing from /metrics")
	}
	// check, another process with neither flag, shows the controller's.
	if r := cli(t, env, "check"); !strings.Contains(r.stdout, "autosize on: target 2 (auto: ") ||
		!strings.Contains(r.stdout, " sandboxes at 0.36), idle ") {
		t.Fatalf("check: exit %d, want the controller's autosize and cost:\n%s%s", r.code, r.stdout, r.stderr)
	}

	// 6 claims/s for 4 s, while watching the target.
	var peak float64
	done := make(chan claimload.Result, 1)
	go func() {
		r, _ := c.Rate(ctx, 6, 4*time.Second)
		done <- r
	}()
	var res claimload.Result
	for loaded := true; loaded; {
		select {
		case res = <-done:
			loaded = false
		case <-time.After(200 * time.Millisecond):
			peak = max(peak, metric(claimload.SeriesTarget))
		}
	}
	if res.Errors > 0 || res.Claims != 24 {
		t.Fatalf("load: %s", res.Line("rate"))
	}
	if peak <= 2 || peak > 12 {
		t.Fatalf("target peaked at %v under 6 claims/s: want above the floor 2, at most 12", peak)
	}
	last := time.Now()
	testkit.Eventually(t, 40*time.Second, "the target back to the floor", func() bool { return metric(claimload.SeriesTarget) == 2 })
	t.Logf("peak target %v; back to 2 %s after the last claim; %s", peak, time.Since(last).Round(100*time.Millisecond), res.Line("rate"))

	// A resize by hand turns autosize off, and says so.
	req, _ := http.NewRequest(http.MethodPut, base+"/v1/pool/size", strings.NewReader(`{"size":3}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("PUT size: %v %v", resp, err)
	}
	resp.Body.Close()
	if metric("sandboxpool_autosize_enabled") != 0 {
		t.Fatal("autosize still on after a resize by hand")
	}
	testkit.Eventually(t, 10*time.Second, "the log saying autosize went off", func() bool {
		return strings.Contains(ctl.logs.String(), "autosize off: target set to 3 by hand")
	})
	ctl.stop(t)
}
