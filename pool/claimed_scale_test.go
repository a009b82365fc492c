package pool_test

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/filestore"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// splitStore is an in-memory Store that keeps claimed entries apart, as the
// file store does, so that its own Take and Put cost the same with 10 or
// 10,000 claimed entries and a test sees only the controller's costs. Load
// returns every entry: claimed ones first, then the pool.
type splitStore struct {
	mu      sync.Mutex
	target  int
	has     bool
	pooled  []pool.Entry
	claimed map[string]pool.Entry
	order   []string // claimed ids in claim order
	loads   int
	gen     uint64 // counts writes
	gens    int    // Generation calls
}

func newSplitStore() *splitStore { return &splitStore{claimed: map[string]pool.Entry{}} }

func (s *splitStore) Load(context.Context) (pool.Stored, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	out := pool.Stored{Target: s.target, HasTarget: s.has, Entries: make([]pool.Entry, 0, len(s.claimed)+len(s.pooled))}
	for _, id := range s.order {
		if e, ok := s.claimed[id]; ok {
			out.Entries = append(out.Entries, e)
		}
	}
	out.Entries = append(out.Entries, s.pooled...)
	return out, nil
}

func (s *splitStore) Put(_ context.Context, r pool.Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	r.Claimed = false
	if _, ok := s.claimed[r.ID]; ok || slices.ContainsFunc(s.pooled, func(e pool.Entry) bool { return e.ID == r.ID }) {
		return nil
	}
	at := len(s.pooled)
	for at > 0 && r.ExpiresAt.Before(s.pooled[at-1].ExpiresAt) {
		at--
	}
	s.pooled = slices.Insert(s.pooled, at, pool.Entry{Ref: r})
	return nil
}

func (s *splitStore) Take(_ context.Context, r pool.TakeRequest) (pool.Entry, []pool.Entry, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	for i, e := range s.pooled {
		if e.ExpiresAt.Before(r.MinExpiresAt) {
			continue
		}
		s.pooled = slices.Delete(s.pooled, i, i+1)
		e.ClaimedBy, e.ClaimedAt = r.ClaimedBy, r.Now
		s.claimed[e.ID] = e
		s.order = append(s.order, e.ID)
		return e, nil, true, nil
	}
	return pool.Entry{}, nil, false, nil
}

func (s *splitStore) remove(pooledOnly bool, ids []string) ([]pool.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	var out []pool.Entry
	for _, id := range ids {
		if i := slices.IndexFunc(s.pooled, func(e pool.Entry) bool { return e.ID == id }); i >= 0 {
			out = append(out, s.pooled[i])
			s.pooled = slices.Delete(s.pooled, i, i+1)
		} else if e, ok := s.claimed[id]; ok && !pooledOnly {
			out = append(out, e)
			delete(s.claimed, id)
		}
	}
	return out, nil
}

func (s *splitStore) Remove(_ context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(false, ids)
}

func (s *splitStore) Evict(_ context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(true, ids)
}

func (s *splitStore) SetTarget(_ context.Context, n int) error {
	s.mu.Lock()
	s.gen++
	s.target, s.has = n, true
	s.mu.Unlock()
	return nil
}

// genStore is a splitStore that tells its generation, as the file store does.
type genStore struct{ *splitStore }

func (s genStore) Generation(context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gens++
	return s.gen, nil
}

func (s *splitStore) SetTiming(context.Context, time.Duration, time.Duration) error { return nil }
func (s *splitStore) SetWorkload(context.Context, string) error                     { return nil }
func (s *splitStore) Close() error                                                  { return nil }

// bytesPerClaim runs a controller (its loops on) over a pool of 5 whose
// store also holds claimed entries, and returns the bytes allocated per
// claim, the claim's backfill (its passes and creation) included, and per
// Summary (what a /metrics scrape reads).
func bytesPerClaim(t *testing.T, claimed, claims int) (perClaim, perSummary float64) {
	t.Helper()
	clk := clockwork.NewRealClock()
	be := pooltest.NewBackend(clk)
	st := newSplitStore()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	far := clk.Now().Add(time.Hour)
	for i := range claimed { // claimed long ago by someone else
		id := fmt.Sprintf("sb-old-%05d", i)
		e := pool.Entry{Ref: pool.Ref{ID: id, URL: "http://127.0.0.1:1", CreatedAt: clk.Now(), ExpiresAt: far}, ClaimedBy: "someone", ClaimedAt: clk.Now()}
		st.claimed[id], st.order = e, append(st.order, id)
	}
	cfg := pool.DefaultConfig()
	cfg.Size = 5
	// Only the claims' own backfill runs: the regular passes and the store
	// poll (one read of every entry a second) are out of the measure.
	cfg.MaintainEvery, cfg.HealthEvery = time.Hour, time.Hour
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker, StorePollEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	served := make(chan error, 1)
	go func() { served <- c.Serve(ctx, false) }()
	defer func() { cancel(); <-served }()
	ready := func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return len(st.pooled) == cfg.Size && c.Creating() == 0
	}
	testkit.Eventually(t, 10*time.Second, "the pool filled", ready)
	claimOnce := func() {
		rounds := c.Rounds()
		if _, err := c.Claim(ctx, pool.ClaimOptions{By: "test"}); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 10*time.Second, "the backfill", func() bool { return c.Rounds() > rounds && ready() })
	}
	claimOnce() // warm up
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range claims {
		claimOnce()
	}
	runtime.ReadMemStats(&after)
	perClaim = float64(after.TotalAlloc-before.TotalAlloc) / float64(claims)
	runtime.ReadMemStats(&before)
	for range claims {
		if got := c.Summary().Counts[pool.StateClaimed]; got != claimed+claims+1 {
			t.Fatalf("%d claimed in the summary, want %d", got, claimed+claims+1)
		}
	}
	runtime.ReadMemStats(&after)
	perSummary = float64(after.TotalAlloc-before.TotalAlloc) / float64(claims)
	return perClaim, perSummary
}

