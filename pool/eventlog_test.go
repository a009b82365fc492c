package pool_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// hookStore runs afterTake once a Take succeeded, before it returns: what
// a pass that loads the store just then sees.
type hookStore struct {
	*pooltest.Store
	afterTake func()
}

func (s *hookStore) Take(ctx context.Context, r pool.TakeRequest) (pool.Entry, []pool.Entry, bool, error) {
	e, dropped, ok, err := s.Store.Take(ctx, r)
	if ok && s.afterTake != nil {
		s.afterTake()
	}
	return e, dropped, ok, err
}

// hookBackend runs onMark when a claim is recorded: after the store's take,
// before the claim's event.
type hookBackend struct {
	*pooltest.Backend
	onMark func(id string)
}

func (b *hookBackend) MarkClaimed(ctx context.Context, id, by string) error {
	if b.onMark != nil {
		b.onMark(id)
	}
	return b.Backend.MarkClaimed(ctx, id, by)
}

// filledWithLog is a harness at its target, with every event emitted from
// then on in log.
func filledWithLog(t *testing.T) (*harness, *eventLog) {
	t.Helper()
	h := newHarness(t, nil)
	h.pass()
	h.c.WaitIdle(context.Background())
	log := &eventLog{}
	h.c.Observe(log.add)
	return h, log
}

// eventLog records every event a controller emits (what its log says).
type eventLog struct {
	mu  sync.Mutex
	evs []pool.Event
}

func (l *eventLog) add(e pool.Event) { l.mu.Lock(); l.evs = append(l.evs, e); l.mu.Unlock() }

func (l *eventLog) all() []pool.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.evs)
}

func (l *eventLog) of(kind pool.EventKind, id string) []pool.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []pool.Event
	for _, e := range l.evs {
		if e.Kind == kind && (id == "" || e.SandboxID == id) {
			out = append(out, e)
		}
	}
	return out
}

// A claim of this process is said and counted once, even when a pass loads
// the store while the claim is on its way out (the soak's log showed one
// claim twice, 14 ms apart: once as another process's, seen in the store).
func TestOwnClaimSeenInTheStoreIsSaidOnce(t *testing.T) {
	for _, when := range []string{"during the take", "before the claim record"} {
		t.Run(when, func(t *testing.T) {
			clk := clockwork.NewFakeClockAt(t0)
			be := &hookBackend{Backend: pooltest.NewBackend(clk)}
			st := &hookStore{Store: pooltest.NewStore()}
			c, err := pool.New(pool.Options{Config: pool.DefaultConfig(), Backend: be, Store: st, Clock: clk,
				Checker: be.Checker, Rand: func() float64 { return 0.5 }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			ctx := context.Background()
			if err := c.Maintain(ctx); err != nil {
				t.Fatal(err)
			}
			c.WaitIdle(ctx)
			var log eventLog
			c.Observe(log.add)
			racingPass := func() {
				if err := c.Maintain(ctx); err != nil {
					t.Error(err)
				}
			}
			// What a pass or the store poll does with the store, inside the
			// claim (a whole pass cannot run there: before it lists the
			// backend it waits for this claim's record).
			racingLoad := func() {
				if _, err := c.Refresh(ctx, false); err != nil {
					t.Error(err)
				}
			}
			if when == "during the take" {
				st.afterTake = racingLoad
			} else {
				be.onMark = func(string) { racingLoad() }
			}
			got, err := c.Claim(ctx, pool.ClaimOptions{By: "api 127.0.0.1:5555"})
			if err != nil {
				t.Fatal(err)
			}
			c.WaitIdle(ctx) // the claim record is made beside the answer
			st.afterTake, be.onMark = nil, nil
			racingPass() // and once more after it
			claims := log.of(pool.EventClaimed, got.ID)
			if len(claims) != 1 || claims[0].Remote || !claims[0].Warm {
				t.Fatalf("claim events of %s: %+v, want one, this process's, warm", got.ID, claims)
			}
			if s := c.Snapshot().Stats; s.ClaimsWarm != 1 || s.ClaimsWaited != 0 {
				t.Fatalf("stats %+v, want one warm claim", s)
			}
		})
	}
}

// logLines is a slog.Handler that keeps every record, at every level.
type logLines struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logLines) WithGroup(string) slog.Handler            { return l }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	return nil
}

