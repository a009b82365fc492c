package modalx

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	modal "github.com/modal-labs/libmodal/modal-go"
	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
)

// fill creates n real sandboxes in the fake and puts them in the store.
func fill(t *testing.T, b *Backend, s *Store, n int, ttl time.Duration) []pool.Ref {
	t.Helper()
	ctx := ctxT(t)
	refs := make([]pool.Ref, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := b.Create(ctx, ttl)
			refs[i] = r
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	slices.SortFunc(refs, func(a, b pool.Ref) int { return a.CreatedAt.Compare(b.CreatedAt) })
	for _, r := range refs {
		if err := s.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	return refs
}

func entryIDs(es []pool.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func load(t *testing.T, s *Store) pool.Stored {
	t.Helper()
	st, err := s.Load(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// loadSettled loads, and once the settle of a rebuild that Load made is
// over (the sandboxes nobody claimed pooled again), loads again.
func loadSettled(t *testing.T, s *Store) pool.Stored {
	t.Helper()
	load(t, s)
	s.settleWG.Wait()
	return load(t, s)
}

func claimedOf(st pool.Stored) []pool.Entry {
	var out []pool.Entry
	for _, e := range st.Entries {
		if e.Claimed() {
			out = append(out, e)
		}
	}
	return out
}

func TestStoreSemantics(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "sem"})

	st := load(t, s)
	if st.HasTarget || len(st.Entries) != 0 {
		t.Fatalf("new pool: %+v", st)
	}
	if err := s.SetTarget(ctx, 5); err != nil {
		t.Fatal(err)
	}
	for i := range 6 { // many target writes keep the last
		if err := s.SetTarget(ctx, 10+i); err != nil {
			t.Fatal(err)
		}
	}
	if st := load(t, s); !st.HasTarget || st.Target != 15 {
		t.Fatalf("target %d %v", st.Target, st.HasTarget)
	}
	if n := len(f.QueueItems(QueueName("sem"), "meta")); n > 4 {
		t.Fatalf("meta partition grows: %d", n)
	}

	short := fill(t, b, s, 1, time.Minute)[0]
	long := fill(t, b, s, 2, 5*time.Minute)
	if err := s.Put(ctx, long[0]); err != nil { // already recorded: nothing changes
		t.Fatal(err)
	}
	st = load(t, s)
	if got, want := entryIDs(st.Entries), []string{short.ID, long[0].ID, long[1].ID}; !slices.Equal(got, want) {
		t.Fatalf("entries %v, want %v", got, want)
	}

	now := time.Now()
	taken, dropped, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: now.Add(2 * time.Minute), ClaimedBy: "cli", Now: now})
	if err != nil || !ok {
		t.Fatalf("Take: %v %v", ok, err)
	}
	if taken.ID != long[0].ID || taken.ClaimedBy != "cli" || !taken.ClaimedAt.Equal(now) || taken.URL != long[0].URL {
		t.Fatalf("taken %+v", taken)
	}
	if len(dropped) != 1 || dropped[0].ID != short.ID {
		t.Fatalf("dropped %+v", dropped)
	}
	waitClaimTags(t, f, taken, "sem", "cli")
	st = load(t, s)
	if got := entryIDs(st.Entries); !slices.Equal(got, []string{long[1].ID, long[0].ID}) {
		t.Fatalf("after take: %v", got)
	}
	if c := claimedOf(st); len(c) != 1 || c[0].ClaimedBy != "cli" {
		t.Fatalf("claimed %+v", c)
	}
	if err := s.Put(ctx, taken.Ref); !errors.Is(err, pool.ErrAlreadyClaimed) { // a claimed id is not pooled again
		t.Fatalf("put of a claimed sandbox: %v, want %v", err, pool.ErrAlreadyClaimed)
	}
	if got := entryIDs(load(t, s).Pooled()); !slices.Equal(got, []string{long[1].ID}) {
		t.Fatalf("claimed id re-pooled: %v", got)
	}

	// Evict leaves claimed entries alone.
	if ev, err := s.Evict(ctx, taken.ID, "sb-unknown"); err != nil || len(ev) != 0 {
		t.Fatalf("Evict of a claimed entry: %v %v", ev, err)
	}
	if c := claimedOf(load(t, s)); len(c) != 1 {
		t.Fatalf("claimed after Evict: %+v", c)
	}
	removed, err := s.Remove(ctx, taken.ID, long[1].ID, "sb-unknown", taken.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := entryIDs(removed); !slices.Equal(got, []string{taken.ID, long[1].ID}) {
		t.Fatalf("removed %v", got)
	}
	if st := load(t, s); len(st.Entries) != 0 {
		t.Fatalf("after remove: %+v", st.Entries)
	}
	if _, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now(), ClaimedBy: "cli", Now: time.Now()}); ok || err != nil {
		t.Fatalf("Take on empty: %v %v", ok, err)
	}
	if n := len(f.QueueItems(QueueName("sem"), "")); n != 0 {
		t.Fatalf("pool partition keeps %d stale items", n)
	}
}

