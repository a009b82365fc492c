package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// TestRefusedRunChangesNothing: a second `run` on a pool that a controller
// maintains refuses, and its --size and timing change nothing. Before, it
// stored them on its way to the refusal: the running controller shrank to
// the refused --size and, judging by the stored --use-duration 50m, called
// its whole pool expiring and replaced it.
func TestRefusedRunChangesNothing(t *testing.T) {
	env, c, a := startPool(t, 2, "--ttl", "2m", "--use-duration", "10s")
	r := cli(t, env, "run", "--size", "4", "--ttl", "1h", "--use-duration", "50m", "--listen", "")
	if r.code != 1 || !strings.Contains(r.stderr, "already maintained by pid") {
		t.Fatalf("second run: exit %d, want 1 naming the holder; stderr:\n%s", r.code, r.stderr)
	}
	a.passes(2) // the controller has read the store since
	r = cli(t, env, "check", "--json")
	var v httpapi.PoolView
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("check --json: %v\n%s%s", err, r.stdout, r.stderr)
	}
	if v.Target != 2 || v.Counts.Ready != 2 || v.Counts.Expiring != 0 {
		t.Errorf("after a refused run: target %d, ready %d, expiring %d; want 2, 2, 0 (the refused run's --size 4 and --use-duration 50m stored)", v.Target, v.Counts.Ready, v.Counts.Expiring)
	}
	if n := countEvents(c.logs.String(), "timing"); n != 0 {
		t.Errorf("the controller took another timing (%d timing events):\n%s", n, c.logs.String())
	}
}