// about returns the records whose message names id.
func (l *logLines) about(id string) []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []slog.Record
	for _, r := range l.recs {
		if strings.Contains(r.Message, id) {
			out = append(out, r)
		}
	}
	return out
}

// A claimed sandbox that ends early is logged once, with how it ended, when
// a pass notices it: an operator otherwise never learns that a claimer lost
// it. Its expiry is routine: a debug line. Neither is an event of the pool
// (SPEC has no kind for it).
func TestClaimedSandboxEndIsSaid(t *testing.T) {
	h, events := filledWithLog(t)
	ctx := context.Background()
	claim := func() string {
		t.Helper()
		got, err := h.c.Claim(ctx, pool.ClaimOptions{By: "cli"})
		if err != nil {
			t.Fatal(err)
		}
		return got.ID
	}
	killed, crashed, vanished := claim(), claim(), claim()
	h.be.Exit(killed, pool.ExitInfo{Code: -9})
	h.be.Exit(crashed, pool.ExitInfo{Code: 3, Tail: "serving\nFATAL: out of disk\n"})
	h.be.Kill(vanished)        // no exit known
	h.clk.Advance(time.Second) // the pass lists after they were created
	h.pass()
	h.pass() // said once
	want := map[string]string{
		killed:   killed + ", claimed by cli, ended: signal 9 (killed)",
		crashed:  crashed + ", claimed by cli, ended: exit code 3: FATAL: out of disk",
		vanished: vanished + ", claimed by cli, ended: how is unknown",
	}
	for id, msg := range want {
		if got := h.log.about(id); len(got) != 1 || got[0].Message != msg || got[0].Level != slog.LevelInfo {
			t.Errorf("log lines about %s: %+v, want one at INFO saying %q", id, got, msg)
		}
	}
	// One that lives out its ttl ends at its expiry.
	last := claim()
	h.clk.Advance(h.cfg.TTL)
	h.pass()
	msg := last + ", claimed by cli, ended: expired"
	if got := h.log.about(last); len(got) != 1 || got[0].Message != msg || got[0].Level != slog.LevelDebug {
		t.Errorf("log lines about %s past its ttl: %+v, want one at DEBUG saying %q", last, got, msg)
	}
	for _, id := range []string{killed, crashed, vanished, last} {
		claimed := false
		for _, e := range events.all() {
			switch {
			case e.SandboxID != id:
			case claimed:
				t.Errorf("claimed %s ended: event %s %q", id, e.Kind, e.Message)
			case e.Kind == pool.EventClaimed:
				claimed = true
			}
		}
	}
}

// A termination says who asked: the controller (its health checks, expiry,
// surplus) or a claim that met the sandbox, for its claimer; never the
// claimer as if it had asked for this sandbox's end.
func TestTerminationSaysWhoAsked(t *testing.T) {
	h, log := filledWithLog(t)
	ctx := context.Background()
	ids := h.pooledIDs()
	h.be.SetUnhealthy(ids[0], true)
	h.clk.Advance(h.cfg.HealthFresh) // the claim probes again
	if _, err := h.c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "api 127.0.0.1:5555"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, waitLong, "the claim's termination", func() bool { return len(log.of(pool.EventTerminated, ids[0])) == 1 })
	e := log.of(pool.EventTerminated, ids[0])[0]
	if want := ids[0] + " terminated (unhealthy) by a claim for api 127.0.0.1:5555"; e.Message != want || e.By != pool.ClaimBy("api 127.0.0.1:5555") {
		t.Errorf("claim's termination: by %q %q, want %q", e.By, e.Message, want)
	}
	h.be.SetUnhealthy(ids[2], true)
	// Probed and judged until it goes: the claim's probe ahead, started
	// before it turned bad, may land after a first sweep.
	if !testkit.Until(waitLong, func() bool {
		if len(log.of(pool.EventTerminated, ids[2])) == 0 {
			h.c.ProbeAll(ctx)
			_ = h.c.Maintain(ctx)
		}
		return len(log.of(pool.EventTerminated, ids[2])) == 1
	}) {
		log.mu.Lock()
		for _, e := range log.evs {
			t.Logf("%s %s %s %s", e.Kind, e.SandboxID, e.By, e.Message)
		}
		log.mu.Unlock()
		t.Fatalf("no controller's termination of %s (pooled %v)", ids[2], h.pooledIDs())
	}
	e = log.of(pool.EventTerminated, ids[2])[0]
	if want := ids[2] + " terminated (unhealthy) by the controller"; e.Message != want || e.By != pool.ByController {
		t.Errorf("controller's termination: by %q %q, want %q", e.By, e.Message, want)
	}
}