// TestClaimCostFlatInClaimedEntries: a claim and its backfill do the same
// work with 10 or 10,000 claimed entries in the store (issue 9): the
// controller keeps claimed entries apart, and the passes a claim kicks
// judge by its view instead of reading every entry of the store; /metrics
// reads a summary without a row per sandbox. Measured in
// bytes allocated (deterministic, unlike time on a shared machine): reading
// 10,000 entries once allocates over a megabyte.
func TestClaimCostFlatInClaimedEntries(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a store with 10,000 claimed entries")
	}
	const claims = 20
	few, fewSum := bytesPerClaim(t, 10, claims)
	many, manySum := bytesPerClaim(t, 10000, claims)
	t.Logf("bytes allocated per claim: %.0f with 10 claimed entries, %.0f with 10,000; per summary: %.0f, %.0f", few, many, fewSum, manySum)
	if many > 1.5*few+32<<10 {
		t.Fatalf("a claim allocates %.0f bytes with 10,000 claimed entries, %.0f with 10: it walks them", many, few)
	}
	if manySum > 1.5*fewSum+4<<10 {
		t.Fatalf("a summary allocates %.0f bytes with 10,000 claimed entries, %.0f with 10: a row each", manySum, fewSum)
	}
}

// TestClaimedViewFollowsTheStore: the controller's claimed entries, kept
// apart from the pool, still follow what other processes do: a claim made
// elsewhere is counted once (warm: it was pooled here) and shown claimed,
// and claimed entries removed elsewhere leave the view, its own claims kept.
func TestClaimedViewFollowsTheStore(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.pass()
	testkit.Eventually(t, waitLong, "3 ready", func() bool { return len(h.pooledIDs()) == 3 })
	mine, err := h.c.Claim(ctx, pool.ClaimOptions{By: "here"})
	if err != nil {
		t.Fatal(err)
	}
	theirs, _, ok, err := h.st.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "elsewhere", Now: t0})
	if err != nil || !ok {
		t.Fatalf("take elsewhere: %v %v", ok, err)
	}
	refresh := func() pool.Snapshot {
		t.Helper()
		snap, err := h.c.Refresh(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	claimedIDs := func(s pool.Snapshot) []string {
		var ids []string
		for _, sb := range s.Sandboxes {
			if sb.State == pool.StateClaimed {
				ids = append(ids, sb.ID)
			}
		}
		slices.Sort(ids)
		return ids
	}
	snap := refresh()
	want := []string{mine.ID, theirs.ID}
	slices.Sort(want)
	if got := claimedIDs(snap); !slices.Equal(got, want) || snap.Counts[pool.StateReady] != 1 {
		t.Fatalf("claimed %v, counts %v; want claimed %v and 1 ready", got, snap.Counts, want)
	}
	// What /metrics reads counts the same, without a row per sandbox.
	if sum := h.c.Summary(); !maps.Equal(sum.Counts, snap.Counts) || sum.Sandboxes != nil {
		t.Fatalf("summary counts %v (%d rows), snapshot's %v", sum.Counts, len(sum.Sandboxes), snap.Counts)
	}
	if snap.Stats.ClaimsWarm != 2 {
		t.Fatalf("%d warm claims counted, want 2 (one here, one seen in the store)", snap.Stats.ClaimsWarm)
	}
	if snap = refresh(); snap.Stats.ClaimsWarm != 2 {
		t.Fatalf("%d warm claims after a second read, want still 2", snap.Stats.ClaimsWarm)
	}
	if _, err := h.st.Remove(ctx, theirs.ID); err != nil { // its claimer gave it up
		t.Fatal(err)
	}
	if got := claimedIDs(refresh()); !slices.Equal(got, []string{mine.ID}) {
		t.Fatalf("claimed %v after %s left the store, want [%s]", got, theirs.ID, mine.ID)
	}
}

// TestIdlePollReadsNoEntry: the store poll of a pool nobody touches asks the
// store's generation and reads none of its entries; a change made by
// another process is still seen at the next poll.
func TestIdlePollReadsNoEntry(t *testing.T) {
	clk := clockwork.NewRealClock()
	be := pooltest.NewBackend(clk)
	st := genStore{newSplitStore()}
	cfg := pool.DefaultConfig()
	cfg.Size, cfg.MaintainEvery, cfg.HealthEvery = 2, time.Hour, time.Hour
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker, StorePollEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- c.Serve(ctx, false) }()
	defer func() { cancel(); <-served }()
	counts := func() (loads, gens int) {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.loads, st.gens
	}
	testkit.Eventually(t, 10*time.Second, "the pool filled and polled", func() bool {
		_, g := counts()
		return c.Snapshot().Counts[pool.StateReady] == 2 && c.Creating() == 0 && g > 0
	})
	// Settled: polls that find the generation unchanged read nothing.
	var loads, gens int
	testkit.Eventually(t, 10*time.Second, "20 polls in a row without a load", func() bool {
		l, g := counts()
		if l != loads {
			loads, gens = l, g
			return false
		}
		return g-gens >= 20
	})
	// Another process claims: the next polls see it.
	if _, _, ok, err := st.Take(ctx, pool.TakeRequest{MinExpiresAt: clk.Now(), ClaimedBy: "elsewhere", Now: clk.Now()}); err != nil || !ok {
		t.Fatalf("take elsewhere: %v %v", ok, err)
	}
	testkit.Eventually(t, 10*time.Second, "the claim elsewhere seen", func() bool {
		return c.Snapshot().Counts[pool.StateClaimed] == 1
	})
}

