package ui

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// TestOverAServingController runs the dashboard over a controller that
// maintains the pool itself (Serve), as `sandboxpool dashboard` does: the
// UI shows the controller's next pass and never runs passes of its own;
// claims made elsewhere (the API) and sandboxes dying show through events.
func TestOverAServingController(t *testing.T) {
	clk := clockwork.NewFakeClockAt(t0)
	be := pooltest.NewBackend(clk)
	st := pooltest.NewStore()
	c, err := pool.New(pool.Options{Config: pool.DefaultConfig(), Backend: be, Store: st, Clock: clk, Checker: be.Checker})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- c.Serve(ctx, true) }()
	t.Cleanup(func() { cancel(); <-served; c.Close() })

	testkit.Eventually(t, waitLong, "3 ready under a controller", func() bool {
		s := c.Snapshot()
		return s.Role == "controller" && s.Counts[pool.StateReady] == 3 && !s.NextPass.IsZero()
	})
	u := startTUI(t, c, Options{Clock: clk, APIAddr: "127.0.0.1:7780"}, 100, 30)
	u.waitFor("ready 3", "next pass 0:30")

	// A claim through the API shows at once.
	got, err := c.Claim(ctx, pool.ClaimOptions{By: "api 127.0.0.1:5555"})
	if err != nil {
		t.Fatal(err)
	}
	u.waitFor("claimed by api 127.0.0.1:5555 (warm)", "◆ claimed")

	// A pooled sandbox dies: the next pass drops it and says so.
	var victim string
	for _, sb := range c.Snapshot().Sandboxes {
		if sb.State == pool.StateReady && sb.ID != got.ID {
			victim = sb.ID
			break
		}
	}
	be.Kill(victim)
	clk.Advance(time.Second) // it was created before the pass lists what runs
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	u.waitFor(victim + " died")
	m := u.final()
	if m.snap.Role != "controller" || m.maintaining {
		t.Fatalf("role %q, maintaining %v", m.snap.Role, m.maintaining)
	}
}
