package pool_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/local"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

func TestMain(m *testing.M) {
	local.MaybeRunChild()
	testkit.Main(m)
}

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

type harness struct {
	t   *testing.T
	clk *clockwork.FakeClock
	be  *pooltest.Backend
	st  *pooltest.Store
	c   *pool.Controller
	cfg pool.Config
	log *logLines // what the controller logs besides its events
}

func newHarness(t *testing.T, mod func(*pool.Config)) *harness {
	t.Helper()
	return newHarnessOn(t, mod, nil)
}

// newHarnessOn is newHarness with the controller's backend made by wrap
// from the fake one (nil: the fake itself).
func newHarnessOn(t *testing.T, mod func(*pool.Config), wrap func(*pooltest.Backend) pool.Backend) *harness {
	t.Helper()
	clk := clockwork.NewFakeClockAt(t0)
	cfg := pool.DefaultConfig()
	if mod != nil {
		mod(&cfg)
	}
	be := pooltest.NewBackend(clk)
	var backend pool.Backend = be
	if wrap != nil {
		backend = wrap(be)
	}
	st := pooltest.NewStore()
	log := &logLines{}
	c, err := pool.New(pool.Options{Config: cfg, Backend: backend, Store: st, Clock: clk, Checker: be.Checker, Rand: func() float64 { return 0.5 },
		Logger: slog.New(log)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &harness{t: t, clk: clk, be: be, st: st, c: c, cfg: cfg, log: log}
}

// waitLong bounds every wait on the controller's goroutines (in real time:
// they run on their own even when the clock is fake).
const waitLong = 10 * time.Second

// settle waits until every creation in flight waits on the fake clock.
func (h *harness) settle() {
	h.t.Helper()
	testkit.Eventually(h.t, waitLong, "creations to settle", func() bool { return h.be.Settled(h.c.Creating()) })
}

func (h *harness) pass() {
	h.t.Helper()
	if err := h.c.Maintain(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	h.settle()
}

func (h *harness) stored() pool.Stored {
	s, err := h.st.Load(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) pooledIDs() []string {
	var ids []string
	for _, e := range h.stored().Pooled() {
		ids = append(ids, e.ID)
	}
	return ids
}

func TestIsGoodBoundary(t *testing.T) {
	use := 2 * time.Minute
	ok := pool.Health{OK: true, CheckedAt: t0}
	bad := pool.Health{CheckedAt: t0, Error: "refused"}
	for _, tc := range []struct {
		name    string
		expires time.Time
		h       pool.Health
		want    bool
	}{
		{"exactly use-duration left is good", t0.Add(use), ok, true},
		{"a nanosecond less is not", t0.Add(use - 1), ok, false},
		{"plenty left", t0.Add(5 * time.Minute), ok, true},
		{"never checked counts as healthy", t0.Add(5 * time.Minute), pool.Health{}, true},
		{"failed health is not good", t0.Add(5 * time.Minute), bad, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pool.IsGood(tc.expires, tc.h, t0, use); got != tc.want {
				t.Fatalf("IsGood = %v, want %v", got, tc.want)
			}
		})
	}
	e := pool.Entry{Ref: pool.Ref{ExpiresAt: t0.Add(use - time.Second)}}
	if got := pool.StateOf(e, ok, t0, use); got != pool.StateExpiring {
		t.Fatalf("state %s, want expiring", got)
	}
	e.ClaimedBy = "cli"
	if got := pool.StateOf(e, ok, t0, use); got != pool.StateClaimed {
		t.Fatalf("state %s, want claimed", got)
	}
}

func TestFillToTarget(t *testing.T) {
	h := newHarness(t, nil)
	h.pass()
	testkit.Eventually(t, waitLong, "3 ready", func() bool { return len(h.pooledIDs()) == 3 })
	snap := h.c.Snapshot()
	if snap.Counts[pool.StateReady] != 3 || snap.Target != 3 {
		t.Fatalf("counts %v target %d", snap.Counts, snap.Target)
	}
	// A second pass on a full, good pool changes nothing: the seed
	// terminates a good sandbox on every pass.
	creates := h.be.Creates
	h.pass()
	if len(h.be.Terminated()) != 0 || h.be.Creates != creates {
		t.Fatalf("a pass on a good pool terminated %v and created %d", h.be.Terminated(), h.be.Creates-creates)
	}
}

func TestClaimOrderAndBackfill(t *testing.T) {
	h := newHarness(t, nil)
	h.pass()
	testkit.Eventually(t, waitLong, "3 ready", func() bool { return len(h.pooledIDs()) == 3 })
	first := h.pooledIDs()[0]
	got, err := h.c.Claim(context.Background(), pool.ClaimOptions{CheckHealth: true, By: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != first || !got.Warm || got.ClaimedBy != "cli" {
		t.Fatalf("claimed %+v, want the oldest %s, warm, by cli", got, first)
	}
	// Claimed ones stay recorded but out of the pool; a pass backfills.
	h.pass()
	testkit.Eventually(t, waitLong, "backfill", func() bool { return len(h.pooledIDs()) == 3 })
	if slices.Contains(h.pooledIDs(), first) {
		t.Fatal("the claimed sandbox is still pooled")
	}
	if snap := h.c.Snapshot(); snap.Counts[pool.StateClaimed] != 1 {
		t.Fatalf("counts %v, want 1 claimed", snap.Counts)
	}
}

func TestClaimSkipsAndTerminatesBadOnes(t *testing.T) {
	h := newHarness(t, nil)
	h.pass()
	testkit.Eventually(t, waitLong, "3 ready", func() bool { return len(h.pooledIDs()) == 3 })
	ids := h.pooledIDs()
	h.be.SetUnhealthy(ids[0], true)
	h.clk.Advance(h.cfg.HealthFresh) // the first-start probes are no longer fresh
	got, err := h.c.Claim(context.Background(), pool.ClaimOptions{CheckHealth: true, By: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != ids[1] {
		t.Fatalf("claimed %s, want %s (the first healthy)", got.ID, ids[1])
	}
	testkit.Eventually(t, waitLong, "the unhealthy one terminated", func() bool { return !slices.Contains(h.be.Live(), ids[0]) })
	// Without the health check the unhealthy one would have been handed out;
	// expiry is always checked.
	h.clk.Advance(h.cfg.TTL - h.cfg.UseDuration + time.Second)
	if err := h.claimTimingOut(time.Second); !errors.Is(err, pool.ErrNoSandbox) {
		t.Fatalf("claim with only expiring sandboxes: %v, want ErrNoSandbox", err)
	}
}

// A claimer that is not the lease holder never drops a pooled sandbox for
// being short: its timing may not be the pool's; the controller judges.
func TestClaimWithoutLeaseKeepsShortOnes(t *testing.T) {
	h := newHarness(t, nil)
	h.pass()
	testkit.Eventually(t, waitLong, "3 ready", func() bool { return len(h.pooledIDs()) == 3 })
	short := h.pooledIDs()[0]
	ref := h.stored().Pooled()[0].Ref
	if _, err := h.st.Remove(context.Background(), short); err != nil {
		t.Fatal(err)
	}
	ref.ExpiresAt = t0.Add(h.cfg.UseDuration - time.Second)
	if err := h.st.Put(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	got, err := h.c.Claim(context.Background(), pool.ClaimOptions{By: "cli"})
	if err != nil || got.ID == short {
		t.Fatalf("claimed %s %v", got.ID, err)
	}
	if !slices.Contains(h.pooledIDs(), short) || slices.Contains(h.be.Terminated(), short) {
		t.Fatalf("a claimer dropped %s: pooled %v, terminated %v", short, h.pooledIDs(), h.be.Terminated())
	}
	h.pass() // the controller's pass does drop it
	testkit.Eventually(t, waitLong, "the short one terminated", func() bool { return !slices.Contains(h.be.Live(), short) })
}

// A claim trusts a probe younger than HealthFresh and probes otherwise.
func TestClaimSkipsProbeWhenHealthIsFresh(t *testing.T) {
	h := newHarness(t, nil)
	var probes sync.Map // url -> count
	count := func(url string) int { n, _ := probes.Load(url); return n.(int) }
	checker := func(ctx context.Context, url string) pool.Health {
		n, _ := probes.LoadOrStore(url, 0)
		probes.Store(url, n.(int)+1)
		return h.be.Checker(ctx, url)
	}
	c, err := pool.New(pool.Options{Config: h.cfg, Backend: h.be, Store: h.st, Clock: h.clk, Checker: checker})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.WaitIdle(context.Background())
	ids := h.pooledIDs()
	h.clk.Advance(h.cfg.HealthFresh - time.Millisecond)
	got, err := c.Claim(context.Background(), pool.ClaimOptions{CheckHealth: true, By: "cli"})
	if err != nil || count(got.URL) != 1 {
		t.Fatalf("claimed %s (%v) with %d probes, want only the first-start one", got.ID, err, count(got.URL))
	}
	h.clk.Advance(time.Millisecond) // now exactly HealthFresh old: probed again
	got, err = c.Claim(context.Background(), pool.ClaimOptions{CheckHealth: true, By: "cli"})
	if err != nil || got.ID != ids[1] || count(got.URL) != 2 {
		t.Fatalf("claimed %s (%v) with %d probes, want a second probe", got.ID, err, count(got.URL))
	}
}

// A pool sized to 0 fails a claim at once, saying so: waiting cannot help.
func TestClaimOnTargetZeroFailsAtOnce(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.c.Resize(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	_, err := h.c.Claim(context.Background(), pool.ClaimOptions{By: "cli"}) // no clock advance
	if !errors.Is(err, pool.ErrTargetZero) || !errors.Is(err, pool.ErrNoSandbox) {
		t.Fatalf("claim on target 0: %v", err)
	}
}

func TestClaimTimesOut(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 0 })
	if err := h.claimTimingOut(5 * time.Second); !errors.Is(err, pool.ErrNoSandbox) {
		t.Fatalf("err %v, want ErrNoSandbox", err)
	}
}

// claimTimingOut runs a claim that has nothing to take and moves the fake
// clock past its timeout.
func (h *harness) claimTimingOut(timeout time.Duration) error {
	h.t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := h.c.Claim(context.Background(), pool.ClaimOptions{By: "cli", Timeout: timeout})
		done <- err
	}()
	// The waiting claim sleeps on the clock twice: its timeout and the store poll.
	if err := h.clk.BlockUntilContext(context.Background(), 2); err != nil {
		h.t.Fatal(err)
	}
	h.clk.Advance(timeout)
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		h.t.Fatal("claim did not time out")
		return nil
	}
}

func TestFailedHealthIsTerminatedAndRetried(t *testing.T) {
	// Real clock with a short health timeout: the first-start wait retries
	// every 100 ms until it.
	cfg := pool.DefaultConfig()
	cfg.Size = 1
	cfg.HealthTimeout = 300 * time.Millisecond
	be := pooltest.NewBackend(clockwork.NewRealClock())
	st := pooltest.NewStore()
	bad := map[string]bool{"sb-0001": true, "sb-0002": true}
	checker := func(ctx context.Context, url string) pool.Health {
		if bad[url[len("fake://"):]] {
			return pool.Health{CheckedAt: time.Now(), Error: "refused"}
		}
		return be.Checker(ctx, url)
	}
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Checker: checker})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, waitLong, "third try ready", func() bool {
		s, _ := st.Load(context.Background())
		return len(s.Entries) == 1
	})
	s, _ := st.Load(context.Background())
	if s.Entries[0].ID != "sb-0003" {
		t.Fatalf("pooled %s, want sb-0003", s.Entries[0].ID)
	}
	if live := be.Live(); !slices.Equal(live, []string{"sb-0003"}) {
		t.Fatalf("live %v: the sandboxes that failed health leaked", live)
	}
}

func TestNoOvershootUnderConcurrentClaimsAndPasses(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 5 })
	h.pass()
	testkit.Eventually(t, waitLong, "5 ready", func() bool { return len(h.pooledIDs()) == 5 })
	var wg sync.WaitGroup
	var mu sync.Mutex
	claimed := map[string]bool{}
	errs := make(chan error, 100)
	for i := range 50 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			got, err := h.c.Claim(context.Background(), pool.ClaimOptions{By: fmt.Sprintf("cli %d", i), Timeout: 10 * time.Second})
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if claimed[got.ID] {
				errs <- fmt.Errorf("%s handed out twice", got.ID)
			}
			claimed[got.ID] = true
		}()
		go func() {
			defer wg.Done()
			if err := h.c.Maintain(context.Background()); err != nil {
				errs <- err
			}
		}()
	}
	// Claims beyond the first 5 wait for backfill; passes keep filling.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = h.c.Maintain(context.Background())
				time.Sleep(time.Millisecond)
			}
		}
	}()
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	h.c.WaitIdle(context.Background())
	h.pass()
	h.c.WaitIdle(context.Background())
	pooled := len(h.pooledIDs())
	// Every sandbox made is pooled or claimed: exactly target + claims.
	if pooled != 5 || len(claimed) != 50 || len(h.be.Live()) != 55 || h.be.Creates != 55 {
		t.Fatalf("pooled %d, claimed %d, live %d, creates %d: want 5, 50, 55, 55", pooled, len(claimed), len(h.be.Live()), h.be.Creates)
	}
}

