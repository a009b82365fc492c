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

// leaseClock is a settable clock for the lease's records.
type leaseClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *leaseClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *leaseClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// A claim's backfill never takes the pool from a controller that is only
// late (a slow control plane, a paused process): not within a grace of 2x
// the stale limit, nor while a controller waits for the lease; and a
// backfill holding the lease hands it over to a waiting controller at its
// next heartbeat. Another controller still takes a stale lease over at 3
// heartbeats (a restart after kill -9). The heartbeat itself never ticks
// here (1h): the fake clock says how old each record is, beatNow beats.
func TestLeaseBackfillDefersToController(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	const hb = time.Hour
	clk := &leaseClock{t: time.Now()}
	open3 := func() *Store {
		_, s := open(t, Options{Pool: "defer", LeaseHeartbeat: hb})
		s.c.leaseNow = clk.Now
		return s
	}
	ctlStore, claimA, claimB := open3(), open3(), open3()
	ctl := pool.LeaseRecord{Host: "vm", Pid: 1, Role: pool.RoleController, Command: "run"}
	backfillA := pool.LeaseRecord{Host: "vm", Pid: 2, Role: pool.RoleBackfill, Command: "claim"}
	backfillB := pool.LeaseRecord{Host: "vm", Pid: 3, Role: pool.RoleBackfill, Command: "claim"}
	heldBy := func(err error) pool.LeaseRecord {
		t.Helper()
		var held *pool.LeaseHeldError
		if !errors.As(err, &held) {
			t.Fatalf("acquire: %v, want the lease held", err)
		}
		return held.Holder
	}

	lc, err := ctlStore.AcquireLease(ctx, ctl)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(4 * hb) // the controller's heartbeat is late: stale, not gone
	if h, _ := claimA.LeaseHolder(ctx); !h.IsZero() {
		t.Fatalf("holder of a stale lease: %v", h)
	}
	if _, err := claimA.AcquireLease(ctx, backfillA); !heldBy(err).Same(ctl) {
		t.Fatalf("a backfill was refused naming %v, want the late controller", heldBy(err))
	}

	// Gone for good (past the grace): a claim backfills.
	clk.Add(3 * hb)
	la, err := claimA.AcquireLease(ctx, backfillA)
	if err != nil {
		t.Fatalf("backfill of a pool whose controller is gone: %v", err)
	}
	lc.(*Lease).beatNow() // the old controller wakes up: it lost the lease
	waitLost(t, lc.(*Lease))

	// It asks for the pool back: refused for now, but the backfill hands it
	// over at its next beat, and no other backfill takes it meanwhile.
	if got := heldBy(mustFail(ctlStore.AcquireLease(ctx, ctl))); !got.Same(backfillA) {
		t.Fatalf("controller refused naming %v, want the backfill", got)
	}
	la.(*Lease).beatNow()
	waitLost(t, la.(*Lease))
	if h, _ := claimB.LeaseHolder(ctx); !h.IsZero() {
		t.Fatalf("holder after the backfill handed over: %v", h)
	}
	if got := heldBy(mustFail(claimB.AcquireLease(ctx, backfillB))); !got.Same(ctl) {
		t.Fatalf("another backfill refused naming %v, want the waiting controller", got)
	}
	lc2, err := ctlStore.AcquireLease(ctx, ctl)
	if err != nil {
		t.Fatalf("the waiting controller: %v", err)
	}
	defer lc2.Release()

	// A restart of the controller (kill -9) takes a stale lease at 3 beats.
	lc2.(*Lease).abandon()
	clk.Add(3*hb + time.Second)
	restart := ctl
	restart.Pid = 4
	if _, err := claimB.AcquireLease(ctx, backfillB); !heldBy(err).Same(ctl) {
		t.Fatalf("a backfill took a controller's lease 3 beats old")
	}
	l4, err := claimB.AcquireLease(ctx, restart)
	if err != nil {
		t.Fatalf("a restarted controller: %v", err)
	}
	l4.Release()
	la.Release()
	lc.Release()
}

