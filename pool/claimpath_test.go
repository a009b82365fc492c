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

// A workload that exits fails its try at once, with its last lines in the
// event, instead of waiting out the health timeout.
func TestExitedWorkloadFailsAtOnce(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 1; c.CreateTries = 1 })
	h.be.ExitOnCreate = &pool.ExitInfo{Code: 3, Tail: "starting\nFATAL config missing\n"}
	events, cancel := h.c.Subscribe(64)
	defer cancel()
	if err := h.c.Maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.c.WaitIdle(context.Background()) // no clock advance: nothing waits on the health timeout
	for e := range events {
		if e.Kind != pool.EventCreateFailed {
			continue
		}
		if !strings.Contains(e.Tail, "FATAL config missing") || !strings.Contains(e.Message, "FATAL config missing") ||
			!strings.Contains(e.Err, "code 3") {
			t.Fatalf("failure event %+v: want the exit code and the workload's last line", e)
		}
		break
	}
	if live := h.be.Live(); len(live) != 0 {
		t.Fatalf("live %v: the exited sandbox was not terminated", live)
	}
}

// The backend's record of claims wins over a store that lost them: a claimed
// sandbox is never adopted back, never re-pooled and never terminated.
func TestClaimedStaysClaimedWhenTheStoreIsLost(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.pass()
	h.c.WaitIdle(ctx)
	got, err := h.c.Claim(ctx, pool.ClaimOptions{By: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	h.c.WaitIdle(ctx) // the backend's record is made beside the answer
	if by := h.be.ClaimedBy(got.ID); by != "cli" {
		t.Fatalf("backend record of %s: %q, want cli", got.ID, by)
	}
	// The store is lost: every entry gone.
	var ids []string
	for _, e := range h.stored().Entries {
		ids = append(ids, e.ID)
	}
	if _, err := h.st.Remove(ctx, ids...); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(time.Minute) // past the adoption grace
	h.pass()
	h.pass()
	h.c.WaitIdle(ctx)
	if slices.Contains(h.pooledIDs(), got.ID) || slices.Contains(h.be.Terminated(), got.ID) {
		t.Fatalf("claimed %s re-pooled %v or terminated %v", got.ID, h.pooledIDs(), h.be.Terminated())
	}
	// An old copy of the store comes back with it pooled: it leaves the pool, alive.
	if err := h.st.Put(ctx, got.Ref); err != nil {
		t.Fatal(err)
	}
	h.pass()
	h.c.WaitIdle(ctx)
	if slices.Contains(h.pooledIDs(), got.ID) || slices.Contains(h.be.Terminated(), got.ID) || !slices.Contains(h.be.Live(), got.ID) {
		t.Fatalf("restored claimed %s: pooled %v, terminated %v", got.ID, h.pooledIDs(), h.be.Terminated())
	}
	if n := len(h.pooledIDs()); n != 3 {
		t.Fatalf("pooled %d, want 3", n)
	}
}

// slowRecorder holds every claim record until release is closed, saying
// each one it holds on in.
type slowRecorder struct {
	*pooltest.Backend
	in      chan string
	release chan struct{}
}

func (b *slowRecorder) MarkClaimed(ctx context.Context, id, by string) error {
	b.in <- id
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.Backend.MarkClaimed(ctx, id, by)
}

// The backend's record of a claim is made beside its answer, not before it;
// a pass that would adopt live sandboxes unknown to a lost store waits for
// the records pending, so the claimed one is never re-pooled.
func TestAdoptionWaitsForPendingClaimRecords(t *testing.T) {
	var be *slowRecorder
	h := newHarnessOn(t, nil, func(fake *pooltest.Backend) pool.Backend {
		be = &slowRecorder{Backend: fake, in: make(chan string, 1), release: make(chan struct{})}
		return be
	})
	ctx := context.Background()
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(be.release) }) }
	t.Cleanup(release) // runs first: Close waits for the record
	c := h.c
	h.pass()
	h.c.WaitIdle(ctx)

	claimed := make(chan pool.Claimed, 1)
	go func() {
		got, err := c.Claim(ctx, pool.ClaimOptions{By: "cli"})
		if err != nil {
			t.Error(err)
		}
		claimed <- got
	}()
	var got pool.Claimed
	select {
	case got = <-claimed:
	case <-time.After(waitLong):
		t.Fatal("the claim waited for its backend record")
	}
	if id := <-be.in; id != got.ID {
		t.Fatalf("record of %s, claimed %s", id, got.ID)
	}
	// The store is lost while the record is pending.
	if _, err := h.st.Remove(ctx, h.pooledIDs()...); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.Remove(ctx, got.ID); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(time.Minute) // past the adoption grace
	passed := make(chan error, 1)
	go func() { passed <- c.Maintain(ctx) }()
	if testkit.Until(300*time.Millisecond, func() bool { return len(passed) > 0 }) {
		t.Fatalf("a pass listed the backend before the pending claim record (pooled now: %v)", h.pooledIDs())
	}
	release()
	if err := <-passed; err != nil {
		t.Fatal(err)
	}
	h.settle()
	h.pass()
	if slices.Contains(h.pooledIDs(), got.ID) || slices.Contains(h.be.Terminated(), got.ID) {
		t.Fatalf("claimed %s re-pooled %v or terminated %v", got.ID, h.pooledIDs(), h.be.Terminated())
	}
	if by := h.be.ClaimedBy(got.ID); by != "cli" {
		t.Fatalf("backend record of %s: %q, want cli", got.ID, by)
	}
}