func TestShrinkTerminatesLeastTimeLeftFirst(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 1 })
	for range 3 {
		h.pass()
		h.c.WaitIdle(context.Background())
		if err := h.c.Resize(context.Background(), h.c.Target()+1); err != nil {
			t.Fatal(err)
		}
		h.clk.Advance(10 * time.Second) // stagger expiries
	}
	h.pass()
	h.c.WaitIdle(context.Background())
	ids := h.pooledIDs()
	if len(ids) != 4 {
		t.Fatalf("pooled %v, want 4", ids)
	}
	if err := h.c.Resize(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	h.pass()
	testkit.Eventually(t, waitLong, "shrink", func() bool { return len(h.be.Live()) == 2 })
	if got := h.pooledIDs(); !slices.Equal(got, ids[2:]) {
		t.Fatalf("kept %v, want the two with most time left %v", got, ids[2:])
	}
}

func TestResizeRejectsBadSize(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.MaxSize = 10 })
	for _, n := range []int{-1, 11} {
		if err := h.c.Resize(context.Background(), n); err == nil {
			t.Fatalf("resize %d accepted", n)
		}
	}
	if s := h.stored(); s.HasTarget {
		t.Fatalf("a rejected resize stored target %d", s.Target)
	}
}

func TestReconcileAdoptsAndReaps(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 2 })
	ctx := context.Background()
	// Sandboxes the store lost: one good, one expiring.
	good, _ := h.be.Create(ctx, h.cfg.TTL)
	h.clk.Advance(30 * time.Second)
	expiring, _ := h.be.Create(ctx, h.cfg.UseDuration+30*time.Second)
	// A store entry whose sandbox died.
	dead, _ := h.be.Create(ctx, h.cfg.TTL)
	if err := h.st.Put(ctx, dead); err != nil {
		t.Fatal(err)
	}
	h.be.Kill(dead.ID)
	h.clk.Advance(time.Minute) // past the adoption grace
	h.pass()
	h.c.WaitIdle(ctx)
	if !slices.Contains(h.be.Live(), expiring.ID) {
		t.Fatal("an orphan was terminated on the first pass that saw it")
	}
	h.pass() // the second pass that finds it unknown terminates it
	h.c.WaitIdle(ctx)
	ids := h.pooledIDs()
	if !slices.Contains(ids, good.ID) {
		t.Fatalf("pooled %v: the lost good sandbox %s was not adopted", ids, good.ID)
	}
	if slices.Contains(ids, dead.ID) {
		t.Fatalf("the dead sandbox %s is still pooled", dead.ID)
	}
	testkit.Eventually(t, waitLong, "orphan reaped", func() bool { return !slices.Contains(h.be.Live(), expiring.ID) })
	testkit.Eventually(t, waitLong, "pool at 2", func() bool { return len(h.pooledIDs()) == 2 })
}