// takeAll takes until the pool is empty.
func takeAll(ctx context.Context, s *Store, by string) ([]string, error) {
	var got []string
	for {
		e, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now(), ClaimedBy: by, Now: time.Now()})
		if err != nil {
			return got, err
		}
		if !ok {
			return got, nil
		}
		got = append(got, e.ID)
	}
}

func TestStoreConcurrentTakesOwnClients(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "conc"})
	refs := fill(t, b, s, 100, 5*time.Minute)

	var mu sync.Mutex
	seen := map[string]string{}
	var wg sync.WaitGroup
	for g := range 8 {
		_, sg := open(t, Options{Pool: "conc"}) // its own Modal client
		wg.Add(1)
		go func() {
			defer wg.Done()
			by := fmt.Sprintf("taker-%d", g)
			got, err := takeAll(ctx, sg, by)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range got {
				if prev, dup := seen[id]; dup {
					t.Errorf("%s handed to %s and %s", id, prev, by)
				}
				seen[id] = by
			}
		}()
	}
	wg.Wait()
	if len(seen) != len(refs) {
		t.Fatalf("took %d of %d", len(seen), len(refs))
	}
	st := load(t, s)
	if len(st.Pooled()) != 0 || len(claimedOf(st)) != 100 {
		t.Fatalf("after: %d pooled, %d claimed", len(st.Pooled()), len(claimedOf(st)))
	}
}

func TestStoreRemoveUnderConcurrentTakes(t *testing.T) {
	t.Run("Remove", func(t *testing.T) { testRemoveUnderTakes(t, false) })
	t.Run("Evict", func(t *testing.T) { testRemoveUnderTakes(t, true) })
}

func testRemoveUnderTakes(t *testing.T, evict bool) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "rm"})
	refs := fill(t, b, s, 40, 5*time.Minute)
	toRemove := []string{}
	for _, r := range refs[15:25] {
		toRemove = append(toRemove, r.ID)
	}

	var mu sync.Mutex
	taken := map[string]int{}
	var wg sync.WaitGroup
	for g := range 4 {
		_, sg := open(t, Options{Pool: "rm"})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 6 { // not all: some must remain pooled
				e, _, ok, err := sg.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now(), ClaimedBy: fmt.Sprint("t", g), Now: time.Now()})
				if err != nil || !ok {
					t.Error(ok, err)
					return
				}
				mu.Lock()
				taken[e.ID]++
				mu.Unlock()
			}
		}()
	}
	_, sr := open(t, Options{Pool: "rm"})
	var removed []pool.Entry
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, id := range toRemove { // one at a time, racing the takers
			rm := sr.Remove
			if evict {
				rm = sr.Evict
			}
			r, err := rm(ctx, id)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			removed = append(removed, r...)
			mu.Unlock()
		}
	}()
	wg.Wait()

	// Every id is in exactly one place: taken once, removed while pooled,
	// or still pooled. A removed entry that was also taken must have been
	// claimed before the removal (Remove returns it as claimed).
	count := map[string]int{}
	for id, n := range taken {
		count[id] += n
	}
	for _, e := range removed {
		if !slices.Contains(toRemove, e.ID) {
			t.Fatalf("removed %s, not asked", e.ID)
		}
		if taken[e.ID] > 0 {
			if evict {
				t.Errorf("%s taken and evicted", e.ID)
			}
			if !e.Claimed() {
				t.Errorf("%s taken, and removed as pooled", e.ID)
			}
			continue
		}
		count[e.ID]++
	}
	st := load(t, s)
	for _, e := range st.Pooled() {
		count[e.ID]++
	}
	for _, r := range refs {
		if count[r.ID] != 1 {
			t.Errorf("%s accounted %d times (taken %d)", r.ID, count[r.ID], taken[r.ID])
		}
	}
	// What remains is still claimable, once each.
	rest, err := takeAll(ctx, s, "rest")
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != len(st.Pooled()) {
		t.Fatalf("took %d of %d remaining", len(rest), len(st.Pooled()))
	}
}

