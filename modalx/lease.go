package modalx

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The controller lease (SPEC Behaviour 6) lives in two kinds of partitions:
//
//	"lease"        heartbeat records {holder, epoch, at}; the one with the highest
//	               epoch (the last of equals) is current. The holder appends one
//	               every heartbeat interval; it is stale after 3 intervals.
//	"elect-<n>"    bids for epoch n. Whoever finds the lease free or stale bids for
//	               the next epoch, then reads the head: the first bid wins, so
//	               two controllers taking over at once cannot both win.
//	"lease-want"   a controller that waits while a claim's backfill holds the
//	               lease says so here: backfills do not take the lease while such
//	               a record is fresh, and a backfill holding it hands it over
//	               (releases it) at its next heartbeat.
const (
	partLease = "lease"
	partWant  = "lease-want"
)

// wantRec says that a controller waits for the lease.
type wantRec struct {
	Holder pool.LeaseRecord `json:"holder"`
	At     time.Time        `json:"at"`
}

func isBackfill(r pool.LeaseRecord) bool { return r.Role == pool.RoleBackfill }

// now is the lease's clock: when records were written and whether they are
// fresh. Tests move it alone (leaseNow); reservations keep to the core's.
func (s *Store) now() time.Time {
	if s.c.leaseNow != nil {
		return s.c.leaseNow()
	}
	return s.c.clk.Now()
}

// controllerGrace is how long the lease of a controller whose heartbeat is
// late stays out of reach of a claim's backfill: a slow control plane or a
// paused process is not a controller gone. Another controller (a restart
// after kill -9) takes it over once stale; a claim only after this.
func (s *Store) controllerGrace() time.Duration { return 2 * s.staleAfter() }

type leaseRec struct {
	Holder   pool.LeaseRecord `json:"holder"`
	Epoch    int64            `json:"epoch"`
	At       time.Time        `json:"at"`
	Released bool             `json:"released,omitempty"`
}

type electRec struct {
	Holder pool.LeaseRecord `json:"holder"`
	Nonce  string           `json:"nonce"`
}

func electPart(epoch int64) string { return fmt.Sprintf("elect-%d", epoch) }

func (s *Store) staleAfter() time.Duration { return 3 * s.c.opts.LeaseHeartbeat }

// currentLease reads the heartbeat records; n is how many there are.
func (s *Store) currentLease(ctx context.Context) (cur leaseRec, n int, err error) {
	its, err := s.items(ctx, partLease)
	if err != nil {
		return cur, 0, err
	}
	for _, it := range its {
		var r leaseRec
		if decode(it, &r) && r.Epoch >= cur.Epoch {
			cur = r
		}
	}
	return cur, len(its), nil
}

func (s *Store) live(r leaseRec, now time.Time) bool {
	return !r.Holder.IsZero() && !r.Released && now.Sub(r.At) < s.staleAfter()
}

// LeaseHolder says who maintains the pool now, "" when nobody does (or the
// holder's heartbeat is stale).
func (s *Store) LeaseHolder(ctx context.Context) (pool.LeaseRecord, error) {
	cur, _, err := s.currentLease(ctx)
	if err != nil {
		return pool.LeaseRecord{}, storeErr("reading the controller lease", err)
	}
	if s.live(cur, s.now()) {
		return cur.Holder, nil
	}
	return pool.LeaseRecord{}, nil
}