func TestMaintainDropsExpiringAndUnhealthyButNoGoodOne(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 3 })
	ctx := context.Background()
	h.pass()
	h.c.WaitIdle(ctx)
	ids := h.pooledIDs()
	h.be.SetUnhealthy(ids[1], true)
	if bad := h.c.ProbeAll(ctx); bad != 1 {
		t.Fatalf("probe found %d bad, want 1", bad)
	}
	h.pass()
	testkit.Eventually(t, waitLong, "unhealthy terminated", func() bool { return slices.Contains(h.be.Terminated(), ids[1]) })
	for _, id := range []string{ids[0], ids[2]} {
		if slices.Contains(h.be.Terminated(), id) {
			t.Fatalf("good sandbox %s terminated", id)
		}
	}
}

func TestRotationKeepsTargetGood(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) {
		c.Size = 3
		c.TTL = 5 * time.Minute
		c.UseDuration = 2 * time.Minute
	})
	h.be.CreateDelay = 20 * time.Second
	ctx := context.Background()
	h.pass()
	h.clk.Advance(20 * time.Second)
	h.settle()
	if n := len(h.pooledIDs()); n != 3 {
		t.Fatalf("pooled %d after the first fill, want 3", n)
	}
	// Two full ttls, one pass a second (as the loop wakes at rotation points).
	for i := 0; i < int(2*h.cfg.TTL/time.Second); i++ {
		h.clk.Advance(time.Second)
		h.settle()
		h.pass()
		now := h.clk.Now()
		good := 0
		for _, e := range h.stored().Pooled() {
			if pool.HasTimeLeft(e.ExpiresAt, now, h.cfg.UseDuration) {
				good++
			}
		}
		if good < 3 {
			t.Fatalf("at +%ds only %d good sandboxes", i+1, good)
		}
	}
	_ = ctx
}

