package ui

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/pool"
)

// t0 is the fake clock's start: every golden shows times relative to it.
var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// fakeEngine is a scripted Engine that records what the dashboard asks.
type fakeEngine struct {
	clk *clockwork.FakeClock
	cfg pool.Config

	mu    sync.Mutex
	snap  pool.Snapshot
	calls []string
	subs  []chan pool.Event

	claimErr, resizeErr, termErr, maintainErr error
	claimBlock                                chan struct{} // when set, Claim waits for it
}

func newFakeEngine(clk *clockwork.FakeClock) *fakeEngine {
	cfg := pool.DefaultConfig()
	return &fakeEngine{clk: clk, cfg: cfg, snap: pool.Snapshot{
		Pool: "default", Backend: "local", Target: 3, Role: "controller",
		NextPass: t0.Add(27 * time.Second),
	}}
}

// set replaces the sandboxes (and recounts) under the lock.
func (f *fakeEngine) set(mod func(s *pool.Snapshot)) {
	f.mu.Lock()
	mod(&f.snap)
	f.mu.Unlock()
}

func (f *fakeEngine) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeEngine) record(c string) {
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
}

func (f *fakeEngine) Snapshot() pool.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.snap
	s.Now = f.clk.Now()
	s.Sandboxes = slices.Clone(f.snap.Sandboxes)
	s.Counts = map[pool.State]int{}
	for _, sb := range s.Sandboxes {
		s.Counts[sb.State]++
	}
	return s
}

func (f *fakeEngine) Subscribe(buffer int) (<-chan pool.Event, func()) {
	ch := make(chan pool.Event, buffer)
	f.mu.Lock()
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if i := slices.Index(f.subs, ch); i >= 0 {
				f.subs = slices.Delete(f.subs, i, i+1)
				close(ch)
			}
		})
	}
}

func (f *fakeEngine) emit(e pool.Event) {
	if e.Time.IsZero() {
		e.Time = f.clk.Now()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.subs {
		select {
		case ch <- e:
		default:
		}
	}
}

func (f *fakeEngine) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fakeEngine) Claim(ctx context.Context, o pool.ClaimOptions) (pool.Claimed, error) {
	f.record(fmt.Sprintf("claim by=%s health=%v", o.By, o.CheckHealth))
	if f.claimBlock != nil {
		select {
		case <-f.claimBlock:
		case <-ctx.Done():
			return pool.Claimed{}, ctx.Err()
		}
	}
	if f.claimErr != nil {
		f.emit(pool.Event{Kind: pool.EventClaimTimeout, By: o.By, Err: f.claimErr.Error(),
			Message: "claim by " + o.By + " failed: " + f.claimErr.Error()})
		return pool.Claimed{}, f.claimErr
	}
	f.mu.Lock()
	var got *pool.Sandbox
	for i := range f.snap.Sandboxes {
		if f.snap.Sandboxes[i].State == pool.StateReady {
			got = &f.snap.Sandboxes[i]
			break
		}
	}
	if got == nil {
		f.mu.Unlock()
		return pool.Claimed{}, pool.ErrNoSandbox
	}
	got.State, got.ClaimedBy, got.ClaimedAt = pool.StateClaimed, o.By, f.clk.Now()
	c := pool.Claimed{Entry: pool.Entry{Ref: pool.Ref{ID: got.ID, URL: got.URL, CreatedAt: got.CreatedAt, ExpiresAt: got.ExpiresAt},
		ClaimedBy: o.By, ClaimedAt: f.clk.Now()}, Warm: true}
	f.mu.Unlock()
	f.emit(pool.Event{Kind: pool.EventClaimed, SandboxID: c.ID, By: o.By, Warm: true,
		Message: pool.ShortID(c.ID) + " claimed by " + o.By + " (warm)"})
	return c, nil
}

func (f *fakeEngine) Resize(_ context.Context, n int) error {
	f.record(fmt.Sprintf("resize %d", n))
	if f.resizeErr != nil {
		return f.resizeErr
	}
	if err := f.cfg.ValidateSize(n); err != nil {
		return err
	}
	f.mu.Lock()
	old := f.snap.Target
	f.snap.Target = n
	f.mu.Unlock()
	f.emit(pool.Event{Kind: pool.EventResized, Message: fmt.Sprintf("target %d -> %d", old, n)})
	return nil
}

func (f *fakeEngine) SetAutosize(on bool) {
	f.record(fmt.Sprintf("autosize %v", on))
	f.mu.Lock()
	f.snap.Autosize.On = on
	f.mu.Unlock()
}

func (f *fakeEngine) Terminate(_ context.Context, id string) error {
	f.record("terminate " + id)
	if f.termErr != nil {
		return f.termErr
	}
	f.mu.Lock()
	i := slices.IndexFunc(f.snap.Sandboxes, func(s pool.Sandbox) bool { return s.ID == id })
	if i < 0 {
		f.mu.Unlock()
		return fmt.Errorf("%s: %w", id, pool.ErrNotFound)
	}
	f.snap.Sandboxes = slices.Delete(f.snap.Sandboxes, i, i+1)
	f.mu.Unlock()
	f.emit(pool.Event{Kind: pool.EventTerminated, SandboxID: id, Reason: pool.ReasonUser,
		Message: pool.ShortID(id) + " terminated (user)"})
	return nil
}

func (f *fakeEngine) Maintain(context.Context) error {
	f.record("maintain")
	return f.maintainErr
}

func (f *fakeEngine) Config() pool.Config { return f.cfg }

var errBackend = errors.New("list sandboxes: connection refused")

// Rows for scripted snapshots.

func ready(n int, age time.Duration) pool.Sandbox {
	id := fmt.Sprintf("sb-%04d", n)
	created := t0.Add(-age)
	return pool.Sandbox{ID: id, URL: fmt.Sprintf("http://127.0.0.1:%d", 40100+n), State: pool.StateReady,
		CreatedAt: created, ExpiresAt: created.Add(5 * time.Minute),
		Health: pool.Health{OK: true, Status: 200, Latency: time.Millisecond, CheckedAt: t0.Add(-2 * time.Second)}}
}

func withState(sb pool.Sandbox, st pool.State) pool.Sandbox { sb.State = st; return sb }

func creating(key string, age time.Duration) pool.Sandbox {
	return pool.Sandbox{ID: key, State: pool.StateCreating, CreatedAt: t0.Add(-age)}
}

func warming(n int, age time.Duration) pool.Sandbox {
	sb := ready(n, age)
	sb.State = pool.StateWarming
	sb.Health = pool.Health{CheckedAt: t0.Add(-100 * time.Millisecond), Error: "refused"}
	return sb
}