// AcquireLease takes the controller lease for holder when it is free or
// stale, and keeps it with a heartbeat until Release. It fails with a
// *pool.LeaseHeldError naming the live holder otherwise.
func (s *Store) AcquireLease(ctx context.Context, holder pool.LeaseRecord) (pool.Lease, error) {
	t0 := s.c.clk.Now()
	cur, _, err := s.currentLease(ctx)
	if err != nil {
		return nil, storeErr("reading the controller lease", err)
	}
	if now := s.now(); !cur.Holder.Same(holder) {
		if s.live(cur, now) {
			if isBackfill(cur.Holder) && !isBackfill(holder) {
				s.want(ctx, holder, now) // it hands the pool over at its next beat
			}
			return nil, &pool.LeaseHeldError{Holder: cur.Holder}
		}
		if isBackfill(holder) {
			// A claim backfills only a pool that no controller wants: none
			// waits for it, and the last one was not heard of lately.
			w, ok, err := s.wanted(ctx, now)
			if err != nil {
				return nil, storeErr("reading the controller lease", err)
			}
			if ok {
				return nil, &pool.LeaseHeldError{Holder: w.Holder}
			}
			if !cur.Released && !cur.Holder.IsZero() && !isBackfill(cur.Holder) && now.Sub(cur.At) < s.controllerGrace() {
				return nil, &pool.LeaseHeldError{Holder: cur.Holder}
			}
		}
	}
	epoch := cur.Epoch + 1
	for try := 0; ; try++ {
		mine := electRec{Holder: holder, Nonce: nonce()}
		if err := s.put(ctx, electPart(epoch), encode(mine)); err != nil {
			return nil, storeErr("taking the controller lease", err)
		}
		v, ok, err := s.head(ctx, electPart(epoch))
		if err != nil {
			return nil, storeErr("taking the controller lease", err)
		}
		var first electRec
		if ok && decode(v, &first) && first.Nonce == mine.Nonce {
			break
		}
		if !ok && try < 3 {
			continue // the bid vanished with the queue (cleared): bid again
		}
		// A winner that never wrote its lease record within the stale
		// limit died in between (a claim killed mid-acquire): its epoch
		// is skipped, or it would hold the pool for ever. One that wakes
		// up later finds a higher epoch current and loses.
		if try < 3 && !first.Holder.Since.IsZero() && s.now().Sub(first.Holder.Since) > s.staleAfter() {
			epoch++
			continue
		}
		return nil, &pool.LeaseHeldError{Holder: first.Holder}
	}
	if err := s.put(ctx, partLease, encode(leaseRec{Holder: holder, Epoch: epoch, At: s.now().UTC()})); err != nil {
		return nil, storeErr("taking the controller lease", err)
	}
	hctx, cancel := context.WithCancel(context.Background())
	l := &Lease{s: s, holder: holder, cancel: cancel, lost: make(chan struct{}), done: make(chan struct{}), now: make(chan struct{}, 1)}
	l.epoch.Store(epoch)
	l.extend(t0)
	// Reservations of a holder that did not release are used only once
	// nothing it was acknowledged can still be on its way (reserve.go); a
	// lease partition found empty may be one the control plane lost, its
	// holder still alive.
	inheritAt := s.c.clk.Now()
	if !cur.Released {
		inheritAt = inheritAt.Add(s.staleAfter())
	}
	s.startHolding(l, holder, inheritAt)
	go l.heartbeat(hctx)
	return l, nil
}

// want records that holder, a controller, waits for the lease; at most one
// record a heartbeat, and the partition is kept short.
func (s *Store) want(ctx context.Context, holder pool.LeaseRecord, now time.Time) {
	s.wantMu.Lock()
	if now.Sub(s.wantedAt) < s.c.opts.LeaseHeartbeat {
		s.wantMu.Unlock()
		return
	}
	s.wantedAt = now
	s.wantMu.Unlock()
	if its, err := s.items(ctx, partWant); err == nil && len(its) >= 2 {
		_, _, _ = s.pop(ctx, partWant)
	}
	_ = s.put(ctx, partWant, encode(wantRec{Holder: holder, At: now.UTC()}))
}

// wanted returns the newest want record when it is fresh: its controller
// asked within the last 3 heartbeats and is still waiting.
func (s *Store) wanted(ctx context.Context, now time.Time) (wantRec, bool, error) {
	its, err := s.items(ctx, partWant)
	if err != nil {
		return wantRec{}, false, err
	}
	var w wantRec
	for _, it := range its {
		var r wantRec
		if decode(it, &r) && r.At.After(w.At) {
			w = r
		}
	}
	return w, !w.Holder.IsZero() && now.Sub(w.At) < s.staleAfter(), nil
}

// Lease is a held controller lease. It implements pool.Lease.
type Lease struct {
	s      *Store
	hmu    sync.Mutex
	holder pool.LeaseRecord // guarded by hmu
	epoch  atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}
	now    chan struct{} // a heartbeat at once

	lostOnce sync.Once
	lost     chan struct{}
	relOnce  sync.Once
	relErr   error

	// valid is when this holder stops serving claims from its reservations
	// (unix ns): 2 heartbeats after it last read the lease and found itself
	// current, a heartbeat before anyone may take the lease over.
	valid atomic.Int64
	beats atomic.Int64 // heartbeats written: tests wait for N of them
}

func (l *Lease) extend(t0 time.Time) {
	l.valid.Store(t0.Add(l.s.staleAfter() - l.s.c.opts.LeaseHeartbeat).UnixNano())
}

func (l *Lease) validUntil() time.Time { return time.Unix(0, l.valid.Load()) }

// Holder is who holds this lease.
func (l *Lease) Holder() pool.LeaseRecord {
	l.hmu.Lock()
	defer l.hmu.Unlock()
	return l.holder
}

// UpdateHolder changes what the lease record says of its holder (the API
// bound after the lease was taken); the next heartbeat, at once, writes it.
func (l *Lease) UpdateHolder(h pool.LeaseRecord) error {
	l.hmu.Lock()
	if !sameHolder(h, l.holder) {
		l.hmu.Unlock()
		return fmt.Errorf("lease holder %s cannot become %s", l.holder, h)
	}
	l.holder = h
	l.hmu.Unlock()
	l.beatNow()
	return nil
}