func TestNextPassWakesAtRotation(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 1; c.MaintainEvery = time.Hour })
	h.be.CreateDelay = 20 * time.Second
	h.pass()
	h.clk.Advance(20 * time.Second)
	h.c.WaitIdle(context.Background())
	snapBefore := h.stored().Pooled()[0]
	// The loop must wake when the sandbox stops counting, not an hour later.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.c.Serve(ctx, false) }()
	testkit.Eventually(t, waitLong, "next pass scheduled", func() bool { return !h.c.Snapshot().NextPass.IsZero() })
	next := h.c.Snapshot().NextPass
	// The lead is the time a creation took (20s), a quarter more, and 0.5s.
	want := pool.RotationAt(snapBefore.ExpiresAt, h.cfg.UseDuration, 25500*time.Millisecond)
	cancel()
	<-done
	if !next.Equal(want) {
		t.Fatalf("next pass at %s, want the rotation point %s", next, want)
	}
}

// Once its replacement is made, a sandbox rotated out is terminated just
// after it stops being good, not at the regular pass (an hour here).
func TestNextPassWakesWhenASandboxStopsBeingGood(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 1; c.MaintainEvery = time.Hour })
	h.be.CreateDelay = 20 * time.Second
	h.pass()
	h.clk.Advance(20 * time.Second)
	h.c.WaitIdle(context.Background())
	old := h.stored().Pooled()[0]
	// Its rotation point: the replacement starts, then is made.
	h.clk.Advance(pool.RotationAt(old.ExpiresAt, h.cfg.UseDuration, 25500*time.Millisecond).Sub(h.clk.Now()) + time.Second)
	h.pass()
	h.clk.Advance(20 * time.Second)
	h.c.WaitIdle(context.Background())
	if n := len(h.stored().Pooled()); n != 2 {
		t.Fatalf("%d pooled after the rotation, want the old one and its replacement", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.c.Serve(ctx, false) }()
	testkit.Eventually(t, waitLong, "next pass scheduled", func() bool { return !h.c.Snapshot().NextPass.IsZero() })
	next := h.c.Snapshot().NextPass
	end := old.ExpiresAt.Add(-h.cfg.UseDuration)
	if !next.After(end) || next.Sub(end) > time.Second {
		cancel()
		<-done
		t.Fatalf("next pass at %s, want just after the old sandbox stops being good at %s", next, end)
	}
	h.clk.Advance(next.Sub(h.clk.Now()))
	testkit.Eventually(t, waitLong, "the old sandbox terminated", func() bool { return !slices.Contains(h.be.Live(), old.ID) })
	cancel()
	<-done
	if ids := h.pooledIDs(); len(ids) != 1 || ids[0] == old.ID {
		t.Fatalf("pooled %v: want only the replacement", ids)
	}
}