// A claim that trusts a fresh probe never hands out a sandbox whose
// workload died since: the backend's claim record says it is gone, and the
// claim takes the next one (soak: "record the claim in the backend: ... is
// not running" was logged and the dead sandbox handed out).
func TestClaimSkipsASandboxGoneSinceItsProbe(t *testing.T) {
	h, log := filledWithLog(t)
	ctx := context.Background()
	ids := h.pooledIDs()
	h.be.Kill(ids[0]) // its first-start probe is still fresh: the claim does not probe
	got, err := h.c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != ids[1] {
		t.Fatalf("claimed %s, want %s (the first one alive)", got.ID, ids[1])
	}
	testkit.Eventually(t, waitLong, "the gone one terminated", func() bool { return len(log.of(pool.EventTerminated, ids[0])) == 1 })
	if errs := log.of(pool.EventError, ""); len(errs) != 0 {
		t.Fatalf("errors %+v: a gone sandbox is not a backend error", errs)
	}
	if p := h.c.Problems(); len(p) != 0 {
		t.Fatalf("problems %+v", p)
	}
}

// A creation whose workload was killed, or vanished with its local agent,
// says so in words, not as "exit code -1" followed by the agent's own note.
func TestCreationEndedEarlySaysHow(t *testing.T) {
	for _, tc := range []struct {
		info pool.ExitInfo
		want string
	}{
		{pool.ExitInfo{Code: -9, Tail: "sandboxpool: the workload exited (signal 9 (killed))\n"}, "was killed by signal 9 (killed) before it got healthy"},
		{pool.ExitInfo{Code: -1, Unknown: true, Tail: "(no local agent runs: the sandbox is gone)"}, "went away before it got healthy: how is unknown (the backend no longer knows it)"},
	} {
		h := newHarness(t, func(c *pool.Config) { c.Size = 1; c.CreateTries = 1 })
		h.be.ExitOnCreate = &tc.info
		var log eventLog
		h.c.Observe(log.add)
		if err := h.c.Maintain(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.c.WaitIdle(context.Background())
		failed := log.of(pool.EventCreateFailed, "")
		if len(failed) != 1 || !strings.HasSuffix(failed[0].Message, tc.want) {
			t.Errorf("creation failures %+v, want one ending %q", failed, tc.want)
		}
	}
}

// A claim seen in the store before its claimer's journal line is counted
// by a guess (waited, when this process never saw the sandbox pooled); the
// claimer's own word, replayed from the journal, corrects the count
// (TestDashboardTmuxViewer: a warm CLI claim counted as waited under load).
func TestReplayCorrectsAGuessedClaim(t *testing.T) {
	h := newHarness(t, func(c *pool.Config) { c.Size = 0 })
	ctx := context.Background()
	h.pass() // loaded: an empty pool
	ref, err := h.be.Create(ctx, h.cfg.TTL)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.st.Put(ctx, ref); err != nil { // pooled by another process
		t.Fatal(err)
	}
	other, err := pool.New(pool.Options{Config: h.cfg, Backend: h.be, Store: h.st, Clock: h.clk, Checker: h.be.Checker})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	got, err := other.Claim(ctx, pool.ClaimOptions{By: "cli"})
	if err != nil || got.ID != ref.ID || !got.Warm {
		t.Fatalf("the other process's claim: %+v %v, want %s warm", got, err, ref.ID)
	}
	h.pass() // sees it claimed, never saw it pooled: guesses waited
	if s := h.c.Snapshot().Stats; s.ClaimsWarm+s.ClaimsWaited != 1 {
		t.Fatalf("stats %+v, want the claim counted once", s)
	}
	h.c.Replay(pool.Event{Kind: pool.EventClaimed, SandboxID: ref.ID, By: "cli", Warm: true, Time: h.clk.Now()})
	if s := h.c.Snapshot().Stats; s.ClaimsWarm != 1 || s.ClaimsWaited != 0 {
		t.Fatalf("stats %+v after the claimer's word: want 1 warm, 0 waited", s)
	}
}

// A sandbox that dies between a claim's probe and its claim record is its
// claimer's loss, not a backend fault: no error event, no problem (the
// soak logged a WARN error for it, which /healthz would show as a 503).
func TestClaimRecordOfADeadSandboxIsNoBackendError(t *testing.T) {
	clk := clockwork.NewFakeClockAt(t0)
	be := &hookBackend{Backend: pooltest.NewBackend(clk)}
	cfg := pool.DefaultConfig()
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: pooltest.NewStore(), Clock: clk, Checker: be.Checker})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	c.WaitIdle(ctx)
	log := &eventLog{}
	c.Observe(log.add)
	clk.Advance(cfg.HealthFresh) // the claim probes: its record may go beside the answer
	be.onMark = be.Kill
	if _, err := c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "cli"}); err != nil {
		t.Fatal(err)
	}
	c.Close() // waits for the claim's record
	if errs := log.of(pool.EventError, ""); len(errs) != 0 {
		t.Fatalf("error events %+v", errs)
	}
	if p := c.Problems(); len(p) != 0 {
		t.Fatalf("problems %+v", p)
	}
}