func TestStoreTargetSurvivesNewClient(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	_, s := open(t, Options{Pool: "tgt"})
	if err := s.SetTarget(ctxT(t), 7); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, s2 := open(t, Options{Pool: "tgt"})
	if st := load(t, s2); !st.HasTarget || st.Target != 7 {
		t.Fatalf("target %+v", st)
	}
	_, s3 := open(t, Options{Pool: "tgt"})
	if err := s3.SetTarget(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
	if st := load(t, s2); !st.HasTarget || st.Target != 0 {
		t.Fatalf("target 0: %+v", st)
	}
	// The timing is kept beside the target, and each survives the other's
	// writes (old settings records are popped).
	if err := s3.SetTiming(ctxT(t), time.Minute, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for n := range 4 {
		if err := s3.SetTarget(ctxT(t), n); err != nil {
			t.Fatal(err)
		}
	}
	if st := load(t, s2); st.Target != 3 || st.TTL != time.Minute || st.UseDuration != 10*time.Second {
		t.Fatalf("after timing and 4 targets: target %d ttl %s use %s", st.Target, st.TTL, st.UseDuration)
	}
}

func TestStoreRebuildAfterQueueCleared(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "rb"})
	refs := fill(t, b, s, 6, 5*time.Minute)
	var claimed []string
	for range 2 {
		e, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now(), ClaimedBy: "api 127.0.0.1:5555", Now: time.Now()})
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		claimed = append(claimed, e.ID)
	}
	before := load(t, s)

	f.ClearQueue(QueueName("rb")) // Modal dropped the queue

	_, s2 := open(t, Options{Pool: "rb", LossSettle: 50 * time.Millisecond}) // a fresh process
	after := loadSettled(t, s2)
	if got, want := entryIDs(after.Pooled()), entryIDs(before.Pooled()); !slices.Equal(got, want) {
		t.Fatalf("pooled after rebuild %v, want %v", got, want)
	}
	c := claimedOf(after)
	if got := entryIDs(c); !slices.Equal(got, claimed) {
		t.Fatalf("claimed after rebuild %v, want %v", got, claimed)
	}
	if c[0].ClaimedBy != "api 127.0.0.1:5555" || c[0].URL != refs[0].URL {
		t.Fatalf("claim %+v", c[0])
	}
	// A second process rebuilding too duplicates nothing.
	_, s3 := open(t, Options{Pool: "rb"})
	if got := load(t, s3); len(got.Entries) != len(refs) {
		t.Fatalf("%d entries, want %d", len(got.Entries), len(refs))
	}
	got, err := takeAll(ctx, s3, "after")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, entryIDs(before.Pooled())) {
		t.Fatalf("took %v, want %v (claimed ones must not be pooled again)", got, entryIDs(before.Pooled()))
	}
}