func TestBackoffFallsOffAndRecovers(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 3; c.CreateTries = 1 })
	h.be.FailAll(pooltest.ErrInjected)
	perMinute := make([]int, 0, 10)
	for range 10 {
		before := h.be.Creates
		for range 60 {
			h.pass()
			h.c.WaitIdle(context.Background())
			h.clk.Advance(time.Second)
		}
		perMinute = append(perMinute, h.be.Creates-before)
	}
	t.Logf("attempts per minute while failing: %v", perMinute)
	if perMinute[0] < 5 || perMinute[len(perMinute)-1] > 1 {
		t.Fatalf("attempts per minute %v: want many at first, at most 1 once backed off", perMinute)
	}
	// The gaps between attempts double until the cap.
	var gaps []time.Duration
	for i := 3; i < len(h.be.CreatedAt); i++ { // the first 3 start together
		gaps = append(gaps, h.be.CreatedAt[i].Sub(h.be.CreatedAt[i-1]))
	}
	for i := 1; i < len(gaps); i++ {
		if gaps[i] < gaps[i-1] {
			t.Fatalf("gaps between attempts %v shrink", gaps)
		}
	}
	if last := gaps[len(gaps)-1]; last < time.Minute || last > 3*time.Minute {
		t.Fatalf("gaps %v: want them capped between 1m and 3m", gaps)
	}
	h.pass()
	h.c.WaitIdle(context.Background())
	if until := h.c.Snapshot().BackoffUntil; until.IsZero() {
		t.Fatalf("snapshot does not say when creations try next (now %s, gaps %v)", h.clk.Now(), gaps)
	}
	// Creations work again: at the next try the pool refills at once.
	h.be.FailAll(nil)
	for i := 0; i < 130 && len(h.pooledIDs()) < 3; i++ {
		h.pass()
		h.c.WaitIdle(context.Background())
		h.clk.Advance(time.Second)
	}
	if n := len(h.pooledIDs()); n != 3 {
		t.Fatalf("pooled %d after recovery, want 3", n)
	}
}

