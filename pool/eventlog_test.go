package pool_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jonboulle/clockwork"
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
	onMark func()
}

func (b *hookBackend) MarkClaimed(ctx context.Context, id, by string) error {
	if b.onMark != nil {
		b.onMark()
	}
	return b.Backend.MarkClaimed(ctx, id, by)
}

// eventLog records every event a controller emits (what its log says).
type eventLog struct {
	mu  sync.Mutex
	evs []pool.Event
}

func (l *eventLog) add(e pool.Event) { l.mu.Lock(); l.evs = append(l.evs, e); l.mu.Unlock() }

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
			if when == "during the take" {
				st.afterTake = racingPass
			} else {
				be.onMark = racingPass
			}
			got, err := c.Claim(ctx, pool.ClaimOptions{By: "api 127.0.0.1:5555"})
			if err != nil {
				t.Fatal(err)
			}
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
