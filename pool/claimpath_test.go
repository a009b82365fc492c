package pool_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// A workload that exits fails its try at once, with its last lines in the
// event, instead of waiting out the health timeout.
func TestExitedWorkloadFailsAtOnce(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 1; c.CreateTries = 1 })
	h.be.ExitOnCreate = &pool.ExitInfo{Code: 3, Tail: "starting\nFATAL config missing\n"}
	events, cancel := h.c.Subscribe(64)
	defer cancel()
	if err := h.c.Maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.c.WaitIdle(context.Background()) // no clock advance: nothing waits on the health timeout
	for e := range events {
		if e.Kind != pool.EventCreateFailed {
			continue
		}
		if !strings.Contains(e.Tail, "FATAL config missing") || !strings.Contains(e.Message, "FATAL config missing") ||
			!strings.Contains(e.Err, "code 3") {
			t.Fatalf("failure event %+v: want the exit code and the workload's last line", e)
		}
		break
	}
	if live := h.be.Live(); len(live) != 0 {
		t.Fatalf("live %v: the exited sandbox was not terminated", live)
	}
}

// The backend's record of claims wins over a store that lost them: a claimed
// sandbox is never adopted back, never re-pooled and never terminated.
func TestClaimedStaysClaimedWhenTheStoreIsLost(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.pass()
	h.c.WaitIdle(ctx)
	got, err := h.c.Claim(ctx, pool.ClaimOptions{By: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	if by := h.be.ClaimedBy(got.ID); by != "cli" {
		t.Fatalf("backend record of %s: %q, want cli", got.ID, by)
	}
	// The store is lost: every entry gone.
	var ids []string
	for _, e := range h.stored().Entries {
		ids = append(ids, e.ID)
	}
	if _, err := h.st.Remove(ctx, ids...); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(time.Minute) // past the adoption grace
	h.pass()
	h.pass()
	h.c.WaitIdle(ctx)
	if slices.Contains(h.pooledIDs(), got.ID) || slices.Contains(h.be.Terms, got.ID) {
		t.Fatalf("claimed %s re-pooled %v or terminated %v", got.ID, h.pooledIDs(), h.be.Terms)
	}
	// An old copy of the store comes back with it pooled: it leaves the pool, alive.
	if err := h.st.Put(ctx, got.Ref); err != nil {
		t.Fatal(err)
	}
	h.pass()
	h.c.WaitIdle(ctx)
	if slices.Contains(h.pooledIDs(), got.ID) || slices.Contains(h.be.Terms, got.ID) || !slices.Contains(h.be.Live(), got.ID) {
		t.Fatalf("restored claimed %s: pooled %v, terminated %v", got.ID, h.pooledIDs(), h.be.Terms)
	}
	if n := len(h.pooledIDs()); n != 3 {
		t.Fatalf("pooled %d, want 3", n)
	}
}

// A slow log never slows a claim: async observers run on their own
// goroutine, and Close waits until they saw every event.
func TestSlowObserverDoesNotSlowClaims(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	release := make(chan struct{})
	seen := make(chan pool.EventKind, 1024)
	h.c.ObserveAsync(func(e pool.Event) {
		<-release
		seen <- e.Kind
	})
	h.pass()
	h.c.WaitIdle(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := h.c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "cli"})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a blocked observer held up a claim")
	}
	close(release)
	h.c.Close()
	close(seen)
	var kinds []pool.EventKind
	for k := range seen {
		kinds = append(kinds, k)
	}
	if !slices.Contains(kinds, pool.EventClaimed) {
		t.Fatalf("the async observer missed the claim: %v", kinds)
	}
}

func TestNextCreationLimit(t *testing.T) {
	best := time.Second
	for _, tc := range []struct {
		name        string
		limit, most int
		took        time.Duration
		ok          bool
		want        int
	}{
		{"quick grows", 4, 20, best, true, 5},
		{"quick at the edge grows", 4, 20, 2*best + 250*time.Millisecond, true, 5},
		{"just past quick holds", 4, 20, 2*best + 250*time.Millisecond + 1, true, 4},
		{"slow at the edge holds", 8, 20, 4*best + time.Second, true, 8},
		{"slow cuts a quarter", 16, 20, 4*best + time.Second + 1, true, 12},
		{"slow cuts at least one", 13, 20, time.Hour, true, 10},
		{"slow never below the initial limit", 10, 20, time.Hour, true, 10},
		{"slow below the initial limit holds", 4, 20, time.Hour, true, 4},
		{"never above max", 20, 20, best, true, 20},
		{"failure halves", 9, 20, 0, false, 4},
		{"failure goes below the initial limit", 2, 20, 0, false, 1},
		{"never below one", 1, 20, 0, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pool.NextCreationLimit(tc.limit, tc.most, tc.took, best, tc.ok); got != tc.want {
				t.Fatalf("got %d, want %d", got, tc.want)
			}
		})
	}
}