// TestRPCCounts reports the RPCs of one claim and one maintenance pass
// (Store.Load + Backend.List) at several pool sizes.
func TestRPCCounts(t *testing.T) {
	for _, n := range []int{3, 30, 100} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			f := testkit.UseFakeModal(t, fakemodal.Options{})
			ctx := ctxT(t)
			b, s := open(t, Options{Pool: "count"})
			fill(t, b, s, n, 5*time.Minute)
			load(t, s) // first Load creates the meta record
			f.ResetCounts()
			if _, err := s.Load(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := b.List(ctx); err != nil {
				t.Fatal(err)
			}
			pass := f.Counts()
			f.ResetCounts()
			if _, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now(), ClaimedBy: "cli", Now: time.Now()}); !ok || err != nil {
				t.Fatal(ok, err)
			}
			claim := f.Counts()
			f.ResetCounts()
			if _, err := b.Create(ctx, time.Minute); err != nil {
				t.Fatal(err)
			}
			create := f.Counts()
			t.Logf("n=%d  maintenance pass (Load+List): %d RPCs [%s]", n, sum(pass), fakemodal.FormatCounts(pass))
			t.Logf("n=%d  claim (Take): %d RPCs [%s]", n, sum(claim), fakemodal.FormatCounts(claim))
			t.Logf("n=%d  create: %d RPCs [%s]", n, sum(create), fakemodal.FormatCounts(create))
		})
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// Latency widens every race window; claims stay exclusive.
func TestStoreConcurrentTakesWithLatency(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "lat"})
	fill(t, b, s, 30, 5*time.Minute)
	f.SetLatency(3 * time.Millisecond)
	start := time.Now()
	load(t, s)
	if time.Since(start) < 6*time.Millisecond {
		t.Fatal("latency not applied")
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range 6 {
		_, sg := open(t, Options{Pool: "lat"})
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := takeAll(ctx, sg, "x")
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range got {
				if seen[id] {
					t.Errorf("%s taken twice", id)
				}
				seen[id] = true
			}
		}()
	}
	wg.Wait()
	if len(seen) != 30 {
		t.Fatalf("took %d of 30", len(seen))
	}
}

// The pool partition alone lost ("short"): the engine's reconcile adopts what
// List shows with Put; claimed ones stay claimed.
func TestStoreAdoptAfterPoolPartitionLost(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "short"})
	refs := fill(t, b, s, 4, 5*time.Minute)
	load(t, s) // the queue is set up (meta written): no rebuild below
	taken, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now(), ClaimedBy: "cli", Now: time.Now()})
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := s.q.Clear(ctx, nil); err != nil { // default partition only
		t.Fatal(err)
	}
	if st := load(t, s); len(st.Pooled()) != 0 || len(claimedOf(st)) != 1 {
		t.Fatalf("after loss: %+v", st.Entries)
	}
	_, s2 := open(t, Options{Pool: "short"})
	b2, _ := open(t, Options{Pool: "short"})
	live, err := b2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range live {
		if err := s2.Put(ctx, r); err != nil && !errors.Is(err, pool.ErrAlreadyClaimed) {
			t.Fatal(err)
		}
	}
	st := load(t, s2)
	if got, want := entryIDs(st.Pooled()), entryIDs([]pool.Entry{{Ref: refs[1]}, {Ref: refs[2]}, {Ref: refs[3]}}); !slices.Equal(got, want) {
		t.Fatalf("pooled %v, want %v", got, want)
	}
	if c := claimedOf(st); len(c) != 1 || c[0].ID != taken.ID {
		t.Fatalf("claimed %+v", c)
	}
}

// waitClaimTags waits for a claim's tags, written in the background.
func waitClaimTags(t *testing.T, f *fakemodal.Server, e pool.Entry, poolName, by string) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, "claim tags on "+e.ID, func() bool {
		return slices.ContainsFunc(f.Sandboxes(), func(sb fakemodal.SandboxInfo) bool {
			return sb.ID == e.ID && sb.Tags[TagClaimedBy] == by && sb.Tags[TagPool] == poolName && sb.Tags[TagURL] == e.URL
		})
	})
}

