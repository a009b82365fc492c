package pool_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// rollBackend is the workload backend whose List says what each sandbox
// runs, as the local agent's and Modal's do.
type rollBackend struct {
	*workloadBackend
	mu  sync.Mutex
	ran map[string]string
}

func (b *rollBackend) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	w := b.Workload()
	ref, err := b.workloadBackend.Create(ctx, ttl)
	if err == nil {
		b.mu.Lock()
		b.ran[ref.ID] = w
		b.mu.Unlock()
		ref.Workload = w
	}
	return ref, err
}

func (b *rollBackend) List(ctx context.Context) ([]pool.Ref, error) {
	refs, err := b.workloadBackend.List(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range refs {
		refs[i].Workload = b.ran[refs[i].ID]
	}
	return refs, err
}

// TestWorkloadChangeIsRolledAtItsPace: after a workload change the old
// pooled sandboxes are replaced a quarter of the target at a time, each
// only once a replacement is ready: every pass leaves at least the target
// good in the pool, and never more than the surge of old ones goes at once.
func TestWorkloadChangeIsRolledAtItsPace(t *testing.T) {
	var be *rollBackend
	h := newHarnessOn(t, func(c *pool.Config) { c.Size = 8 }, func(f *pooltest.Backend) pool.Backend {
		be = &rollBackend{workloadBackend: &workloadBackend{Backend: f, cur: "a"}, ran: map[string]string{}}
		return be
	})
	events, cancel := h.c.Subscribe(1024)
	defer cancel()
	h.pass()
	if n := len(h.pooledIDs()); n != 8 {
		t.Fatalf("pooled %d, want 8", n)
	}
	if err := be.UseWorkload("b"); err != nil {
		t.Fatal(err)
	}
	runs := func() (old, cur int) {
		be.mu.Lock()
		defer be.mu.Unlock()
		for _, id := range h.pooledIDs() {
			if be.ran[id] == "a" {
				old++
			} else {
				cur++
			}
		}
		return old, cur
	}
	wasOld := 8
	for pass := 0; ; pass++ {
		if pass > 20 {
			t.Fatalf("still %d old after 20 passes", wasOld)
		}
		h.pass()
		old, cur := runs()
		if old+cur < 8 {
			t.Fatalf("pass %d: %d old and %d new pooled: fewer than the target", pass, old, cur)
		}
		if wasOld-old > 2 {
			t.Fatalf("pass %d: %d old ones went at once, want at most 2 (a quarter of 8)", pass, wasOld-old)
		}
		wasOld = old
		// What check and the API show meanwhile.
		switch ro := h.c.Snapshot().Rollout; {
		case old > 0 && (ro.Old != old || ro.From != "--cmd a" || ro.Replacing < 1 || ro.Replacing > 2):
			t.Fatalf("pass %d: %d old pooled, the snapshot says %+v", pass, old, ro)
		case old == 0 && ro != (pool.RolloutStatus{}):
			t.Fatalf("pass %d: none old, the snapshot says %+v", pass, ro)
		}
		if old == 0 && cur == 8 {
			break
		}
	}
	if n := be.CreateCalls(); n != 16 {
		t.Fatalf("%d creations, want 16 (8, then 8 replacements)", n)
	}
	replaced, said := 0, 0
	deadline := time.After(10 * time.Second) // terminations end in the background
	for replaced < 8 || said < 2 {
		select {
		case e := <-events:
			switch {
			case e.Kind == pool.EventTerminated && e.Reason == pool.ReasonReplaced:
				replaced++
			case e.Kind == pool.EventWorkload:
				said++
			}
		case <-deadline:
			t.Fatalf("%d replaced, %d workload events; want 8 and 2 (start, end)", replaced, said)
		}
	}
}