func TestTerminateAllLeavesNothing(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.pass()
	h.c.WaitIdle(ctx)
	if _, err := h.c.Claim(ctx, pool.ClaimOptions{By: "cli"}); err != nil {
		t.Fatal(err)
	}
	n, err := h.c.TerminateAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 || len(h.be.Live()) != 0 || len(h.stored().Entries) != 0 || h.stored().Target != 0 {
		t.Fatalf("terminated %d, live %v, stored %+v", n, h.be.Live(), h.stored())
	}
}

func TestStoreErrorIsReportedAndRetried(t *testing.T) {
	h := newHarness(t, nil)
	h.st.SetErr(errors.New("disk on fire"))
	if err := h.c.Maintain(context.Background()); err == nil {
		t.Fatal("pass succeeded on a broken store")
	}
	if got := h.c.Snapshot().LastError; got != "disk on fire" {
		t.Fatalf("last error %q", got)
	}
	h.st.SetErr(nil)
	h.pass()
	h.c.WaitIdle(context.Background())
	if h.c.Snapshot().LastError != "" {
		t.Fatal("last error not cleared by a good pass")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*pool.Config)
		want string
	}{
		{func(c *pool.Config) { c.UseDuration = c.TTL }, "use_duration"},
		{func(c *pool.Config) { c.Size = 101 }, "size"},
		{func(c *pool.Config) { c.Size = -1 }, "size"},
		{func(c *pool.Config) { c.TTL = 0 }, "ttl"},
		{func(c *pool.Config) { c.HealthEvery = -time.Second }, "health_every"},
		{func(c *pool.Config) { c.MaxCreating = 0 }, "max_creating"},
		{func(c *pool.Config) { c.Pool = "a/b" }, "pool"},
	} {
		cfg := pool.DefaultConfig()
		tc.mod(&cfg)
		err := cfg.Validate()
		var fe *pool.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.want || !containsWord(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error naming the field %s", err, tc.want)
		}
	}
	if err := pool.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func containsWord(s, w string) bool {
	return len(s) >= len(w) && slices.Contains([]string{s[:len(w)]}, w)
}

func TestWatchNeverMaintains(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.HealthEvery = time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.c.Watch(ctx) }()
	testkit.Eventually(t, waitLong, "the viewer role", func() bool { return h.c.Snapshot().Role == "viewer" })
	for range 5 {
		h.clk.Advance(time.Second)
	}
	cancel()
	<-done
	if h.be.Creates != 0 {
		t.Fatalf("a read-only watcher created %d sandboxes", h.be.Creates)
	}
	if held, _ := h.st.LeaseHolder(context.Background()); !held.IsZero() {
		t.Fatalf("a read-only watcher took the lease: %s", held)
	}
}

func TestLostLeaseStopsMaintaining(t *testing.T) {
	h := newHarness(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.c.Serve(ctx, true) }()
	testkit.Eventually(t, waitLong, "controller", func() bool { return h.c.Snapshot().Role == "controller" })
	testkit.Eventually(t, waitLong, "filled", func() bool { return len(h.pooledIDs()) == 3 })
	h.st.Supersede(pool.LeaseRecord{Host: "elsewhere", Pid: 2})
	testkit.Eventually(t, waitLong, "viewer of the new holder", func() bool {
		s := h.c.Snapshot()
		return s.Role == "viewer" && s.LeaseHolder == "pid 2 on elsewhere"
	})
	// The new holder owns the pool: this one creates nothing more.
	creates := h.be.Creates
	if _, err := h.st.Remove(context.Background(), h.pooledIDs()[0]); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		h.clk.Advance(h.cfg.MaintainEvery)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if h.be.Creates != creates {
		t.Fatalf("a controller that lost its lease created %d more", h.be.Creates-creates)
	}
}