// selfContained is a slowRecorder whose sandboxes end only with it.
type selfContained struct{ *slowRecorder }

func (selfContained) SandboxesEndOnlyWithBackend() bool { return true }

// A claim that trusts a fresh probe waits for the claim record (its "not
// running" keeps a dead sandbox from being handed out) unless the backend's
// sandboxes end only with it; a claim that probed does not wait.
func TestClaimWaitsForItsRecordOnlyWhenItMustTellDead(t *testing.T) {
	for _, tc := range []struct {
		name          string
		selfContained bool
		stale         bool // the first-start probe is stale: the claim probes
		waits         bool
	}{
		{"fresh probe trusted", false, false, true},
		{"fresh probe trusted, self-contained backend", true, false, false},
		{"probed by the claim", false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var slow *slowRecorder
			h := newHarnessOn(t, nil, func(fake *pooltest.Backend) pool.Backend {
				slow = &slowRecorder{Backend: fake, in: make(chan string, 1), release: make(chan struct{})}
				if tc.selfContained {
					return selfContained{slow}
				}
				return slow
			})
			ctx := context.Background()
			var releaseOnce sync.Once
			t.Cleanup(func() { releaseOnce.Do(func() { close(slow.release) }) })
			c := h.c
			h.pass()
			h.c.WaitIdle(ctx)
			if tc.stale {
				h.clk.Advance(h.cfg.HealthFresh)
			}
			done := make(chan error, 1)
			go func() {
				_, err := c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "cli"})
				done <- err
			}()
			<-slow.in // the record is asked for
			returned := testkit.Until(300*time.Millisecond, func() bool { return len(done) > 0 })
			if returned == tc.waits {
				t.Fatalf("claim returned before its record: %v, want %v", returned, !tc.waits)
			}
			releaseOnce.Do(func() { close(slow.release) })
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A slow log never slows a claim: async observers run on their own
// goroutine, and Close waits until they saw every event.
func TestSlowObserverDoesNotSlowClaims(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	release := make(chan struct{})
	seen := make(chan pool.EventKind, 1024)
	h.c.ObserveAsync(func(e pool.Event) {
		<-release
		seen <- e.Kind
	})
	h.pass()
	h.c.WaitIdle(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := h.c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "cli"})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a blocked observer held up a claim")
	}
	close(release)
	h.c.Close()
	close(seen)
	var kinds []pool.EventKind
	for k := range seen {
		kinds = append(kinds, k)
	}
	if !slices.Contains(kinds, pool.EventClaimed) {
		t.Fatalf("the async observer missed the claim: %v", kinds)
	}
}

func TestNextCreationLimit(t *testing.T) {
	best := time.Second
	for _, tc := range []struct {
		name        string
		limit, most int
		took        time.Duration
		ok          bool
		want        int
	}{
		{"quick grows", 4, 20, best, true, 5},
		{"quick at the edge grows", 4, 20, 2*best + 250*time.Millisecond, true, 5},
		{"just past quick holds", 4, 20, 2*best + 250*time.Millisecond + 1, true, 4},
		{"slow at the edge holds", 8, 20, 4*best + time.Second, true, 8},
		{"slow cuts a quarter", 16, 20, 4*best + time.Second + 1, true, 12},
		{"slow cuts at least one", 13, 20, time.Hour, true, 10},
		{"slow never below the initial limit", 10, 20, time.Hour, true, 10},
		{"slow below the initial limit holds", 4, 20, time.Hour, true, 4},
		{"never above max", 20, 20, best, true, 20},
		{"failure halves", 9, 20, 0, false, 4},
		{"failure goes below the initial limit", 2, 20, 0, false, 1},
		{"never below one", 1, 20, 0, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pool.NextCreationLimit(tc.limit, tc.most, tc.took, best, tc.ok); got != tc.want {
				t.Fatalf("got %d, want %d", got, tc.want)
			}
		})
	}
}

