// Package pooltest holds in-memory fakes of pool.Backend and pool.Store for
// tests of the engine and of the packages above it. Test-only: nothing
// outside _test.go files imports it.
package pooltest

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

// Backend is an in-memory backend. Sandboxes are "healthy" unless marked;
// use Checker as the controller's health checker.
type Backend struct {
	Clock clockwork.Clock
	// CreateDelay is how long Create takes (on Clock).
	CreateDelay time.Duration

	mu        sync.Mutex
	seq       int
	live      map[string]pool.Ref
	order     []string // ids in creation order
	unhealthy map[string]bool
	slow      map[string]bool      // probes hang until ctx ends
	pending   map[string]time.Time // creations waiting out CreateDelay, by due time
	failNext  int
	failAll   error
	exited    map[string]pool.ExitInfo
	claimed   map[string]string // the backend's own record of claims (ClaimRecorder)
	// Changes among claimed sandboxes, for Changes: a count, and when each
	// was claimed and ended by it.
	changeSeq        uint64
	claimSeq, endSeq map[string]uint64
	terms            []string // Terminate calls, in order
	// ExitOnCreate, when set, makes every new sandbox's workload exit at
	// once with it (ExitWatcher).
	ExitOnCreate *pool.ExitInfo
	Creates      int         // Create calls, including failed ones
	CreatedAt    []time.Time // Create call times, for backoff tests
}

// NewBackend returns an empty backend on clk.
func NewBackend(clk clockwork.Clock) *Backend {
	return &Backend{Clock: clk, live: map[string]pool.Ref{}, unhealthy: map[string]bool{}, slow: map[string]bool{},
		pending: map[string]time.Time{}, exited: map[string]pool.ExitInfo{}, claimed: map[string]string{},
		claimSeq: map[string]uint64{}, endSeq: map[string]uint64{}}
}

func (b *Backend) Name() string { return "fake" }

// ErrInjected is the error of failed creations.
var ErrInjected = errors.New("injected create failure")

// FailNext makes the next n creations fail.
func (b *Backend) FailNext(n int) { b.mu.Lock(); b.failNext = n; b.mu.Unlock() }

// FailAll makes every creation fail with err until called with nil.
func (b *Backend) FailAll(err error) { b.mu.Lock(); b.failAll = err; b.mu.Unlock() }

func (b *Backend) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	b.mu.Lock()
	b.Creates++
	b.CreatedAt = append(b.CreatedAt, b.Clock.Now())
	if b.failAll != nil {
		err := b.failAll
		b.mu.Unlock()
		return pool.Ref{}, err
	}
	if b.failNext > 0 {
		b.failNext--
		b.mu.Unlock()
		return pool.Ref{}, ErrInjected
	}
	b.seq++
	id := fmt.Sprintf("sb-%04d", b.seq)
	b.mu.Unlock()
	if b.CreateDelay > 0 {
		b.mu.Lock()
		b.pending[id] = b.Clock.Now().Add(b.CreateDelay)
		wake := b.Clock.After(b.CreateDelay)
		b.mu.Unlock()
		defer func() { b.mu.Lock(); delete(b.pending, id); b.mu.Unlock() }()
		select {
		case <-ctx.Done():
			return pool.Ref{}, ctx.Err()
		case <-wake:
		}
	}
	now := b.Clock.Now()
	ref := pool.Ref{ID: id, URL: "fake://" + id, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	b.mu.Lock()
	b.live[id] = ref
	b.order = append(b.order, id)
	if b.ExitOnCreate != nil {
		b.exited[id] = *b.ExitOnCreate
	}
	b.mu.Unlock()
	return ref, nil
}

// CreateCalls is Creates, read under the backend's lock.
func (b *Backend) CreateCalls() int { b.mu.Lock(); defer b.mu.Unlock(); return b.Creates }

// MarkClaimed implements pool.ClaimRecorder: List then reports it claimed.
// One that no longer runs is pool.ErrNotFound, as the local agent says.
func (b *Backend) MarkClaimed(_ context.Context, id, by string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.live[id]; !ok {
		return fmt.Errorf("%w: %s is not running", pool.ErrNotFound, id)
	}
	b.claimed[id] = by
	b.changeSeq++
	b.claimSeq[id] = b.changeSeq
	return nil
}

// endLocked makes id no longer run; a claimed one's end is a change.
func (b *Backend) endLocked(id string) {
	if _, ok := b.live[id]; ok && b.claimed[id] != "" {
		b.changeSeq++
		b.endSeq[id] = b.changeSeq
	}
	delete(b.live, id)
}

// ClaimedBy says who the backend's record says claimed id ("" when nobody).
func (b *Backend) ClaimedBy(id string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.claimed[id]
}

// Exited implements pool.ExitWatcher.
func (b *Backend) Exited(_ context.Context, id string) (bool, pool.ExitInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	info, ok := b.exited[id]
	return ok, info, nil
}

