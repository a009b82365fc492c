package modalx

import (
	"context"
	"fmt"
	"github.com/jonboulle/clockwork"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
)

// reservedCount is how many the holder has reserved in memory.
func reservedCount(s *Store) int {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.hold == nil {
		return 0
	}
	return len(s.hold.reserved)
}

// waitReserved loads (as the engine does every second) until the holder
// has n reserved.
func waitReserved(t *testing.T, s *Store, n int) {
	t.Helper()
	if !testkit.Until(10*time.Second, func() bool { load(t, s); return reservedCount(s) >= n }) {
		t.Fatalf("%d reserved after 10s, want %d", reservedCount(s), n)
	}
}

// reserving opens a pool of n sandboxes (5 minutes each) twice: s, whose
// lease l (released at the test's end, if not before) has it reserve
// sandboxes until it holds want, and other, another process's view of it.
func reserving(t *testing.T, o Options, n, want int) (s, other *Store, l pool.Lease) {
	t.Helper()
	b, s := open(t, o)
	_, other = open(t, o)
	fill(t, b, s, n, 5*time.Minute)
	l, err := s.AcquireLease(ctxT(t), pool.LeaseRecord{Host: "test", Pid: 1, Role: pool.RoleController})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Release() })
	waitReserved(t, s, want)
	return s, other, l
}

// TestReservedClaimOneRoundTrip: the lease holder serves a warm claim from
// its reservations with one RPC (the claim record) on the critical path;
// other processes see reserved sandboxes as pooled and never get them.
func TestReservedClaimOneRoundTrip(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	s, other, l := reserving(t, Options{Pool: "fast", LeaseHeartbeat: time.Second}, 8, maxReserved)
	if st := load(t, other); len(st.Pooled()) != 8 {
		t.Fatalf("another process sees %d pooled, want all 8 (reserved ones included)", len(st.Pooled()))
	}

	f.SetLatency(20 * time.Millisecond)
	f.ResetCounts()
	start := time.Now()
	got, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now().Add(time.Minute), ClaimedBy: "api", Now: time.Now()})
	took := time.Since(start)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	c := f.Counts()
	t.Logf("claim from a reservation: %s, %s", took.Round(time.Millisecond), fakemodal.FormatCounts(c))
	if c["QueuePut"] != 1 || took > 200*time.Millisecond {
		t.Errorf("claim: %s, RPCs %s: want one QueuePut on the critical path", took, fakemodal.FormatCounts(c))
	}
	waitClaimTags(t, f, got, "fast", "api")
	f.SetLatency(0)

	// Claims by the holder and by another process at once: all distinct,
	// and what the store says claimed is what they got.
	var mu sync.Mutex
	seen := map[string]string{got.ID: "holder"}
	var wg sync.WaitGroup
	for i, st := range []*Store{s, other, s, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				e, _, ok, err := st.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now().Add(time.Minute), ClaimedBy: fmt.Sprint("c", i), Now: time.Now()})
				if err != nil {
					t.Error(err)
					return
				}
				if !ok {
					return
				}
				mu.Lock()
				if prev, dup := seen[e.ID]; dup {
					t.Errorf("%s claimed twice: by %s and c%d", e.ID, prev, i)
				}
				seen[e.ID] = fmt.Sprint("c", i)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// What the holder still has reserved is pooled; the rest claimed.
	if err := l.Release(); err != nil { // waits for a reservation under way
		t.Fatal(err)
	}
	st := load(t, other)
	if n := len(st.Pooled()) + len(seen); n != 8 {
		t.Errorf("%d claimed + %d pooled, want 8 in all (pooled %v)", len(seen), len(st.Pooled()), entryIDs(st.Pooled()))
	}
	for _, e := range st.Pooled() {
		if _, dup := seen[e.ID]; dup {
			t.Errorf("%s claimed but still pooled", e.ID)
		}
	}
}

// TestReservationsSurviveKill: the holder dies (no release) with sandboxes
// reserved; the next holder inherits them once the dead one's claims can no
// longer land, and hands each out once.
func TestReservationsSurviveKill(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	// Reserving needs 200 ms left of the lease's validity (2 beats after
	// the last read that found it current): at 200 ms beats only a refill
	// tick within 200 ms of a beat could, and a CI machine's slow round
	// trips left none in 10 s. At 500 ms a tick has 800 ms.
	hb := 500 * time.Millisecond
	b, s := open(t, Options{Pool: "kill", LeaseHeartbeat: hb})
	fill(t, b, s, 6, 5*time.Minute)
	l, err := s.AcquireLease(ctx, pool.LeaseRecord{Host: "test", Pid: 1, Role: pool.RoleController})
	if err != nil {
		t.Fatal(err)
	}
	waitReserved(t, s, 3)
	e, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now().Add(time.Minute), ClaimedBy: "before", Now: time.Now()})
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	l.(*Lease).abandon() // kill -9

	_, s2 := open(t, Options{Pool: "kill", LeaseHeartbeat: hb})
	var l2 pool.Lease
	if !testkit.Until(10*time.Second, func() bool {
		l2, err = s2.AcquireLease(ctx, pool.LeaseRecord{Host: "test", Pid: 2, Role: pool.RoleController})
		return err == nil
	}) {
		t.Fatal(err)
	}
	defer l2.Release()
	// The new holder's view catches up with the queue within a few reads
	// (partitions are read incrementally); a loaded machine needs some.
	n := 0
	if !testkit.Until(10*time.Second, func() bool { n = len(load(t, s2).Pooled()); return n == 5 }) {
		t.Fatalf("after the takeover %d pooled, want 5 (2 reserved by the dead holder)", n)
	}
	got := map[string]bool{e.ID: true}
	if !testkit.Until(10*time.Second, func() bool {
		load(t, s2)
		x, _, ok, err := s2.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now().Add(time.Minute), ClaimedBy: "after", Now: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return len(got) == 6
		}
		if got[x.ID] {
			t.Fatalf("%s claimed twice", x.ID)
		}
		got[x.ID] = true
		return false
	}) {
		t.Fatalf("claimed %d of 6", len(got))
	}
	if st := load(t, s2); len(st.Pooled()) != 0 || len(claimedOf(st)) != 6 {
		t.Fatalf("after all claims: pooled %v, claimed %d", entryIDs(st.Pooled()), len(claimedOf(st)))
	}
}