func mustFail(_ pool.Lease, err error) error { return err }

func waitLost(t *testing.T, l *Lease) {
	t.Helper()
	select {
	case <-l.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("lease not lost")
	}
}

// A process that won the election for an epoch and died before writing its
// lease record (a claim killed mid-acquire) does not hold the pool for ever:
// past the stale limit its epoch is skipped (TestChaosModal: run waited 2
// minutes for "a claim's backfill" that was gone, then exited).
func TestLeaseElectionWinnerThatDiedIsSkipped(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	const hb = time.Hour
	clk := &leaseClock{t: time.Now()}
	_, s := open(t, Options{Pool: "elect", LeaseHeartbeat: hb})
	s.c.leaseNow = clk.Now
	dead := pool.LeaseRecord{Host: "vm", Pid: 9, Role: pool.RoleBackfill, Since: clk.Now()}
	if err := s.put(ctx, electPart(1), encode(electRec{Holder: dead, Nonce: "dead"})); err != nil {
		t.Fatal(err)
	}
	ctl := pool.LeaseRecord{Host: "vm", Pid: 1, Role: pool.RoleController}
	var held *pool.LeaseHeldError
	if _, err := s.AcquireLease(ctx, ctl); !errors.As(err, &held) || held.Holder.Pid != 9 {
		t.Fatalf("acquire while the winner may still write its record: %v", err)
	}
	clk.Add(3*hb + time.Second)
	l, err := s.AcquireLease(ctx, ctl)
	if err != nil {
		t.Fatalf("acquire after the winner died: %v", err)
	}
	defer l.Release()
	if h, _ := s.LeaseHolder(ctx); h.Pid != 1 {
		t.Fatalf("holder %+v", h)
	}
}

// Modal clears the queue under a live holder and a newcomer (a dashboard
// starting then) takes the empty lease before the holder's next beat: the
// holder keeps the pool (its records vanished, nobody superseded it) and
// the newcomer learns at its next beat that it lost (TestChaosModal seed
// 202: the run exited "already maintained by ;").
func TestLeaseKeptThroughQueueLoss(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	hb := 100 * time.Millisecond
	_, a := open(t, Options{Pool: "qloss", LeaseHeartbeat: hb})
	_, b := open(t, Options{Pool: "qloss", LeaseHeartbeat: hb})
	holder := pool.LeaseRecord{Host: "vm", Pid: 1, Role: pool.RoleController, Command: "run"}
	la, err := a.AcquireLease(ctx, holder)
	if err != nil {
		t.Fatal(err)
	}
	defer la.Release()
	testkit.Eventually(t, 10*time.Second, "2 heartbeats", func() bool { return la.(*Lease).beats.Load() >= 2 })

	f.ClearQueue(QueueName("qloss"))
	newcomer := pool.LeaseRecord{Host: "vm", Pid: 2, Role: pool.RoleController, Command: "dashboard"}
	lb, err := b.AcquireLease(ctx, newcomer)
	if err == nil {
		defer lb.Release()
		waitLost(t, lb.(*Lease))
	} else if held := (*pool.LeaseHeldError)(nil); !errors.As(err, &held) || !held.Holder.Same(holder) {
		t.Fatalf("newcomer during the loss: %v, want the lease or a refusal naming the holder", err)
	}
	beats := la.(*Lease).beats.Load()
	testkit.Eventually(t, 10*time.Second, "3 more heartbeats", func() bool { return la.(*Lease).beats.Load() >= beats+3 })
	select {
	case <-la.(*Lease).Lost():
		t.Fatal("the live holder lost its lease to a newcomer that found the lease partition empty")
	default:
	}
	if h, err := b.LeaseHolder(ctx); err != nil || !h.Same(holder) {
		t.Fatalf("holder after the loss %v (%v), want %v", h, err, holder)
	}
}