// A sandbox whose first bid was won but whose record never followed (its
// claimer was cancelled or killed in between) is found by reconcile and put
// again: Put writes the record the bid decided, so the sandbox is never left
// unknown to every Load, adopted again at each pass and never terminated
// (TestChaosModal's "leak"). One removed or dropped is not pooled again.
func TestStorePutOfADecidedSandbox(t *testing.T) {
	testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "decided"})
	refs := fill(t, b, s, 4, 5*time.Minute)
	load(t, s)                                    // the queue is set up (meta written): no rebuild below
	_, other := open(t, Options{Pool: "decided"}) // reconcile runs in another process
	inStore := func(id string) (pool.Entry, bool) {
		for _, e := range load(t, other).Entries {
			if e.ID == id {
				return e, true
			}
		}
		return pool.Entry{}, false
	}
	// A claimer pops the head and wins its bid, then dies before its record.
	popBid := func(op, by string) pool.Ref {
		t.Helper()
		v, ok, err := s.pop(ctx, partPool)
		var r poolRec
		if err != nil || !ok || !decode(v, &r) {
			t.Fatalf("pop: %v %v", ok, err)
		}
		if won, _, err := s.bid(ctx, r.ID, op, by); err != nil || !won {
			t.Fatalf("bid: %v %v", won, err)
		}
		if _, known := inStore(r.ID); known {
			t.Fatalf("%s known to the store before the test's Put", r.ID)
		}
		return r.ref()
	}

	claimed := popBid("claim", "python")
	if err := other.Put(ctx, claimed); !errors.Is(err, pool.ErrAlreadyClaimed) {
		t.Fatalf("put of a claimed sandbox: %v, want %v", err, pool.ErrAlreadyClaimed)
	}
	if e, ok := inStore(claimed.ID); !ok || e.ClaimedBy != "python" {
		t.Fatalf("a sandbox whose claim bid won is %+v (known %v), want claimed by python", e, ok)
	}

	dropped := popBid("drop", "cli")
	if err := other.Put(ctx, dropped); !errors.Is(err, pool.ErrNotPooled) {
		t.Fatalf("put of a dropped sandbox: %v, want ErrNotPooled", err)
	}
	if _, ok := inStore(dropped.ID); ok {
		t.Fatalf("a dropped sandbox is in the store again")
	}

	// Taken, then given back (the claimer left during its health check):
	// Modal cannot pool it again; Put says so, reconcile terminates it.
	taken, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now(), ClaimedBy: "cli", Now: time.Now()})
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, err := s.Remove(ctx, taken.ID); err != nil {
		t.Fatal(err)
	}
	for _, st := range []*Store{s, other} { // the claimer (its claim noted) and reconcile elsewhere
		if err := st.Put(ctx, taken.Ref); !errors.Is(err, pool.ErrNotPooled) {
			t.Fatalf("put of a sandbox given back: %v, want ErrNotPooled", err)
		}
	}
	if _, ok := inStore(taken.ID); ok {
		t.Fatalf("a sandbox given back is in the store again")
	}
	if st := load(t, other); len(st.Pooled()) != 1 || st.Pooled()[0].ID != refs[3].ID {
		t.Fatalf("pooled %v, want only %s", entryIDs(st.Pooled()), refs[3].ID)
	}
}

// A resize right after Modal cleared the queue writes a settings record
// before anyone loaded: the next Load must still see the store as lost and
// rebuild it from the tags, or the controller refills and then terminates
// the live sandboxes as surplus (TestChaosModal seed 203).
func TestStoreRebuildAfterClearThenSetTarget(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "rbset", LossSettle: 50 * time.Millisecond})
	fill(t, b, s, 4, 5*time.Minute)
	load(t, s) // set up: a settings record exists
	taken, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: time.Now(), ClaimedBy: "cli", Now: time.Now()})
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	waitClaimTags(t, f, taken, "rbset", "cli")
	before := load(t, s)

	f.ClearQueue(QueueName("rbset"))
	_, s2 := open(t, Options{Pool: "rbset"}) // another process resizes at once
	if err := s2.SetTarget(ctx, 5); err != nil {
		t.Fatal(err)
	}
	after := loadSettled(t, s)
	if got, want := entryIDs(after.Pooled()), entryIDs(before.Pooled()); !slices.Equal(got, want) {
		t.Fatalf("pooled after a clear and a resize %v, want %v (rebuilt from tags)", got, want)
	}
	if c := claimedOf(after); len(c) != 1 || c[0].ID != taken.ID {
		t.Fatalf("claimed after a clear and a resize %v, want [%s]", entryIDs(c), taken.ID)
	}
	if after.Epoch == before.Epoch {
		t.Errorf("epoch %d before and after the loss: the engine is not told", after.Epoch)
	}
	if after.Target != 5 || !after.HasTarget {
		t.Fatalf("target %d (has %v), want the resize's 5", after.Target, after.HasTarget)
	}
}