// sinceStore records how many claimed entries each load of a file store
// left out (0: a full load).
type sinceStore struct {
	*filestore.Store
	mu     sync.Mutex
	olders []int
}

func (s *sinceStore) LoadSince(ctx context.Context, mark uint64) (pool.Stored, int, uint64, error) {
	st, older, next, err := s.Store.LoadSince(ctx, mark)
	s.mu.Lock()
	s.olders = append(s.olders, older)
	s.mu.Unlock()
	return st, older, next, err
}

// last returns the older counts of the loads since the last call.
func (s *sinceStore) last() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.olders
	s.olders = nil
	return out
}

// TestClaimedViewFollowsTheFileStoreReadingNewClaimsOnly: over the file
// store, a load after the first copies only the claims made since (the
// view holds the others), and the view still follows the store: claims
// made elsewhere are counted once, and a claimed entry removed elsewhere
// (which only its count shows) has the store loaded in full to tell which.
func TestClaimedViewFollowsTheFileStoreReadingNewClaimsOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fs, err := filestore.Open(dir, "default")
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	elsewhere, err := filestore.Open(dir, "default") // another process's
	if err != nil {
		t.Fatal(err)
	}
	defer elsewhere.Close()
	st := &sinceStore{Store: fs}
	clk := clockwork.NewFakeClockAt(t0)
	be := pooltest.NewBackend(clk)
	cfg := pool.DefaultConfig()
	cfg.Size = 5
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, waitLong, "5 ready", func() bool { return c.Summary().Counts[pool.StateReady] == 5 })
	claimElsewhere := func() string {
		t.Helper()
		e, _, ok, err := elsewhere.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "elsewhere", Now: clk.Now()})
		if err != nil || !ok {
			t.Fatalf("take elsewhere: %v %v", ok, err)
		}
		return e.ID
	}
	refresh := func(wantClaimed []string, wantWarm int64, wantOlders ...int) {
		t.Helper()
		st.last()
		snap, err := c.Refresh(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, sb := range snap.Sandboxes {
			if sb.State == pool.StateClaimed {
				ids = append(ids, sb.ID)
			}
		}
		slices.Sort(ids)
		want := slices.Sorted(slices.Values(wantClaimed))
		if olders := st.last(); !slices.Equal(ids, want) || snap.Stats.ClaimsWarm != wantWarm || !slices.Equal(olders, wantOlders) {
			t.Fatalf("claimed %v, %d warm claims, loads leaving out %v; want %v, %d, %v",
				ids, snap.Stats.ClaimsWarm, olders, want, wantWarm, wantOlders)
		}
	}
	mine, err := c.Claim(ctx, pool.ClaimOptions{By: "here"})
	if err != nil {
		t.Fatal(err)
	}
	theirs := claimElsewhere()
	refresh([]string{mine.ID, theirs}, 2, 0) // the first claims since the last load: nothing to leave out
	refresh([]string{mine.ID, theirs}, 2, 2) // both left out, counted once
	theirs2 := claimElsewhere()
	refresh([]string{mine.ID, theirs, theirs2}, 3, 2)
	if _, err := elsewhere.Remove(ctx, theirs); err != nil { // its claimer gave it up
		t.Fatal(err)
	}
	refresh([]string{mine.ID, theirs2}, 3, 2, 0) // the count is off by one: a full load says which
	refresh([]string{mine.ID, theirs2}, 3, 2)
}