// Terminated returns the ids of Terminate calls so far, in order.
func (b *Backend) Terminated() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.terms)
}

func (b *Backend) Terminate(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.endLocked(id)
	b.terms = append(b.terms, id)
	return nil
}

func (b *Backend) List(context.Context) ([]pool.Ref, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.Clock.Now()
	out := make([]pool.Ref, 0, len(b.live))
	kept := b.order[:0]
	for _, id := range b.order { // creation order, without sorting
		r, ok := b.live[id]
		if !ok {
			continue
		}
		if !r.ExpiresAt.After(now) { // the backend kills at expiry
			b.endLocked(id)
			continue
		}
		kept = append(kept, id)
		r.Claimed = b.claimed[id] != ""
		out = append(out, r)
	}
	b.order = kept
	return out, nil
}

// Changes is b as a pool.ChangeLister, as the local agent is: a listing
// since a cursor carries the unclaimed sandboxes and those claimed since
// it, and names the claimed ones that ended since; the zero cursor (or one
// it cannot answer) gets the full list.
type Changes struct{ *Backend }

func (c Changes) ListChanges(ctx context.Context, since pool.ListCursor) (pool.Listing, error) {
	refs, err := c.List(ctx)
	if err != nil {
		return pool.Listing{}, err
	}
	b := c.Backend
	b.mu.Lock()
	defer b.mu.Unlock()
	next := pool.ListCursor{Epoch: 1, Seq: b.changeSeq}
	if since.Epoch != 1 || since.Seq > b.changeSeq {
		return pool.Listing{Full: true, Refs: refs, Next: next}, nil
	}
	l := pool.Listing{Next: next}
	for _, r := range refs {
		if !r.Claimed || b.claimSeq[r.ID] > since.Seq {
			l.Refs = append(l.Refs, r)
		}
	}
	for id, seq := range b.endSeq {
		if seq > since.Seq {
			l.Ended = append(l.Ended, id)
		}
	}
	slices.Sort(l.Ended)
	return l, nil
}

// Settled reports that all of `creating` creations in flight are waiting
// out a CreateDelay that is not over yet: nothing will move until the clock does.
func (b *Backend) Settled(creating int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.Clock.Now()
	for _, due := range b.pending {
		if !due.After(now) {
			return false
		}
	}
	return len(b.pending) == creating
}

// Kill makes a sandbox vanish as if its process died.
func (b *Backend) Kill(id string) { b.mu.Lock(); b.endLocked(id); b.mu.Unlock() }

// Exit makes a sandbox's workload end as info says (ExitWatcher sees it).
func (b *Backend) Exit(id string, info pool.ExitInfo) {
	b.mu.Lock()
	b.endLocked(id)
	b.exited[id] = info
	b.mu.Unlock()
}

// SetUnhealthy makes a sandbox fail (or pass again) its health checks.
func (b *Backend) SetUnhealthy(id string, bad bool) {
	b.mu.Lock()
	b.unhealthy[id] = bad
	b.mu.Unlock()
}

// SetHung makes a sandbox's health checks hang until their timeout.
func (b *Backend) SetHung(id string) { b.mu.Lock(); b.slow[id] = true; b.mu.Unlock() }