// probeCounter wraps the harness's checker, counting probes per URL; block,
// when set for a URL, holds its probes until it is closed.
type probeCounter struct {
	h     *harness
	mu    sync.Mutex
	n     map[string]int
	block map[string]chan struct{}
	in    chan string // each blocked probe says its URL here
}

func newProbeCounter(h *harness) *probeCounter {
	return &probeCounter{h: h, n: map[string]int{}, block: map[string]chan struct{}{}, in: make(chan string, 16)}
}

func (p *probeCounter) check(ctx context.Context, url string) pool.Health {
	p.mu.Lock()
	p.n[url]++
	wait := p.block[url]
	p.mu.Unlock()
	if wait != nil {
		p.in <- url
		<-wait
	}
	return p.h.be.Checker(ctx, url)
}

func (p *probeCounter) count(url string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[url]
}

// serving starts a controller with its loops on (the checker counted),
// waits until the pool is full and nothing is being created, and has the
// controller read the store.
func (h *harness) serving(p *probeCounter) *pool.Controller {
	h.t.Helper()
	c, err := pool.New(pool.Options{Config: h.cfg, Backend: h.be, Store: h.st, Clock: h.clk, Checker: p.check})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, false) }()
	h.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Error(err)
		}
		c.Close()
	})
	testkit.Eventually(h.t, waitLong, "filled", func() bool {
		return len(h.pooledIDs()) == h.cfg.Size && c.Creating() == 0
	})
	// On the fake clock the fill's sandboxes all expire at once, and pool
	// order among them is the order they were put in: the store's, and the
	// controller's notes of the concurrent puts, may differ. Read the store,
	// so that the controller's order (its probes ahead) is the store's (the
	// claims, and the tests' h.stored()).
	if _, err := c.Refresh(context.Background(), false); err != nil {
		h.t.Fatal(err)
	}
	return c
}

// After a claim, the controller probes the sandboxes the next claims will
// take, so that a claim soon after finds its sandbox freshly probed and
// skips its own probe.
func TestProbeAheadKeepsTheHeadFresh(t *testing.T) {
	h := newHarness(t, nil)
	p := newProbeCounter(h)
	c := h.serving(p)
	pooled := h.stored().Pooled()
	h.clk.Advance(h.cfg.HealthFresh) // the first-start probes are stale now
	got, err := c.Claim(context.Background(), pool.ClaimOptions{CheckHealth: true, By: "cli"})
	if err != nil || got.ID != pooled[0].ID || p.count(got.URL) != 2 {
		t.Fatalf("claimed %s (%v) with %d probes, want %s probed by the claim", got.ID, err, p.count(got.URL), pooled[0].ID)
	}
	next := pooled[1].URL
	// Counted as the probe starts: wait for its answer to be recorded too.
	testkit.Eventually(t, waitLong, "the next one probed ahead", func() bool { return p.count(next) == 2 && !c.ProbingAhead() })
	h.clk.Advance(h.cfg.HealthFresh / 2)
	got, err = c.Claim(context.Background(), pool.ClaimOptions{CheckHealth: true, By: "cli"})
	if err != nil || got.ID != pooled[1].ID || p.count(next) != 2 {
		t.Fatalf("claimed %s (%v) with %d probes, want %s with its probe ahead only", got.ID, err, p.count(next), pooled[1].ID)
	}
	c.WaitIdle(context.Background()) // the backend's record is made beside the answer
	if by := h.be.ClaimedBy(got.ID); by != "cli" {
		t.Fatalf("backend record of %s: %q, want cli", got.ID, by)
	}
}

