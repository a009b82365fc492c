package pool_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// workloadBackend is the fake backend with a workload that flags set and
// the pool's stored one replaces; it records what each creation ran.
type workloadBackend struct {
	*pooltest.Backend
	mu   sync.Mutex
	cur  string
	made []string
}

func (b *workloadBackend) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	b.mu.Lock()
	b.made = append(b.made, b.cur)
	b.mu.Unlock()
	return b.Backend.Create(ctx, ttl)
}

func (b *workloadBackend) Workload() string { b.mu.Lock(); defer b.mu.Unlock(); return b.cur }

func (b *workloadBackend) UseWorkload(w string) error {
	if strings.HasPrefix(w, "newer:") {
		return errors.New("unknown field")
	}
	b.mu.Lock()
	b.cur = w
	b.mu.Unlock()
	return nil
}

func (b *workloadBackend) DescribeWorkload(w string) string { return "--cmd " + w }

func (b *workloadBackend) creations() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.made...)
}

// TestStoredWorkloadIsCreated: a process creates what the pool's stored
// workload says, whatever its own flags said, from the load that sees it
// on (a dashboard that took the pool over made its own built-in servers);
// the change is said once. One this build cannot read changes nothing and
// is a problem of the pool.
func TestStoredWorkloadIsCreated(t *testing.T) {
	var be *workloadBackend
	h := newHarnessOn(t, func(c *pool.Config) { c.Size = 2 }, func(f *pooltest.Backend) pool.Backend {
		be = &workloadBackend{Backend: f, cur: "own"}
		return be
	})
	ctx := context.Background()
	events, cancel := h.c.Subscribe(256)
	defer cancel()
	if err := h.st.SetWorkload(ctx, "pools"); err != nil { // stored by the pool's controller
		t.Fatal(err)
	}
	if err := h.c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	h.c.WaitIdle(ctx)
	if got := be.creations(); len(got) != 2 || got[0] != "pools" || got[1] != "pools" {
		t.Fatalf("creations ran %q, want the pool's workload twice", got)
	}
	if err := h.c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	said := 0
	for len(events) > 0 {
		if e := <-events; e.Kind == pool.EventWorkload {
			said++
			if want := "the pool's workload is --cmd pools now (was --cmd own)"; !strings.HasPrefix(e.Message, want) {
				t.Errorf("event %q, want %q...", e.Message, want)
			}
		}
	}
	if said != 1 {
		t.Errorf("the change was said %d times, want once", said)
	}

	if err := h.st.SetWorkload(ctx, "newer:x"); err != nil {
		t.Fatal(err)
	}
	if err := h.c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if be.Workload() != "pools" {
		t.Errorf("an unreadable workload changed the backend's to %q", be.Workload())
	}
	found := false
	for _, p := range h.c.Problems() {
		found = found || (p.Kind == pool.ProblemBackend && strings.Contains(p.Message, "cannot read"))
	}
	if !found {
		t.Errorf("problems %+v: the unreadable workload is not one", h.c.Problems())
	}
}
