package pool_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// revertHarness is a pool of 2 at its target on the fake backend, listed
// in full at each pass or (changes) as the local agent is, by changes since
// the last list.
func revertHarness(t *testing.T, changes bool) *harness {
	t.Helper()
	var wrap func(*pooltest.Backend) pool.Backend
	if changes {
		wrap = func(be *pooltest.Backend) pool.Backend { return pooltest.Changes{Backend: be} }
	}
	h := newHarnessOn(t, func(c *pool.Config) { c.Size = 2 }, wrap)
	h.pass()
	testkit.Eventually(t, waitLong, "2 pooled", func() bool { return len(h.pooledIDs()) == 2 })
	return h
}

// stateIn is id's state in the controller's view ("" when it has no row).
func stateIn(c *pool.Controller, id string) pool.State {
	for _, s := range c.Snapshot().Sandboxes {
		if s.ID == id {
			return s.State
		}
	}
	return ""
}

// An old copy of the store put back lists as pooled a sandbox this process
// claimed since: the pool view never shows it pooled, the next pass takes
// it out of the store by the backend's record of the claim, and no claim
// hands it out again (chaos seed 311: 'claimed, then back in the pool').
func TestOldStorePutBackKeepsAClaimedSandboxOutOfThePool(t *testing.T) {
	for _, changes := range []bool{false, true} {
		name := "full lists"
		if changes {
			name = "lists of changes"
		}
		t.Run(name, func(t *testing.T) {
			h := revertHarness(t, changes)
			c, be, st := h.c, h.be, h.st
			ctx := context.Background()
			old := h.stored()
			cl, err := c.Claim(ctx, pool.ClaimOptions{By: "cli"})
			if err != nil {
				t.Fatal(err)
			}
			c.WaitIdle(ctx)
			h.clk.Advance(time.Second)
			h.pass() // a list of changes now starts after the claim
			st.PutBack(old)
			if _, err := c.Refresh(ctx, false); err != nil { // the store poll's load
				t.Fatal(err)
			}
			if s := stateIn(c, cl.ID); s != "" && s != pool.StateClaimed {
				t.Fatalf("claimed %s is %s in the pool view after an old store was put back", cl.ID, s)
			}
			h.pass()
			s := h.stored()
			if slices.ContainsFunc(s.Pooled(), func(e pool.Entry) bool { return e.ID == cl.ID }) {
				t.Fatalf("claimed %s still pooled in the store after a pass", cl.ID)
			}
			if s := stateIn(c, cl.ID); s != "" && s != pool.StateClaimed {
				t.Fatalf("claimed %s is %s in the pool view after a pass", cl.ID, s)
			}
			for range len(s.Pooled()) {
				got, err := c.Claim(ctx, pool.ClaimOptions{By: "cli"})
				if err != nil {
					t.Fatal(err)
				}
				if got.ID == cl.ID {
					t.Fatalf("%s handed out twice", cl.ID)
				}
			}
			if slices.Contains(be.Terminated(), cl.ID) || be.ClaimedBy(cl.ID) != "cli" {
				t.Fatalf("claimed %s: terminated %v, the backend's record says claimed by %q", cl.ID, be.Terminated(), be.ClaimedBy(cl.ID))
			}
		})
	}
}

// A sandbox another process claimed and gave back (its claimer left during
// the health check, before the backend's record) is pooled again: the pass
// finds the backend's record unclaimed and the view takes it back.
func TestGivenBackElsewhereIsPooledAgain(t *testing.T) {
	h := revertHarness(t, true)
	c, st, clk := h.c, h.st, h.clk
	ctx := context.Background()
	e, _, ok, err := st.Take(ctx, pool.TakeRequest{MinExpiresAt: clk.Now(), ClaimedBy: "cli", Now: clk.Now()})
	if err != nil || !ok {
		t.Fatalf("take: %v %v", ok, err)
	}
	if _, err := c.Refresh(ctx, false); err != nil {
		t.Fatal(err)
	}
	if s := stateIn(c, e.ID); s != pool.StateClaimed {
		t.Fatalf("%s taken by another process is %q in the view", e.ID, s)
	}
	if _, err := st.Remove(ctx, e.ID); err != nil { // given back
		t.Fatal(err)
	}
	if err := st.Put(ctx, e.Ref); err != nil {
		t.Fatal(err)
	}
	clk.Advance(5 * time.Second) // past the claim record's grace
	for range 2 {
		h.pass()
	}
	if _, err := c.Refresh(ctx, false); err != nil {
		t.Fatal(err)
	}
	if s := stateIn(c, e.ID); s != pool.StateReady {
		t.Fatalf("%s given back is %q in the view, want ready", e.ID, s)
	}
}

// An old copy of the store put back lists as pooled a sandbox this process
// saw claimed and end since (its claimer terminated it, the claim left the
// record): it had ended already, and the pool says so, not that a pooled
// sandbox died (chaos seeds 1796227459548290785, 1796225683546591247: a
// claimed sandbox reported 'died: how is unknown' by the controller).
func TestOldStorePutBackOfAClaimThatEndedIsNoDeath(t *testing.T) {
	h := revertHarness(t, true)
	c, be, st := h.c, h.be, h.st
	ctx := context.Background()
	var mu sync.Mutex
	var events []pool.Event
	c.Observe(func(e pool.Event) { mu.Lock(); events = append(events, e); mu.Unlock() })
	old := h.stored()
	cl, err := c.Claim(ctx, pool.ClaimOptions{By: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitIdle(ctx)
	// Its claimer is done with it: `sandboxpool terminate ID` elsewhere.
	if _, err := st.Remove(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	be.Kill(cl.ID)
	h.clk.Advance(time.Second)
	h.pass() // the claim's end leaves the record
	st.PutBack(old)
	if _, err := c.Refresh(ctx, false); err != nil {
		t.Fatal(err)
	}
	if s := stateIn(c, cl.ID); s != "" && s != pool.StateClaimed {
		t.Fatalf("%s, claimed and ended, is %s in the pool view after an old store was put back", cl.ID, s)
	}
	h.pass()
	if slices.ContainsFunc(h.stored().Pooled(), func(e pool.Entry) bool { return e.ID == cl.ID }) {
		t.Fatalf("%s, claimed and ended, still pooled in the store after a pass", cl.ID)
	}
	mu.Lock()
	defer mu.Unlock()
	said := false
	for _, e := range events {
		if e.SandboxID != cl.ID {
			continue
		}
		switch e.Kind {
		case pool.EventTerminated, pool.EventHealthFailed, pool.EventExpired:
			t.Errorf("%s, claimed and ended before the old store came back: %s %s %s", cl.ID, e.Kind, e.Reason, e.Message)
		case pool.EventStoreChanged:
			said = said || strings.Contains(e.Message, "had ended already")
		}
	}
	if !said {
		t.Errorf("no event says %s had ended already", cl.ID)
	}
}