// Claims at least half of HealthFresh apart have only the head probed
// ahead (its probe is long done when the next claim comes; two ahead had
// every sandbox probed twice with claims 300 ms apart); claims closer
// together have two probed ahead.
func TestProbeAheadDepthFollowsClaimSpacing(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 5 })
	p := newProbeCounter(h)
	c := h.serving(p)
	pooled := h.stored().Pooled()
	counts := func() []int {
		var n []int
		for _, e := range pooled {
			n = append(n, p.count(e.URL))
		}
		return n
	}
	claim := func(want pool.Entry, probedAhead ...int) {
		t.Helper()
		before := counts()
		got, err := c.Claim(context.Background(), pool.ClaimOptions{CheckHealth: true, By: "cli"})
		if err != nil || got.ID != want.ID {
			t.Fatalf("claimed %s (%v), want %s", got.ID, err, want.ID)
		}
		testkit.Eventually(t, waitLong, "the probes ahead", func() bool { return !c.ProbingAhead() })
		after := counts()
		for i := range pooled {
			want := before[i]
			if slices.Contains(probedAhead, i) {
				want++
			}
			if pooled[i].ID == got.ID || after[i] == want {
				continue
			}
			t.Fatalf("after the claim of %s: sandbox %d probed %d times more, want %d (probed ahead: %v)",
				got.ID, i, after[i]-before[i], want-before[i], probedAhead)
		}
	}
	h.clk.Advance(h.cfg.HealthFresh) // every probe so far is stale
	claim(pooled[0], 1)
	h.clk.Advance(h.cfg.HealthFresh / 2) // spaced out: the head's probe is still fresh
	if n := p.count(pooled[1].URL); n != 2 {
		t.Fatalf("%s probed %d times before its claim, want 2", pooled[1].ID, n)
	}
	claim(pooled[1], 2)
	if n := p.count(pooled[1].URL); n != 2 {
		t.Fatalf("%s probed %d times, want 2 (the claim trusted its probe ahead)", pooled[1].ID, n)
	}
	claim(pooled[2], 3, 4) // right after the last one
}

// A claim on its way out goes ahead of the backfill it causes: the pass
// that follows a claim starts no creation while a claim is still probing.
func TestClaimsGoAheadOfBackfill(t *testing.T) {
	h := newHarness(t, nil)
	p := newProbeCounter(h)
	c := h.serving(p)
	head := h.stored().Pooled()[0]
	release := make(chan struct{})
	p.mu.Lock()
	p.block[head.URL] = release
	p.mu.Unlock()
	h.clk.Advance(h.cfg.HealthFresh) // the claim probes
	creates := h.be.CreateCalls()
	done := make(chan error, 1)
	go func() {
		_, err := c.Claim(context.Background(), pool.ClaimOptions{CheckHealth: true, By: "cli"})
		done <- err
	}()
	<-p.in // taken from the store (one short now), probing
	c.Kick()
	// Without the yield, the kicked pass would create the replacement now.
	if testkit.Until(300*time.Millisecond, func() bool { return h.be.CreateCalls() > creates }) {
		t.Fatal("the backfill started a creation while a claim was on its way out")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, waitLong, "the backfill after the claim", func() bool { return h.be.CreateCalls() == creates+1 })
}

// quickGate is a pool.QuickClaimGate in memory: TryClaimOnce decides at
// once from its table (unless undecided), the record (MarkClaimedOnce) waits
// for release, like slowRecorder's, unless the gate records with its
// decision (records).
type quickGate struct {
	*slowRecorder
	mu        sync.Mutex
	table     map[string]pool.Entry // the claim holding each id
	undecided bool                  // the table cannot answer: MarkClaimedOnce decides
	records   bool                  // a claim let through is recorded at once
	noted     map[string]bool       // recorded at once
	again     []string              // recorded at once, then asked to record
}

var _ pool.QuickClaimGate = (*quickGate)(nil)

func (q *quickGate) TryClaimOnce(e pool.Entry) (decided, recorded bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.undecided {
		return false, false, nil
	}
	if held, ok := q.table[e.ID]; ok && (held.ClaimedBy != e.ClaimedBy || !held.ClaimedAt.Equal(e.ClaimedAt)) {
		return true, false, pool.ErrAlreadyClaimed
	}
	if !slices.Contains(q.Live(), e.ID) {
		return true, false, pool.ErrNotFound
	}
	q.table[e.ID] = e
	if q.records {
		if q.noted == nil {
			q.noted = map[string]bool{}
		}
		q.noted[e.ID] = true
		// The fake's own record, not slowRecorder's, which waits.
		return true, true, q.Backend.MarkClaimed(context.Background(), e.ID, e.ClaimedBy)
	}
	return true, false, nil
}

func (q *quickGate) MarkClaimedOnce(ctx context.Context, e pool.Entry) error {
	q.mu.Lock()
	held, ok := q.table[e.ID]
	if !ok {
		q.table[e.ID] = e
	}
	if q.noted[e.ID] {
		q.again = append(q.again, e.ID)
	}
	q.mu.Unlock()
	if ok && (held.ClaimedBy != e.ClaimedBy || !held.ClaimedAt.Equal(e.ClaimedAt)) {
		return pool.ErrAlreadyClaimed
	}
	return q.MarkClaimed(ctx, e.ID, e.ClaimedBy)
}