// TestStoreRebuildWaitsForAClaimsTags: a claimer of README's protocol won
// its bid and wrote its claim record just before Modal cleared the queue;
// its tags land only after a rebuild's list. The rebuild pools the
// sandboxes it found nobody's only after the settle, read again then, so
// the claimed one is recorded claimed, not pooled for the next claimer
// (TestChaosModal: "claimed, then back in the pool" with the queue cleared
// in the same millisecond as a claim); and an adoption by another process
// meanwhile (Put) waits for the settle too.
func TestStoreRebuildWaitsForAClaimsTags(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, s := open(t, Options{Pool: "rbtags"})
	refs := fill(t, b, s, 3, 5*time.Minute)
	load(t, s)

	client, err := modal.NewClientWithOptions(&modal.ClientParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	q, err := client.Queues.FromName(ctx, QueueName("rbtags"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The claimer: pops the head, wins its bid, records the claim.
	if _, err := q.Get(ctx, nil); err != nil {
		t.Fatal(err)
	}
	mine := refs[0]
	now := time.Now().UTC()
	if err := q.Put(ctx, encode(bidRec{Op: "claim", By: "python", Nonce: nonce(), At: now}), &modal.QueuePutParams{Partition: bidPart(mine.ID)}); err != nil {
		t.Fatal(err)
	}
	e := pool.Entry{Ref: mine, ClaimedBy: "python", ClaimedAt: now}
	if err := q.Put(ctx, encode(logRec{Op: "claim", Entry: e}), &modal.QueuePutParams{Partition: logPart(mine.ExpiresAt)}); err != nil {
		t.Fatal(err)
	}

	f.ClearQueue(QueueName("rbtags"))
	_, s2 := open(t, Options{Pool: "rbtags"}) // another process finds the queue lost
	st := load(t, s2)
	if n := len(st.Pooled()); n != 3 {
		t.Fatalf("%d pooled right after the rebuild, want 3: held back, still counted", n)
	}
	if got, err := takeAll(ctx, s2, "during the settle"); err != nil || len(got) != 0 {
		t.Fatalf("took %v (%v) during the settle, want nothing", got, err)
	}
	// Another process adopts the claimed one meanwhile (a controller's
	// reconcile): its Put waits for the settle.
	_, s3 := open(t, Options{Pool: "rbtags"})
	load(t, s3) // reads the settle
	until := time.Unix(0, s3.settleUntil.Load())
	if s3.settleUntil.Load() == 0 {
		t.Fatal("another process's Load did not read the settle")
	}
	adopted := make(chan error, 1)
	go func() {
		err := s3.Put(ctx, mine)
		if time.Now().Before(until) {
			err = fmt.Errorf("the adoption returned (%v) before the settle's end %s", err, until.Format("15:04:05.000"))
		}
		adopted <- err
	}()
	// The claimer's tags, after the rebuild's list.
	sb, err := client.Sandboxes.FromID(ctx, mine.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.SetTags(ctx, tagsFor("rbtags", mine, "python", now)); err != nil {
		t.Fatal(err)
	}
	if err := <-adopted; !errors.Is(err, pool.ErrAlreadyClaimed) {
		t.Fatalf("the adoption of the claimed one: %v, want %v", err, pool.ErrAlreadyClaimed)
	}
	var after pool.Stored
	if !testkit.Until(15*time.Second, func() bool { after = load(t, s2); return len(after.Pooled()) == 2 }) {
		t.Fatalf("pooled after the settle %v, want the 2 nobody claimed", entryIDs(after.Pooled()))
	}
	if slices.Contains(entryIDs(after.Pooled()), mine.ID) {
		t.Fatalf("the claimed %s is pooled again after the rebuild: %v", mine.ID, entryIDs(after.Pooled()))
	}
	if c := claimedOf(after); len(c) != 1 || c[0].ID != mine.ID {
		t.Fatalf("claimed after the rebuild %v, want [%s]", entryIDs(c), mine.ID)
	}
}