// sameHolder says two records name one holder, whatever they say of its API
// (UpdateHolder changes it).
func sameHolder(a, b pool.LeaseRecord) bool {
	a.API, b.API = "", ""
	return a.Same(b)
}

// Lost is closed when another controller took the lease over (this one's
// heartbeat went stale, e.g. a long pause, and someone else took it). An
// unreachable control plane does not lose it.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

func (l *Lease) markLost() {
	l.lostOnce.Do(func() {
		l.valid.Store(0)
		close(l.lost)
		l.s.stopHolding(l)
	})
}

func (l *Lease) heartbeat(ctx context.Context) {
	defer close(l.done)
	every := l.s.c.opts.LeaseHeartbeat
	t := l.s.c.clk.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		case <-l.now:
		}
		// Only another holder ends the lease. While the control plane is
		// away the beats fail and the lease lapses (no claims from
		// reservations: l.valid passes), but it is not lost: it is taken
		// back by the first beat that gets through, unless someone else
		// took it meanwhile.
		err := l.beat(ctx)
		if err == errLeaseLost {
			l.markLost()
			return
		}
		if err == errYield {
			// A controller waits: a claim's backfill hands the pool over.
			l.s.stopHolding(l)
			l.putReleased(ctx)
			l.markLost()
			return
		}
		if status.Code(err) == codes.Unavailable && l.s.c.conn != nil {
			// gRPC waits longer and longer between reconnections (up
			// to 2 minutes): try again at the next call instead, so the
			// control plane is seen back within a heartbeat.
			l.s.c.conn.ResetConnectBackoff()
		}
	}
}

// beatNow asks for a heartbeat at once (the queue was reopened empty).
func (l *Lease) beatNow() {
	select {
	case l.now <- struct{}{}:
	default:
	}
}

var (
	errLeaseLost = fmt.Errorf("lease lost")
	errYield     = fmt.Errorf("a controller waits for the lease")
)

func (l *Lease) beat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*l.s.c.opts.LeaseHeartbeat)
	defer cancel()
	t0 := l.s.c.clk.Now()
	cur, n, err := l.s.currentLease(ctx)
	if err != nil {
		return err
	}
	epoch := l.epoch.Load()
	holder := l.Holder()
	if cur.Epoch > epoch {
		return errLeaseLost
	}
	if n == 0 || !sameHolder(cur.Holder, holder) {
		// No record of this holder's epoch or higher: only a takeover
		// writes a higher epoch, so its records vanished (Modal cleared the
		// queue), and whoever wrote one of a lower or equal epoch since
		// found the lease empty. The pool stays this holder's: its epoch
		// jumps ahead of theirs, and the store is rebuilt.
		l.s.recordsLost()
		epoch = l.epoch.Add(1 << 20)
	}
	if isBackfill(holder) {
		if _, ok, err := l.s.wanted(ctx, l.s.now()); err == nil && ok {
			return errYield
		}
	}
	if err := l.s.put(ctx, partLease, encode(leaseRec{Holder: holder, Epoch: epoch, At: l.s.now().UTC()})); err != nil {
		return err
	}
	l.extend(t0)
	l.beats.Add(1)
	if n >= 2 { // keep the partition short: drop the oldest record
		_, _, _ = l.s.pop(ctx, partLease)
	}
	return nil
}

// Release stops the heartbeat and marks the lease free, unless it was lost.
func (l *Lease) Release() error {
	l.relOnce.Do(func() {
		l.valid.Store(0)
		l.s.stopHolding(l) // claims from reservations end before the release record
		l.cancel()
		<-l.done
		select {
		case <-l.lost:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l.relErr = l.putReleased(ctx)
	})
	return l.relErr
}

// putReleased marks the lease free, unless someone took it over meanwhile.
func (l *Lease) putReleased(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	cur, _, err := l.s.currentLease(ctx)
	if err != nil {
		return storeErr("releasing the controller lease", err)
	}
	if cur.Epoch > l.epoch.Load() {
		return nil
	}
	if err := l.s.put(ctx, partLease, encode(leaseRec{Epoch: l.epoch.Load(), At: l.s.now().UTC(), Released: true})); err != nil {
		return storeErr("releasing the controller lease", err)
	}
	return nil
}

// abandon stops the heartbeat without releasing, as a crash would (tests).
func (l *Lease) abandon() {
	l.valid.Store(0)
	l.s.stopHolding(l)
	l.cancel()
	<-l.done
}

// queueLost is called when the control plane lost the queue: the holder's
// records went with it, so its epoch jumps ahead of any process that takes
// the empty lease meanwhile, and it beats at once to say so.
func (l *Lease) queueLost() {
	l.epoch.Add(1 << 20)
	l.beatNow()
}