var _ = context.Background

// Modal clears the queue while the holder has sandboxes reserved, before
// its heartbeat notices: another process rebuilds the queue from the tags
// at once. The reserved ones stay reserved (their tags say so), so the
// holder's claims from memory and the other's claims from the rebuilt pool
// never get the same sandbox.
func TestQueueClearedKeepsReservationsReserved(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	// No heartbeat within the test: the holder does not notice the loss.
	s, other, _ := reserving(t, Options{Pool: "clres", LeaseHeartbeat: time.Hour, LossSettle: 50 * time.Millisecond}, 8, maxReserved)
	s.rmu.Lock()
	reserved := entryIDs(s.hold.reserved)
	s.rmu.Unlock()
	testkit.Eventually(t, 5*time.Second, "reservation tags", func() bool {
		n := 0
		for _, sb := range f.Sandboxes() {
			if sb.Tags[TagReserved] != "" {
				n++
			}
		}
		return n == len(reserved)
	})

	f.ClearQueue(QueueName("clres"))
	st := loadSettled(t, other) // rebuilt from the tags
	if len(st.Entries) != 8 {
		t.Fatalf("rebuilt with %d entries, want 8", len(st.Entries))
	}
	seen := map[string]string{}
	got, err := takeAll(ctx, other, "other")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range got {
		seen[id] = "other"
	}
	for range reserved {
		e, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now().Add(time.Minute), ClaimedBy: "holder", Now: time.Now()})
		if err != nil || !ok {
			break
		}
		if prev, dup := seen[e.ID]; dup {
			t.Errorf("%s claimed twice: by %s and the holder (from its reservations)", e.ID, prev)
		}
		seen[e.ID] = "holder"
	}
	if len(got) != 8-len(reserved) {
		t.Errorf("the other process claimed %d from the rebuilt pool, want the %d not reserved", len(got), 8-len(reserved))
	}
}

// pendingCount is how many the holder is reserving now (popped, bid under way).
func pendingCount(s *Store) int {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.hold == nil {
		return 0
	}
	return len(s.hold.pending)
}

// TestClaimWhileTheHeadIsReserved: while the holder reserves the pool's
// head (out of the queue, its bid under way: slow on a loaded machine or a
// slow control plane), the holder's claim waits for that reservation and
// takes the head, instead of popping the next one from the queue (the
// conformance suite's "claim takes the oldest" failed so under load).
func TestClaimWhileTheHeadIsReserved(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	b, s := open(t, Options{Pool: "head", LeaseHeartbeat: 5 * time.Second})
	refs := fill(t, b, s, 2, 5*time.Minute) // oldest first; the holder reserves 1 of 2
	load(t, s)                              // what the holder's reservations go by
	f.SetLatency(300 * time.Millisecond)    // the reservation's bid: 2 round trips
	defer f.SetLatency(0)
	l, err := s.AcquireLease(ctxT(t), pool.LeaseRecord{Host: "test", Pid: 1, Role: pool.RoleController})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Release() })
	if !testkit.Until(10*time.Second, func() bool { return pendingCount(s) > 0 }) {
		t.Fatalf("no reservation under way (%d reserved)", reservedCount(s))
	}
	got, _, ok, err := s.Take(ctxT(t), pool.TakeRequest{MinExpiresAt: time.Now().Add(time.Minute), ClaimedBy: "api", Now: time.Now()})
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	if got.ID != refs[0].ID {
		t.Fatalf("the claim took %s, want the oldest %s (being reserved)", got.ID, refs[0].ID)
	}
}

// TestOverlayKeepsReservedByAge: the holder's reservations in the making
// join the reserved ones leading a view by expiry, not at its front (a view
// [2 1 3] with 2 being reserved after 1).
func TestOverlayKeepsReservedByAge(t *testing.T) {
	at := time.Now().Add(time.Hour)
	e := func(n int) pool.Entry {
		return pool.Entry{Ref: pool.Ref{ID: fmt.Sprint("sb-", n), ExpiresAt: at.Add(time.Duration(n) * time.Second)}}
	}
	s := &Store{c: &core{clk: clockwork.NewRealClock()}}
	s.hold = &holding{lease: &Lease{}, pending: map[string]pool.Entry{"sb-2": e(2)}, claiming: map[string]pool.Entry{},
		decided: map[string]time.Time{}, doubt: map[string]pool.Entry{}, inheritAt: at}
	s.hold.lease.valid.Store(at.UnixNano())
	v := view{Stored: pool.Stored{Entries: []pool.Entry{e(1), e(3), e(4)}},
		pooled: map[string]bool{"sb-3": true, "sb-4": true}, reserved: map[string]bool{"sb-1": true},
		claimed: map[string]bool{}, removed: map[string]bool{}}
	s.overlay(&v)
	if got, want := entryIDs(v.Entries), []string{"sb-1", "sb-2", "sb-3", "sb-4"}; !slices.Equal(got, want) {
		t.Fatalf("view %v, want %v", got, want)
	}
}
