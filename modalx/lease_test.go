package modalx

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
)

func TestLease(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	hb := 100 * time.Millisecond
	_, a := open(t, Options{Pool: "lease", LeaseHeartbeat: hb})
	_, b := open(t, Options{Pool: "lease", LeaseHeartbeat: hb})

	if h, err := a.LeaseHolder(ctx); err != nil || !h.IsZero() {
		t.Fatalf("holder of a new pool: %q %v", h, err)
	}
	la, err := a.AcquireLease(ctx, pool.LeaseRecord{Host: "host-a:1"})
	if err != nil {
		t.Fatal(err)
	}
	// Held and kept alive by the heartbeat well past the stale limit (3 beats).
	testkit.Eventually(t, 10*time.Second, "5 heartbeats", func() bool { return la.(*Lease).beats.Load() >= 5 })
	var held *pool.LeaseHeldError
	if _, err := b.AcquireLease(ctx, pool.LeaseRecord{Host: "host-b:2"}); !errors.As(err, &held) || held.Holder.String() != "host-a:1" {
		t.Fatalf("second acquire: %v", err)
	}
	if h, _ := b.LeaseHolder(ctx); h.String() != "host-a:1" {
		t.Fatalf("holder %q", h)
	}

	// Release frees it at once.
	if err := la.Release(); err != nil {
		t.Fatal(err)
	}
	if h, _ := b.LeaseHolder(ctx); !h.IsZero() {
		t.Fatalf("holder after release %q", h)
	}
	lb, err := b.AcquireLease(ctx, pool.LeaseRecord{Host: "host-b:2"})
	if err != nil {
		t.Fatal(err)
	}

	// B dies (no release): the lease is held until 3 heartbeats are missed.
	lb.(*Lease).abandon()
	if _, err := a.AcquireLease(ctx, pool.LeaseRecord{Host: "host-a:3"}); !errors.As(err, &held) {
		t.Fatalf("acquire of a fresh lease: %v", err)
	}
	waitStale(t, a)

	// Two controllers take the stale lease over at once: exactly one wins.
	_, c := open(t, Options{Pool: "lease", LeaseHeartbeat: hb})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won []pool.Lease
	var lost []pool.LeaseRecord
	for i, s := range []*Store{a, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := s.AcquireLease(ctx, pool.LeaseRecord{Host: []string{"host-a:3", "host-c:4"}[i]})
			mu.Lock()
			defer mu.Unlock()
			if errors.As(err, &held) {
				lost = append(lost, held.Holder)
			} else if err != nil {
				t.Error(err)
			} else {
				won = append(won, l)
			}
		}()
	}
	wg.Wait()
	if len(won) != 1 || len(lost) != 1 || !lost[0].Same(won[0].(*Lease).Holder()) {
		t.Fatalf("won %d, lost to %v", len(won), lost)
	}
	if h, _ := a.LeaseHolder(ctx); !h.Same(won[0].(*Lease).Holder()) {
		t.Fatalf("holder %q", h)
	}
	// The superseded holder notices on its next heartbeat (it was paused, not dead).
	_, d := open(t, Options{Pool: "lease", LeaseHeartbeat: hb})
	won[0].(*Lease).abandon()
	waitStale(t, d)
	ld, err := d.AcquireLease(ctx, pool.LeaseRecord{Host: "host-d:5"})
	if err != nil {
		t.Fatal(err)
	}
	defer ld.Release()
	select {
	case <-ld.(*Lease).Lost():
		t.Fatal("new holder lost its lease")
	case <-time.After(3 * hb):
	}
	if h, _ := a.LeaseHolder(ctx); h.String() != "host-d:5" {
		t.Fatalf("holder %q", h)
	}
}

// waitStale waits until s sees nobody holding the lease: its holder's
// heartbeats stopped 3 intervals ago.
func waitStale(t *testing.T, s *Store) {
	t.Helper()
	ctx := ctxT(t)
	testkit.Eventually(t, 10*time.Second, "the abandoned lease to go stale", func() bool {
		h, err := s.LeaseHolder(ctx)
		return err == nil && h.IsZero()
	})
}

func TestLeaseLostWhenSuperseded(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	hb := 100 * time.Millisecond
	_, a := open(t, Options{Pool: "lease2", LeaseHeartbeat: hb})
	_, b := open(t, Options{Pool: "lease2", LeaseHeartbeat: hb})
	la, err := a.AcquireLease(ctx, pool.LeaseRecord{Host: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer la.Release()
	// Same holder name from another process (a restart): it takes over, and
	// the old one learns it lost the lease.
	lb, err := b.AcquireLease(ctx, pool.LeaseRecord{Host: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Release()
	select {
	case <-la.(*Lease).Lost():
	case <-time.After(10 * hb):
		t.Fatal("superseded lease not marked lost")
	}
}
