package pool_test

import (
	"context"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// hungCreate makes every new sandbox's probes hang: its creation stays
// warming until cancelled.
type hungCreate struct{ *pooltest.Backend }

func (h hungCreate) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	r, err := h.Backend.Create(ctx, ttl)
	if err == nil {
		h.SetHung(r.ID)
	}
	return r, err
}

// A creation cut short by the controller stopping terminates its sandbox as
// cancelled, not failed: run's log said "terminated (failed)" for each
// sandbox still warming when it stopped, right after "stopping; sandboxes
// keep running", as if they had never got healthy.
func TestCreationCancelledAtStopSaysSo(t *testing.T) {
	h := newHarnessOn(t, func(c *pool.Config) { c.Size = 1 }, func(b *pooltest.Backend) pool.Backend { return hungCreate{b} })
	var log eventLog
	h.c.Observe(log.add)
	if err := h.c.Maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, waitLong, "a sandbox warming", func() bool { return len(h.be.Live()) == 1 })
	h.c.Close()
	terms := log.of(pool.EventTerminated, "")
	if len(terms) != 1 || terms[0].Reason != pool.ReasonCancelled {
		t.Fatalf("terminations %+v, want one, reason %q", terms, pool.ReasonCancelled)
	}
	if n := len(log.of(pool.EventCreateFailed, "")); n != 0 {
		t.Errorf("%d create_failed events, want none", n)
	}
	if live := h.be.Live(); len(live) != 0 {
		t.Errorf("live after stop: %v", live)
	}
}