// A claim by another process reaches this process's observers once (run's
// log, autosize's demand, the cost), whether its journal line or the store
// shows it first. Before, a claim replayed from the journal first reached
// the dashboard only: the store's sighting then counted nothing new, and
// run's log and autosize never heard of it (2 of 3 CLI claims in a trial).
func TestAClaimElsewhereReachesObserversOnce(t *testing.T) {
	for _, journalFirst := range []bool{true, false} {
		h := newHarness(t, func(c *pool.Config) { c.Size = 0 })
		ctx := context.Background()
		h.pass()
		ref, err := h.be.Create(ctx, h.cfg.TTL)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.st.Put(ctx, ref); err != nil { // pooled by another process
			t.Fatal(err)
		}
		var log eventLog
		h.c.Observe(log.add)
		other, err := pool.New(pool.Options{Config: h.cfg, Backend: h.be, Store: h.st, Clock: h.clk, Checker: h.be.Checker})
		if err != nil {
			t.Fatal(err)
		}
		got, err := other.Claim(ctx, pool.ClaimOptions{By: "cli"})
		other.Close()
		if err != nil || got.ID != ref.ID {
			t.Fatalf("the other process's claim: %+v %v", got, err)
		}
		word := pool.Event{Kind: pool.EventClaimed, SandboxID: ref.ID, By: "cli", Warm: true, Duration: time.Millisecond, Time: h.clk.Now()}
		if journalFirst {
			h.c.Replay(word)
			h.pass()
		} else {
			h.pass()
			h.c.Replay(word)
		}
		claims := log.of(pool.EventClaimed, ref.ID)
		if len(claims) != 1 || !claims[0].Remote {
			t.Errorf("journal first %v: observers saw %+v, want the claim once, as another process's", journalFirst, claims)
		}
		if s := h.c.Snapshot().Stats; s.ClaimsWarm != 1 || s.ClaimsWaited != 0 {
			t.Errorf("journal first %v: stats %+v, want 1 warm", journalFirst, s)
		}
	}
}