// A controller whose heartbeat was late and whose lease a claim's backfill
// took meanwhile waits for the backfill and takes the pool back: only another
// controller (or SIGTERM) ends it (TestChaosModal: `run` exited "already
// maintained by … (a claim's backfill)").
func TestLeaseLostToABackfillIsTakenBack(t *testing.T) {
	h := newHarness(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- h.c.Serve(ctx, false) }()
	testkit.Eventually(t, waitLong, "controller", func() bool { return h.c.Snapshot().Role == "controller" })
	h.st.Supersede(pool.LeaseRecord{Host: "elsewhere", Pid: 2, Role: pool.RoleBackfill})
	served := func() {
		select {
		case err := <-done:
			t.Fatalf("Serve returned after losing the lease to a claim's backfill: %v", err)
		default:
		}
	}
	testkit.Eventually(t, waitLong, "the lease lost", func() bool { served(); return h.c.Snapshot().Role != "controller" })
	for range 4 { // the backfill holds it a moment
		h.clk.Advance(250 * time.Millisecond)
		served()
	}
	h.st.HoldLease(pool.LeaseRecord{}) // the backfill hands it over
	testkit.Eventually(t, waitLong, "the pool taken back", func() bool {
		h.clk.Advance(250 * time.Millisecond)
		return h.c.Snapshot().Role == "controller"
	})
	if held, _ := h.st.LeaseHolder(ctx); held.Role != pool.RoleController {
		t.Fatalf("lease holder %+v, want this controller", held)
	}

	// Another controller ends it.
	h.st.Supersede(pool.LeaseRecord{Host: "elsewhere", Pid: 3, Role: pool.RoleController})
	select {
	case err := <-done:
		var held *pool.LeaseHeldError
		if !errors.As(err, &held) || held.Holder.Pid != 3 {
			t.Fatalf("Serve returned %v, want the new controller named", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve went on after another controller took the pool")
	}
}

// A controller started without a size that waits for a claim's backfill to
// hand the pool over learns the stored target while it waits: a store lost
// right after it takes the lease (a Modal queue cleared) kept the flag's
// default instead (TestChaosModal seed 404: target 4 held at 3).
func TestControllerWaitingForABackfillLearnsTheTarget(t *testing.T) {
	h := newHarness(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := h.st.SetTarget(ctx, h.cfg.Size+1); err != nil {
		t.Fatal(err)
	}
	h.st.HoldLease(pool.LeaseRecord{Host: "elsewhere", Pid: 2, Role: pool.RoleBackfill})
	done := make(chan error, 1)
	go func() { done <- h.c.Serve(ctx, false) }()
	testkit.Eventually(t, waitLong, "the stored target learnt while waiting", func() bool { return h.c.Target() == h.cfg.Size+1 })
	if role := h.c.Snapshot().Role; role == "controller" {
		t.Fatalf("role %q while a backfill holds the lease", role)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Rounds counts each finished pass: tests wait for N of them to show that
// nothing happened.
func TestRoundsCountPasses(t *testing.T) {
	h := newHarness(t, nil)
	before := h.c.Rounds()
	h.pass()
	h.pass()
	if got := h.c.Rounds() - before; got != 2 {
		t.Fatalf("%d rounds after 2 passes", got)
	}
}

// gatedBackend holds the creations it is told to until released.
type gatedBackend struct {
	*pooltest.Backend
	calls atomic.Int32
	gates map[int32]chan struct{} // by call number, from 1
}

func (b *gatedBackend) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	if g, ok := b.gates[b.calls.Add(1)]; ok {
		select {
		case <-ctx.Done():
			return pool.Ref{}, ctx.Err()
		case <-g:
		}
	}
	return b.Backend.Create(ctx, ttl)
}

// passOnPutStore runs a pass right after the first Put lands: the
// sandbox is in the store while its creation is still in flight.
type passOnPutStore struct {
	*pooltest.Store
	pass func()
	once sync.Once
}

func (s *passOnPutStore) Put(ctx context.Context, r pool.Ref) error {
	if err := s.Store.Put(ctx, r); err != nil {
		return err
	}
	s.once.Do(s.pass)
	return nil
}

// A pass that loads the store between a creation's Put and its leaving
// the creations in flight counts its sandbox once: counted twice, the pool
// looked one over target and the pass cancelled the newest creation, which
// then had to be made again (TestNoOvershootUnderConcurrentClaimsAndPasses
// failed about once in 50 runs so).
func TestPassDuringPutCountsTheSandboxOnce(t *testing.T) {
	clk := clockwork.NewFakeClockAt(t0)
	cfg := pool.DefaultConfig()
	cfg.Size = 1
	be := &gatedBackend{Backend: pooltest.NewBackend(clk),
		gates: map[int32]chan struct{}{1: make(chan struct{}), 2: make(chan struct{})}}
	st := &passOnPutStore{Store: pooltest.NewStore()}
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx := context.Background()
	st.pass = func() {
		if err := c.Maintain(ctx); err != nil {
			t.Error(err)
		}
	}
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second) // the second creation starts later: the newest
	if err := c.Resize(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	close(be.gates[1]) // the first lands, and a pass runs during its Put
	testkit.Eventually(t, waitLong, "first pooled", func() bool {
		s, _ := st.Load(ctx)
		return len(s.Entries) > 0
	})
	close(be.gates[2])
	testkit.Eventually(t, waitLong, "two pooled", func() bool {
		s, _ := st.Load(ctx)
		return len(s.Entries) == 2
	})
	c.WaitIdle(ctx)
	if n := be.calls.Load(); n != 2 {
		t.Fatalf("%d creations for a target of 2: one was cancelled and made again", n)
	}
}

// WaitAtTarget reports nothing before the view has read the store: `maintain`
// printed "ready 0 of N" over a full pool, and a target of 0 counted as met
// before anything was read.
func TestWaitAtTargetStartsFromTheStore(t *testing.T) {
	h := newHarness(t, nil)
	h.pass()
	testkit.Eventually(t, waitLong, "3 ready", func() bool { return len(h.pooledIDs()) == 3 })
	second, err := pool.New(pool.Options{Config: h.cfg, Backend: h.be, Store: h.st, Clock: h.clk, Checker: h.be.Checker,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Close)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	var seen []int
	waited := make(chan error, 1)
	go func() {
		waited <- second.WaitAtTarget(ctx, func(s pool.Snapshot) { seen = append(seen, s.Counts[pool.StateReady]) })
	}()
	// Its ticker made: the wait is under way before anything is read.
	if err := h.clk.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	watched := make(chan error, 1)
	go func() { watched <- second.Watch(ctx) }()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	cancel()
	<-watched
	if len(seen) == 0 || slices.Contains(seen, 0) {
		t.Fatalf("ready counts reported: %v, want only 3s", seen)
	}
}

// deadPid is the pid of a process of this host that has ended.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// A controller restarted after kill -9 (Modal: the dead one's heartbeat
// record stays live for 3 beats) waits for the lease to lapse and takes the
// pool over, instead of refusing it to a dead process; a live holder, or
// one of another host, is still refused at once.
func TestControllerWaitsOutTheLeaseOfADeadOne(t *testing.T) {
	host, _ := os.Hostname()
	t.Run("dead on this host", func(t *testing.T) {
		h := newHarness(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		dead := pool.LeaseRecord{Host: host, Pid: deadPid(t), Role: pool.RoleController, Command: "sandboxpool run", Node: pool.NodeID()}
		h.st.HoldLease(dead)
		events, stop := h.c.Subscribe(64)
		defer stop()
		var waits []string
		said := func() bool {
			for {
				select {
				case e := <-events:
					if e.Kind == pool.EventLeaseWait {
						waits = append(waits, e.Message)
					}
				default:
					return len(waits) > 0
				}
			}
		}
		done := make(chan error, 1)
		go func() { done <- h.c.Serve(ctx, false) }()
		testkit.Eventually(t, waitLong, "the wait said", func() bool { return said() && h.c.Snapshot().Role == pool.RoleViewer })
		h.st.HoldLease(pool.LeaseRecord{}) // its heartbeat lapsed
		testkit.Eventually(t, waitLong, "the pool taken over", func() bool {
			h.clk.Advance(250 * time.Millisecond)
			return h.c.Snapshot().Role == pool.RoleController
		})
		if said(); len(waits) != 1 || !strings.Contains(waits[0], fmt.Sprintf("pid %d on this host, is gone", dead.Pid)) {
			t.Errorf("waits said: %q", waits)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	for name, holder := range map[string]pool.LeaseRecord{
		"alive on this host":   {Host: host, Pid: os.Getppid(), Role: pool.RoleController, Node: pool.NodeID()},
		"dead on another host": {Host: "elsewhere", Pid: deadPid(t), Role: pool.RoleController, Node: "another-boot/pid:[1]"},
		// The same host name on another machine (VMs of one image): its
		// pid means nothing here; a record without a node is not ours.
		"dead, this host's name, another node": {Host: host, Pid: deadPid(t), Role: pool.RoleController, Node: "another-boot/pid:[1]"},
		"dead, this host's name, no node":      {Host: host, Pid: deadPid(t), Role: pool.RoleController},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.st.HoldLease(holder)
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			var held *pool.LeaseHeldError
			if err := h.c.Serve(ctx, false); !errors.As(err, &held) || !held.Holder.Same(holder) {
				t.Fatalf("Serve: %v, want the lease held by %s", err, holder)
			}
		})
	}
}