// A claim on a QuickClaimGate that decides at once is answered before its
// record, which is made beside the answer, or with the decision when the
// gate records it; one it refuses (a stale store's entry of a claimed
// sandbox) is dropped from the store and the next taken; one it cannot
// decide waits for the record, which decides (released after 300 ms).
func TestQuickClaimGate(t *testing.T) {
	h := newHarness(t, func(cfg *pool.Config) { cfg.Size = 4 }) // a sandbox a claim
	ctx := context.Background()
	slow := &slowRecorder{Backend: h.be, in: make(chan string, 4), release: make(chan struct{})}
	q := &quickGate{slowRecorder: slow, table: map[string]pool.Entry{}}
	c, err := pool.New(pool.Options{Config: h.cfg, Backend: q, Store: h.st, Clock: h.clk, Checker: h.be.Checker, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(slow.release) }) }
	t.Cleanup(c.Close)
	t.Cleanup(release) // runs first: Close waits for the records
	h.c = c
	h.pass()
	h.c.WaitIdle(ctx)

	claim := func() (pool.Claimed, bool) {
		t.Helper()
		type result struct {
			cl  pool.Claimed
			err error
		}
		done := make(chan result, 1)
		go func() {
			cl, err := c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "cli"})
			done <- result{cl, err}
		}()
		var r result
		answered := testkit.Until(300*time.Millisecond, func() bool {
			select {
			case r = <-done:
				return true
			default:
				return false
			}
		})
		if !answered {
			release()
			r = <-done
		}
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.cl, answered
	}
	first, answered := claim()
	if !answered {
		t.Fatal("a claim the gate decided at once waited for its record")
	}
	if id := <-slow.in; id != first.ID {
		t.Fatalf("record of %s, claimed %s", id, first.ID)
	}
	// An old copy of the store puts it back, pooled, at the head.
	pooled, err := h.st.Remove(ctx, append(h.pooledIDs(), first.ID)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.st.Put(ctx, first.Ref); err != nil {
		t.Fatal(err)
	}
	for _, e := range pooled {
		if e.ID != first.ID {
			if err := h.st.Put(ctx, e.Ref); err != nil {
				t.Fatal(err)
			}
		}
	}
	h.clk.Advance(time.Millisecond) // another claim: another instant
	second, answered := claim()
	if !answered || second.ID == first.ID {
		t.Fatalf("claim after the stale store: %s (answered at once: %v), want another than %s", second.ID, answered, first.ID)
	}
	if slices.Contains(h.pooledIDs(), first.ID) || slices.Contains(h.be.Terminated(), first.ID) {
		t.Fatalf("the claimed %s: pooled %v, terminated %v", first.ID, h.pooledIDs(), h.be.Terminated())
	}
	// Recorded with its decision: no record after (it would wait for release).
	q.mu.Lock()
	q.records = true
	q.mu.Unlock()
	h.clk.Advance(time.Millisecond)
	recorded, answered := claim()
	if !answered {
		t.Fatalf("claim of %s recorded by the gate: not answered at once", recorded.ID)
	}
	if by := h.be.ClaimedBy(recorded.ID); by != "cli" {
		t.Fatalf("claim of %s recorded by the gate: the backend's record says %q, want cli at its answer", recorded.ID, by)
	}
	q.mu.Lock()
	q.records = false
	// Undecided: the record decides, before the answer.
	q.undecided = true
	q.mu.Unlock()
	third, answered := claim()
	if answered {
		t.Fatalf("claim of %s answered before the record that decides it", third.ID)
	}
	c.Close() // waits for the records
	if len(q.again) > 0 {
		t.Fatalf("claims the gate recorded were recorded again: %v", q.again)
	}
	for _, cl := range []pool.Claimed{first, second, recorded, third} {
		if by := h.be.ClaimedBy(cl.ID); by != "cli" {
			t.Fatalf("backend record of %s: %q, want cli", cl.ID, by)
		}
		q.mu.Lock()
		held := q.table[cl.ID]
		q.mu.Unlock()
		if !held.ClaimedAt.Equal(cl.ClaimedAt) {
			t.Fatalf("the gate holds %s for the claim at %s, want %s", cl.ID, held.ClaimedAt, cl.ClaimedAt)
		}
	}
}
