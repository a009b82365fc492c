package pool

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// A burst's claims leave gaps between them: the gate stays busy for
// takeQuiet after the last claim left, and a backfill waiting on it goes
// once that quiet has passed, whatever the injected clock does.
func TestTakeGateBusyUntilQuietAfterTheLastClaim(t *testing.T) {
	clk := clockwork.NewFakeClock() // never moved: the quiet is real time
	var g takeGate
	if g.busy() {
		t.Fatal("busy before any claim")
	}
	g.enter()
	if !g.busy() {
		t.Fatal("not busy with a claim in flight")
	}
	g.leave()
	left := time.Now()
	if !g.busy() {
		t.Fatal("not busy right after a claim left: a burst's next claim is a round trip away")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.waitIdle(context.Background(), clk, time.Second)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the backfill still waits long after the quiet")
	}
	if waited := time.Since(left); waited < takeQuiet {
		t.Fatalf("the backfill went %s after the claim, within the quiet", waited)
	}
	if g.busy() {
		t.Fatal("busy after the quiet")
	}
}

// Claims in flight hold a waiting backfill back up to its bound (on the
// injected clock), not longer.
func TestTakeGateWaitIsBounded(t *testing.T) {
	clk := clockwork.NewFakeClock()
	var g takeGate
	g.enter()
	defer g.leave()
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.waitIdle(context.Background(), clk, 20*time.Millisecond)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := clk.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	clk.Advance(20 * time.Millisecond)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the backfill waited past its bound")
	}
}