// Live returns the ids of the running sandboxes.
func (b *Backend) Live() []string {
	refs, _ := b.List(context.Background())
	ids := make([]string, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	return ids
}

// Checker answers health checks from the backend's state: a dead, expired
// or unhealthy sandbox fails; a hung one waits for ctx.
func (b *Backend) Checker(ctx context.Context, url string) pool.Health {
	id := url[len("fake://"):]
	b.mu.Lock()
	r, alive := b.live[id]
	bad, hung := b.unhealthy[id], b.slow[id]
	_, exited := b.exited[id]
	b.mu.Unlock()
	now := b.Clock.Now()
	if hung {
		<-ctx.Done()
		return pool.Health{CheckedAt: now, Error: "timeout"}
	}
	if !alive || exited || !r.ExpiresAt.After(now) {
		return pool.Health{CheckedAt: now, Error: "refused"}
	}
	if bad {
		return pool.Health{CheckedAt: now, Status: 500, Error: "500"}
	}
	return pool.Health{OK: true, Status: 200, CheckedAt: now, Latency: time.Millisecond}
}

// Store is an in-memory store with the file store's semantics.
type Store struct {
	mu      sync.Mutex
	s       pool.Stored
	Err     error // when set, every call fails with it
	lease   pool.LeaseRecord
	current *memLease
	Takes   int
	closed  bool
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{} }

func (s *Store) fail() error {
	if s.Err != nil {
		return s.Err
	}
	return nil
}

// Lose empties the store, target included, as a store file moved away or a
// Modal queue cleared would.
func (s *Store) Lose() { s.mu.Lock(); s.s = pool.Stored{Epoch: s.s.Epoch + 1}; s.mu.Unlock() }

// PutBack makes old the store's content, as an old copy of a store file
// put back (restored from a backup, or by hand) would: it may list as
// pooled sandboxes claimed since. old is a Load's answer.
func (s *Store) PutBack(old pool.Stored) {
	s.mu.Lock()
	s.s = old
	s.s.Entries = slices.Clone(old.Entries)
	s.mu.Unlock()
}

// SetErr makes every call fail with err (nil to heal).
func (s *Store) SetErr(err error) { s.mu.Lock(); s.Err = err; s.mu.Unlock() }

func (s *Store) Load(context.Context) (pool.Stored, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail(); err != nil {
		return pool.Stored{}, err
	}
	out := s.s
	out.Entries = slices.Clone(s.s.Entries)
	return out, nil
}

func (s *Store) Put(_ context.Context, r pool.Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail(); err != nil {
		return err
	}
	if slices.ContainsFunc(s.s.Entries, func(e pool.Entry) bool { return e.ID == r.ID }) {
		return nil
	}
	at := len(s.s.Entries) // in age order, as the file store keeps them
	for at > 0 && r.ExpiresAt.Before(s.s.Entries[at-1].ExpiresAt) {
		at--
	}
	s.s.Entries = slices.Insert(s.s.Entries, at, pool.Entry{Ref: r})
	return nil
}

func (s *Store) Take(_ context.Context, r pool.TakeRequest) (pool.Entry, []pool.Entry, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail(); err != nil {
		return pool.Entry{}, nil, false, err
	}
	s.Takes++
	var dropped []pool.Entry
	kept := s.s.Entries[:0:0]
	var got pool.Entry
	found := false
	for _, e := range s.s.Entries {
		switch {
		case e.Claimed() || found:
			kept = append(kept, e)
		case e.ExpiresAt.Before(r.MinExpiresAt):
			if r.KeepShort {
				kept = append(kept, e)
			} else {
				dropped = append(dropped, e)
			}
		default:
			e.ClaimedBy, e.ClaimedAt = r.ClaimedBy, r.Now
			got, found = e, true
			kept = append(kept, e)
		}
	}
	s.s.Entries = kept
	return got, dropped, found, nil
}

func (s *Store) Remove(_ context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(false, ids)
}

func (s *Store) Evict(_ context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(true, ids)
}

func (s *Store) remove(pooledOnly bool, ids []string) ([]pool.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail(); err != nil {
		return nil, err
	}
	var removed []pool.Entry
	s.s.Entries = slices.DeleteFunc(s.s.Entries, func(e pool.Entry) bool {
		if slices.Contains(ids, e.ID) && !(pooledOnly && e.Claimed()) {
			removed = append(removed, e)
			return true
		}
		return false
	})
	return removed, nil
}

func (s *Store) SetTarget(_ context.Context, n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail(); err != nil {
		return err
	}
	s.s.Target, s.s.HasTarget = n, true
	return nil
}

func (s *Store) SetTiming(_ context.Context, ttl, use time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail(); err != nil {
		return err
	}
	s.s.TTL, s.s.UseDuration = ttl, use
	return nil
}

func (s *Store) SetWorkload(_ context.Context, w string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail(); err != nil {
		return err
	}
	s.s.Workload = w
	return nil
}

func (s *Store) Close() error { s.mu.Lock(); s.closed = true; s.mu.Unlock(); return nil }

// AcquireLease implements pool.Leaser in memory.
func (s *Store) AcquireLease(_ context.Context, holder pool.LeaseRecord) (pool.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.lease.IsZero() {
		return nil, &pool.LeaseHeldError{Holder: s.lease}
	}
	s.lease = holder
	l := &memLease{s: s, holder: holder, lost: make(chan struct{})}
	s.current = l
	return l, nil
}

// memLease is a lease on the in-memory store; Supersede makes it lost.
type memLease struct {
	s      *Store
	holder pool.LeaseRecord
	lost   chan struct{}
	once   sync.Once
}

func (l *memLease) Lost() <-chan struct{} { return l.lost }

func (l *memLease) Release() error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if l.s.lease.Same(l.holder) && l.s.current == l {
		l.s.lease, l.s.current = pool.LeaseRecord{}, nil
	}
	return nil
}

// Supersede hands the lease to another controller, as a stale heartbeat
// taken over would: the current holder's lease reports it lost.
func (s *Store) Supersede(holder pool.LeaseRecord) {
	s.mu.Lock()
	cur := s.current
	s.lease, s.current = holder, nil
	s.mu.Unlock()
	if cur != nil {
		cur.once.Do(func() { close(cur.lost) })
	}
}

// LeaseHolder implements pool.Leaser.
func (s *Store) LeaseHolder(context.Context) (pool.LeaseRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease, nil
}

// HoldLease takes the lease for another (pretend) controller.
func (s *Store) HoldLease(holder pool.LeaseRecord) { s.mu.Lock(); s.lease = holder; s.mu.Unlock() }
