package pool_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// laggingList is a backend whose list still shows terminated sandboxes, as
// Modal's does for a moment after SandboxTerminate.
type laggingList struct {
	*pooltest.Backend
	mu     sync.Mutex
	ghosts []pool.Ref
}

func (l *laggingList) Terminate(ctx context.Context, id string) error {
	l.mu.Lock()
	for _, r := range l.Backend.Live() {
		if r == id {
			refs, _ := l.Backend.List(ctx)
			for _, ref := range refs {
				if ref.ID == id {
					l.ghosts = append(l.ghosts, ref)
				}
			}
		}
	}
	l.mu.Unlock()
	return l.Backend.Terminate(ctx, id)
}

func (l *laggingList) List(ctx context.Context) ([]pool.Ref, error) {
	refs, err := l.Backend.List(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	return append(refs, l.ghosts...), err
}

// A sandbox this controller terminated that comes back into the store (a
// Modal queue rebuilt from the tags of what Modal still lists) is not
// terminated, said and counted a second time: its end was said once
// (chaos seed 1796225109444683116: 'terminated (cancelled)', then
// 'terminated (unhealthy)' for the same sandbox).
func TestTerminatedSandboxBackInTheStoreIsNotTerminatedTwice(t *testing.T) {
	var lag *laggingList
	h := newHarnessOn(t, func(c *pool.Config) { c.Size = 2 }, func(be *pooltest.Backend) pool.Backend {
		lag = &laggingList{Backend: be}
		return lag
	})
	ctx := context.Background()
	var mu sync.Mutex
	ends := map[string]int{}
	h.c.Observe(func(e pool.Event) {
		if e.Kind == pool.EventTerminated {
			mu.Lock()
			ends[e.SandboxID]++
			mu.Unlock()
		}
	})
	h.pass()
	testkit.Eventually(t, waitLong, "2 pooled", func() bool { return len(h.pooledIDs()) == 2 })
	if err := h.c.Resize(ctx, 1); err != nil {
		t.Fatal(err)
	}
	h.pass()
	testkit.Eventually(t, waitLong, "a shrink", func() bool { return len(h.be.Terminated()) > 0 })
	h.c.WaitIdle(ctx)
	gone := h.be.Terminated()
	if len(gone) != 1 {
		t.Fatalf("terminated %v after a shrink to 1, want one", gone)
	}
	// The rebuilt store pools it again: what its tags said.
	lag.mu.Lock()
	ref := lag.ghosts[0]
	lag.mu.Unlock()
	h.be.SetUnhealthy(ref.ID, true) // what a probe of a terminated one says
	if err := h.st.Put(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.Refresh(ctx, false); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		h.clk.Advance(time.Second)
		h.pass()
		h.c.WaitIdle(ctx)
	}
	testkit.Eventually(t, waitLong, "the store without it", func() bool { return !slices.Contains(h.pooledIDs(), ref.ID) })
	mu.Lock()
	defer mu.Unlock()
	if ends[gone[0]] != 1 {
		t.Fatalf("%s terminated %d times in the pool's events, want once (events: %v)", gone[0], ends[gone[0]], ends)
	}
}
