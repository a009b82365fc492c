package modalx

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	modal "github.com/modal-labs/libmodal/modal-go"
	"github.com/sandboxpool/sandboxpool/pool"
)

// Store keeps a pool's references in the Modal Queue sandboxpool-<pool>. It
// implements pool.Store and pool.Leaser. Values are JSON strings, in partitions:
//
//	""            the pool, in order: {id,url,created_at,expires_at}. It may hold
//	              stale items (claimed, removed, duplicated): the bids decide.
//	"c-<id>"      bids for one sandbox: the first item wins it, for a claim, a
//	              removal or a drop. Appending then reading the head is how two
//	              processes agree without a lock: a sandbox is handed out only by
//	              the claimer whose bid is first, so never twice, even when the
//	              pool holds a duplicate (a rebuild, an adoption) of its entry.
//	"log-YYYYMMDD" claim, removal and reserve records of the entries that expire that day
//	              (UTC). Load reads today's, tomorrow's and the days of pooled
//	              entries. A day's records outlive their entries (a sandbox lives
//	              at most 24 h, a partition lives 24 h after its last put), and
//	              old days need no compaction: they are never read again.
//	"meta"        target records; the last with has=true wins. Refreshed hourly by
//	              any Load so Modal's 24 h TTL does not drop it while the pool is used.
//	              Each carries the store's generation, set by the rebuild that set
//	              the queue up: records without one were written into a queue lost
//	              since (a resize right after Modal cleared it).
//	"lease", "elect-<n>"  the controller lease (lease.go).
//
// Modal may clear a Queue (24 h after its last put; it is in-memory, "not
// guaranteed"), so every sandbox also carries its pool, URL, expiry and claim
// in tags. A Load that finds no generation in "meta" (or after the lease
// holder found its records gone) rebuilds the pool from Sandboxes.List and
// those tags: unclaimed ones are pooled again, claimed ones recorded as
// claimed.
type Store struct {
	c *core

	qmu sync.Mutex
	q   *modal.Queue // reopened when the control plane lost it

	// The lease holder's reservations (reserve.go), under rmu; fastMu is
	// held (read) by claims from memory in flight.
	rmu        sync.Mutex
	hold       *holding
	use        time.Duration // the pool's use-duration, as last loaded
	sharedGood int           // good entries of the pool partition, as last loaded
	fastMu     sync.RWMutex

	wantMu   sync.Mutex
	wantedAt time.Time // when this process last said it wants the lease (lease.go)

	pcMu   sync.Mutex
	pcs    map[string]*partCache // what was last read of each partition (incremental.go)
	opaque atomic.Bool           // entry ids that cannot be ordered: read partitions whole

	// lost is set when the lease holder found its records gone (the queue
	// was cleared): the next Load rebuilds whatever "meta" says.
	lost atomic.Bool
	// known says a Load found the queue set up; losses counts the losses
	// found since (pool.Stored.Epoch).
	known  atomic.Bool
	losses atomic.Uint64

	// settleUntil (unix ns): the latest settle after a rebuild (rebuild);
	// settleWG waits for this process's.
	settleUntil atomic.Int64
	settleWG    sync.WaitGroup
}

var (
	_ pool.Store  = (*Store)(nil)
	_ pool.Leaser = (*Store)(nil)
)

const (
	partPool    = ""
	partMeta    = "meta"
	metaRefresh = time.Hour
)

type poolRec struct {
	ID        string    `json:"id"`
	URL       string    `json:"url"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (r poolRec) ref() pool.Ref {
	return pool.Ref{ID: r.ID, URL: r.URL, CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt}
}

type logRec struct {
	Op    string     `json:"op"` // "claim", "remove" or "reserve" (reserve.go)
	Entry pool.Entry `json:"entry"`
}

type bidRec struct {
	Op    string    `json:"op"` // "claim", "remove", "drop" or "reserve"
	By    string    `json:"by,omitempty"`
	Nonce string    `json:"nonce"`
	At    time.Time `json:"at"`
}

// metaRec is one record of the pool's settings; each carries them all, so
// that popping old records never loses one.
type metaRec struct {
	Target int           `json:"target"`
	Has    bool          `json:"has"`
	TTL    time.Duration `json:"ttl,omitempty"`
	Use    time.Duration `json:"use,omitempty"`
	// Workload is pool.Stored.Workload: what the pool's sandboxes run.
	Workload string    `json:"workload,omitempty"`
	Gen      string    `json:"gen,omitempty"`
	At       time.Time `json:"at"`
	// Settle: until then, the sandboxes a rebuild found nobody's (Held) are
	// not in the pool partition, out of claimers' reach, but every Load
	// counts them pooled (rebuild).
	Settle time.Time `json:"settle,omitzero"`
	Held   []poolRec `json:"held,omitempty"`
}

func bidPart(id string) string   { return "c-" + id }
func logPart(t time.Time) string { return "log-" + t.UTC().Format("20060102") }
func encode(v any) string        { b, _ := json.Marshal(v); return string(b) }
func decode(v any, out any) bool {
	s, ok := v.(string)
	return ok && json.Unmarshal([]byte(s), out) == nil
}
func storeErr(doing string, err error) error { return wrap(doing, err) }

func nonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ---- queue helpers: one RPC each, except items (until an empty answer) ----

// queue is the pool's Queue as now opened.
func (s *Store) queue() *modal.Queue {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return s.q
}

func (s *Store) useDuration() time.Duration {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.use
}

func (s *Store) put(ctx context.Context, part string, vals ...any) error {
	q := s.queue()
	err := s.putTo(ctx, q, part, vals...)
	if isNotFound(err) {
		if q, rerr := s.reopen(ctx, q); rerr == nil {
			err = s.putTo(ctx, q, part, vals...)
		}
	}
	return err
}

// putTo puts into one queue as opened, never into one reopened meanwhile.
func (s *Store) putTo(ctx context.Context, q *modal.Queue, part string, vals ...any) error {
	return q.PutMany(ctx, vals, &modal.QueuePutManyParams{QueuePutParams: modal.QueuePutParams{Partition: part}})
}

// pop atomically removes the head of a partition; ok is false when it is empty.
func (s *Store) pop(ctx context.Context, part string) (any, bool, error) {
	q := s.queue()
	v, ok, err := s.popFrom(ctx, q, part)
	if isNotFound(err) {
		if q, rerr := s.reopen(ctx, q); rerr == nil {
			v, ok, err = s.popFrom(ctx, q, part)
		}
	}
	return v, ok, err
}

// reopen replaces a queue that the control plane no longer knows (it lost
// its state) with a new one of the same name: the next Load finds it empty
// and rebuilds the pool from the sandboxes' tags.
func (s *Store) reopen(ctx context.Context, old *modal.Queue) (*modal.Queue, error) {
	s.qmu.Lock()
	if s.q != old {
		q := s.q
		s.qmu.Unlock()
		return q, nil
	}
	q, err := s.c.client.Queues.FromName(ctx, QueueName(s.c.opts.Pool), &modal.QueueFromNameParams{Environment: s.c.opts.Environment, CreateIfMissing: true})
	if err != nil {
		s.qmu.Unlock()
		return nil, wrap(fmt.Sprintf("opening Modal queue %q", QueueName(s.c.opts.Pool)), err)
	}
	// Reservations go before the new queue is used: a claim from memory
	// writes to the queue it saw before taking one (reserve.go).
	s.queueLost()
	s.q = q
	s.qmu.Unlock()
	s.c.opts.Logger.Warn("the Modal queue was gone: opened it again, the pool is rebuilt from the sandboxes' tags", "queue", QueueName(s.c.opts.Pool))
	return q, nil
}

func (s *Store) popFrom(ctx context.Context, q *modal.Queue, part string) (any, bool, error) {
	zero := time.Duration(0)
	v, err := q.Get(ctx, &modal.QueueGetParams{Partition: part, Timeout: &zero})
	var empty modal.QueueEmptyError
	if errors.As(err, &empty) {
		return nil, false, nil
	}
	return v, err == nil, err
}

// items reads a partition without changing it.
func (s *Store) items(ctx context.Context, part string) ([]any, error) {
	q := s.queue()
	out, err := s.readPart(ctx, q, part)
	if isNotFound(err) {
		if q, rerr := s.reopen(ctx, q); rerr == nil {
			out, err = s.readPart(ctx, q, part)
		}
	}
	return out, err
}

func itemsOf(ctx context.Context, q *modal.Queue, part string) ([]any, error) {
	var out []any
	for v, err := range q.Iterate(ctx, &modal.QueueIterateParams{Partition: part}) {
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// head reads the first item of a partition (one RPC).
func (s *Store) head(ctx context.Context, part string) (any, bool, error) {
	q := s.queue()
	v, ok, err := headOf(ctx, q, part)
	if isNotFound(err) {
		if q, rerr := s.reopen(ctx, q); rerr == nil {
			v, ok, err = headOf(ctx, q, part)
		}
	}
	return v, ok, err
}

func headOf(ctx context.Context, q *modal.Queue, part string) (any, bool, error) {
	for v, err := range q.Iterate(ctx, &modal.QueueIterateParams{Partition: part}) {
		return v, err == nil, err
	}
	return nil, false, nil
}

// bid appends a bid for a sandbox and reports whether it is the first one.
func (s *Store) bid(ctx context.Context, id, op, by string) (won bool, first bidRec, err error) {
	mine := bidRec{Op: op, By: by, Nonce: nonce(), At: s.c.clk.Now().UTC()}
	if err := s.put(ctx, bidPart(id), encode(mine)); err != nil {
		return false, bidRec{}, err
	}
	// The bid is in: learn whether it won even if the caller gives up now
	// (a claim cancelled by SIGTERM), or a won claim would be nobody's.
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	v, ok, err := s.head(hctx, bidPart(id))
	if err != nil || !ok || !decode(v, &first) {
		return false, first, err
	}
	return first.Nonce == mine.Nonce, first, nil
}

// ---- Load ----

// view is one read of the store, with the raw pool order kept for trimming.
type view struct {
	pool.Stored
	order    []string        // ids in the pool partition, as stored
	pooled   map[string]bool // ids pooled now in the pool partition
	reserved map[string]bool // ids reserved by the lease holder (pooled too)
	claimed  map[string]bool
	removed  map[string]bool
	metaLen  int
}

// Load reads the whole pool without changing it (except to rebuild a lost
// queue or refresh the target's TTL).
func (s *Store) Load(ctx context.Context) (pool.Stored, error) {
	v, err := s.loadView(ctx)
	return v.Stored, err
}

// Loaded for the holder: its memory folded in.
func (s *Store) loadView(ctx context.Context) (view, error) {
	v, err := s.load(ctx)
	if err == nil {
		s.overlay(&v)
	}
	return v, err
}

func (s *Store) load(ctx context.Context) (view, error) {
	v, lost, err := s.loadOnce(ctx)
	if err == nil && (lost || s.lost.Load()) {
		// New pool, or Modal dropped the queue: rebuild it from the tags.
		// This holder's reservations went with the queue: none is handed
		// out from memory again until inherited back from the rebuild.
		if s.lost.Swap(false) || s.known.Load() {
			s.losses.Add(1)
		}
		s.forgetReservations()
		if err := s.rebuild(ctx); err != nil {
			s.lost.Store(true)
			return v, err
		}
		v, _, err = s.loadOnce(ctx)
	}
	return v, err
}

// loadOnce reads the store; lost says that its settings carry no generation
// (a new pool, or a queue the control plane lost, whatever was written
// since).
func (s *Store) loadOnce(ctx context.Context) (view, bool, error) {
	now := s.c.clk.Now()
	var v view
	// The partitions are read at once: a Load costs the round trips of one.
	today, tomorrow := logPart(now), logPart(now.Add(24*time.Hour))
	parts := []string{partMeta, partPool, today, tomorrow}
	got := make([][]any, len(parts))
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		wg.Add(1)
		go func() { defer wg.Done(); got[i], errs[i] = s.items(ctx, p) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return v, false, storeErr("reading the pool's queue", err)
	}
	metas, raw := got[0], got[1]
	if len(raw) == 0 && len(got[2]) == 0 && len(got[3]) == 0 && len(metas) > 0 {
		// Nothing but settings: a queue cleared between the reads, its
		// settings read first, looks so too. One more read of them says.
		var err error
		if metas, err = s.items(ctx, partMeta); err != nil {
			return v, false, storeErr("reading the pool's queue", err)
		}
	}
	cur, latestAt := foldMeta(metas)
	if cur.Gen == "" {
		return v, true, nil
	}
	if !cur.Settle.IsZero() {
		s.noteSettle(cur.Settle)
	}
	s.known.Store(true)
	v.Epoch = s.losses.Load()
	v.Target, v.HasTarget, v.TTL, v.UseDuration, v.Workload = cur.Target, cur.Has, cur.TTL, cur.Use, cur.Workload
	v.metaLen = len(metas)

	var recs []poolRec
	days := map[string][]any{today: got[2], tomorrow: got[3]}
	for _, it := range raw {
		var r poolRec
		if decode(it, &r) && r.ID != "" {
			recs = append(recs, r)
			v.order = append(v.order, r.ID)
			if d := logPart(r.ExpiresAt); days[d] == nil {
				days[d] = nil // read below
			}
		}
	}
	claims, removed, reserves, err := s.readLogs(ctx, days)
	if err != nil {
		return v, false, err
	}
	v.pooled, v.claimed, v.removed, v.reserved = map[string]bool{}, map[string]bool{}, removed, map[string]bool{}
	// Reserved ones first: they were the pool's head.
	var res []pool.Entry
	for id, e := range reserves {
		if _, claimed := claims[id]; !claimed && !removed[id] && !e.ExpiresAt.Before(now) {
			v.reserved[id] = true
			res = append(res, pool.Entry{Ref: e.Ref})
		}
	}
	sort.Slice(res, func(i, j int) bool { return res[i].ExpiresAt.Before(res[j].ExpiresAt) })
	v.Entries = append(v.Entries, res...)
	for _, r := range recs {
		if v.pooled[r.ID] || removed[r.ID] || v.reserved[r.ID] {
			continue
		}
		if _, ok := claims[r.ID]; ok {
			continue
		}
		v.pooled[r.ID] = true
		v.Entries = append(v.Entries, pool.Entry{Ref: r.ref()})
	}
	if now.Before(cur.Settle) {
		// Held back by a rebuild's settle: pooled, for every process's
		// count (a controller that saw them missing created replacements,
		// then shrank the pool by good sandboxes), yet nobody can take them.
		for _, r := range cur.Held {
			if _, claimed := claims[r.ID]; !claimed && !v.pooled[r.ID] && !removed[r.ID] && !v.reserved[r.ID] {
				v.pooled[r.ID] = true
				v.Entries = append(v.Entries, pool.Entry{Ref: r.ref()})
			}
		}
	}
	var claimed []pool.Entry
	for id, e := range claims {
		// A claimed sandbox past its expiry is dead: Modal killed it.
		if !removed[id] && !e.ExpiresAt.Before(now) {
			v.claimed[id] = true
			claimed = append(claimed, e)
		}
	}
	sort.Slice(claimed, func(i, j int) bool { return claimed[i].ClaimedAt.Before(claimed[j].ClaimedAt) })
	v.Entries = append(v.Entries, claimed...)

	s.rmu.Lock()
	if v.UseDuration > 0 {
		s.use = v.UseDuration
	}
	s.rmu.Unlock()
	if now.Sub(latestAt) > metaRefresh {
		// Keep "meta" younger than Modal's 24 h partition TTL.
		_ = s.putMeta(ctx, metaRec{Target: v.Target, Has: v.HasTarget, TTL: v.TTL, Use: v.UseDuration, Workload: v.Workload, Gen: cur.Gen, At: now.UTC()}, v.metaLen)
	}
	return v, false, nil
}

// readLogs folds the claim, removal and reserve records of the given days;
// a day already read comes with its items.
func (s *Store) readLogs(ctx context.Context, days map[string][]any) (claims map[string]pool.Entry, removed map[string]bool, reserves map[string]pool.Entry, err error) {
	claims, removed, reserves = map[string]pool.Entry{}, map[string]bool{}, map[string]pool.Entry{}
	keys := make([]string, 0, len(days))
	for d := range days {
		keys = append(keys, d)
	}
	sort.Strings(keys)
	now := s.c.clk.Now()
	for _, d := range keys {
		its := days[d]
		if its == nil && d != logPart(now) && d != logPart(now.Add(24*time.Hour)) {
			if its, err = s.items(ctx, d); err != nil {
				return nil, nil, nil, storeErr("reading the pool's claims", err)
			}
		}
		for _, it := range its {
			var r logRec
			if !decode(it, &r) {
				continue
			}
			switch r.Op {
			case "claim":
				if _, dup := claims[r.Entry.ID]; !dup {
					claims[r.Entry.ID] = r.Entry
				}
			case "remove":
				removed[r.Entry.ID] = true
			case "reserve":
				reserves[r.Entry.ID] = r.Entry
			}
		}
	}
	return claims, removed, reserves, nil
}

// ---- Put / Take / Remove / SetTarget ----

// Put appends a ready sandbox to the pool. An id that was claimed, removed or
// dropped has a bid and changes nothing; so does one pooled already (Load
// shows each id once, and a duplicate item cannot be claimed twice).
func (s *Store) Put(ctx context.Context, ref pool.Ref) error {
	if t, ok := s.c.lookup(ref.ID); ok && t.claimedBy != "" {
		return s.putClaimed(ctx, ref, t)
	}
	// A sandbox this process just created was never bid for: no need to look.
	first, ok, err := any(nil), false, error(nil)
	if !s.c.takeFresh(ref.ID) {
		// An adoption: after a lost queue, its tags may yet say claimed.
		if t, claimed, err := s.waitSettle(ctx, ref.ID); err != nil {
			return storeErr("adding sandbox "+ref.ID+" to the pool", err)
		} else if claimed {
			return s.putClaimed(ctx, ref, t)
		}
		first, ok, err = s.head(ctx, bidPart(ref.ID))
	}
	if err != nil {
		return storeErr("adding sandbox "+ref.ID+" to the pool", err)
	}
	if ok {
		return s.putDecided(ctx, ref, first)
	}
	rec := poolRec{ID: ref.ID, URL: ref.URL, CreatedAt: ref.CreatedAt.UTC(), ExpiresAt: ref.ExpiresAt.UTC()}
	if err := s.put(ctx, partPool, encode(rec)); err != nil {
		return storeErr("adding sandbox "+ref.ID+" to the pool", err)
	}
	return nil
}

// putClaimed is Put of a sandbox whose tags say it is claimed (the queue
// lost the claim): the claim is recorded again rather than the sandbox handed
// out a second time; unless it was removed since (given back by a claimer
// that left).
func (s *Store) putClaimed(ctx context.Context, ref pool.Ref, t tagged) error {
	if removed, err := s.removedRecord(ctx, ref); err != nil {
		return storeErr("adding sandbox "+ref.ID+" to the pool", err)
	} else if removed {
		return pool.ErrNotPooled
	}
	if err := s.restoreClaim(ctx, pool.Entry{Ref: ref, ClaimedBy: t.claimedBy, ClaimedAt: t.claimedAt}); err != nil {
		return err
	}
	return fmt.Errorf("sandbox %s: %w by %s (its tags say so)", ref.ID, pool.ErrAlreadyClaimed, t.claimedBy)
}

// putDecided is Put of a sandbox that was bid for already: its first bid
// decided whose it is, and the record that bid should have led to is written
// now if it is missing (its writer died or gave up between the bid and the
// record). Anything else would leave it unknown for ever, adopted again at
// every pass and never terminated.
//   - removed since (a remove record), or first bid "remove" or "drop": it is
//     not the pool's (ErrNotPooled), reconcile terminates it as an orphan;
//   - "reserve": a reservation again, which the lease holder inherits;
//   - "claim": claimed, by the bid's claimer (it may be using it): it lives
//     out its ttl and is never pooled again (pool.ErrAlreadyClaimed).
func (s *Store) putDecided(ctx context.Context, ref pool.Ref, first any) error {
	doing := "adding sandbox " + ref.ID + " to the pool"
	var b bidRec
	if !decode(first, &b) {
		return pool.ErrNotPooled
	}
	if b.Op != "reserve" && b.Op != "claim" {
		return pool.ErrNotPooled
	}
	if removed, err := s.removedRecord(ctx, ref); err != nil {
		return storeErr(doing, err)
	} else if removed {
		return pool.ErrNotPooled
	}
	if b.Op == "reserve" {
		if err := s.put(ctx, logPart(ref.ExpiresAt), encode(logRec{Op: "reserve", Entry: pool.Entry{Ref: ref}})); err != nil {
			return storeErr(doing, err)
		}
		return nil
	}
	e := pool.Entry{Ref: ref, ClaimedBy: cmp.Or(b.By, "unknown"), ClaimedAt: b.At}
	if e.ClaimedAt.IsZero() {
		e.ClaimedAt = s.c.clk.Now().UTC()
	}
	if err := s.put(ctx, logPart(ref.ExpiresAt), encode(logRec{Op: "claim", Entry: e})); err != nil {
		return storeErr("recording the claim of "+ref.ID, err)
	}
	s.c.markClaimed(e.Ref, e.ClaimedBy, e.ClaimedAt)
	return fmt.Errorf("sandbox %s: %w by %s (its bid says so)", ref.ID, pool.ErrAlreadyClaimed, e.ClaimedBy)
}

// removedRecord reports whether the log holds a removal of ref.
func (s *Store) removedRecord(ctx context.Context, ref pool.Ref) (bool, error) {
	its, err := s.items(ctx, logPart(ref.ExpiresAt))
	if err != nil {
		return false, err
	}
	for _, it := range its {
		var r logRec
		if decode(it, &r) && r.Entry.ID == ref.ID && r.Op == "remove" {
			return true, nil
		}
	}
	return false, nil
}

func (s *Store) restoreClaim(ctx context.Context, e pool.Entry) error {
	if err := s.put(ctx, bidPart(e.ID), encode(bidRec{Op: "claim", By: e.ClaimedBy, Nonce: nonce(), At: e.ClaimedAt})); err != nil {
		return storeErr("recording the claim of "+e.ID, err)
	}
	if err := s.put(ctx, logPart(e.ExpiresAt), encode(logRec{Op: "claim", Entry: e})); err != nil {
		return storeErr("recording the claim of "+e.ID, err)
	}
	return nil
}

// Take claims the first good entry. The lease holder serves it from its
// reservations with one round trip (reserve.go); otherwise, or when it has
// none, Take pops the pool head (Modal's atomic get) until it finds an entry
// that expires at or after minExpiresAt and wins its claim bid. Heads that
// expire earlier are dropped (returned for the caller to terminate) once
// their drop bid wins; items whose bid was lost are stale copies and just
// skipped. The claim's tags are written in the background.
// With KeepShort, entries too short are left in the pool (put back at its
// end) instead of dropped: only the controller retires them.
func (s *Store) Take(ctx context.Context, tr pool.TakeRequest) (pool.Entry, []pool.Entry, bool, error) {
	minExpiresAt, claimedBy, now, keepShort := tr.MinExpiresAt, tr.ClaimedBy, tr.Now, tr.KeepShort
	e, dropped, handled, err := s.takeReserved(ctx, minExpiresAt, claimedBy, now, keepShort)
	if handled && (err != nil || e.ID != "") {
		return e, dropped, err == nil, err
	}
	if settled, until := s.reserving(); settled != nil {
		// The head is being reserved: served from memory once it is.
		t := s.c.clk.NewTimer(s.c.clk.Until(until))
		select {
		case <-settled:
		case <-t.Chan():
		case <-ctx.Done():
		}
		t.Stop()
		if ctx.Err() == nil {
			var more []pool.Entry
			e, more, handled, err = s.takeReserved(ctx, minExpiresAt, claimedBy, now, keepShort)
			dropped = append(dropped, more...)
			if handled && (err != nil || e.ID != "") {
				return e, dropped, err == nil, err
			}
		}
	}
	var short []any // popped, too short, to put back (keepShort)
	defer func() {
		if len(short) > 0 {
			s.requeue(ctx, short...)
		}
	}()
	seen := map[string]bool{}
	for {
		v, ok, err := s.pop(ctx, partPool)
		if err != nil {
			return pool.Entry{}, dropped, false, storeErr("claiming a sandbox", err)
		}
		if !ok {
			return pool.Entry{}, dropped, false, nil
		}
		var r poolRec
		if !decode(v, &r) || r.ID == "" {
			continue
		}
		e := pool.Entry{Ref: r.ref()}
		if r.ExpiresAt.Before(minExpiresAt) {
			if keepShort {
				short = append(short, v)
				if seen[r.ID] { // went round the whole pool
					return pool.Entry{}, dropped, false, nil
				}
				seen[r.ID] = true
				continue
			}
			won, _, err := s.bid(ctx, r.ID, "drop", claimedBy)
			if err != nil {
				s.requeue(ctx, v)
				return pool.Entry{}, dropped, false, storeErr("claiming a sandbox", err)
			}
			if won {
				dropped = append(dropped, e)
			}
			continue
		}
		won, _, err := s.bid(ctx, r.ID, "claim", claimedBy)
		if err != nil {
			s.requeue(ctx, v)
			return pool.Entry{}, dropped, false, storeErr("claiming a sandbox", err)
		}
		if !won {
			continue
		}
		e.ClaimedBy, e.ClaimedAt = claimedBy, now
		// The bid made it ours whatever happens next: record the claim where
		// Load sees it (best effort, without the caller's deadline); the
		// tags, where a rebuild sees it, follow in the background.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_ = s.put(wctx, logPart(r.ExpiresAt), encode(logRec{Op: "claim", Entry: e}))
		cancel()
		s.c.markClaimed(e.Ref, claimedBy, now)
		return e, dropped, true, nil
	}
}

// requeue puts back items popped before a failure, so they are not lost.
func (s *Store) requeue(ctx context.Context, vs ...any) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = s.put(ctx, partPool, vs...)
}

// Remove deletes entries by id, pooled or claimed, and returns those it found.
// A pooled entry is taken out of reach of Take by a removal bid; one whose
// claim bid won first is removed as claimed.
func (s *Store) Remove(ctx context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(ctx, false, ids)
}

// Evict deletes pooled entries by id and returns those it found. An entry
// claimed meanwhile (its claim bid came first) is left alone: it is the
// claimer's now.
func (s *Store) Evict(ctx context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(ctx, true, ids)
}

func (s *Store) remove(ctx context.Context, pooledOnly bool, ids []string) ([]pool.Entry, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	v, err := s.loadView(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]pool.Entry{}
	for _, e := range v.Entries {
		byID[e.ID] = e
	}
	var found []pool.Entry
	logs := map[string][]any{}
	for _, id := range ids {
		e, ok := byID[id]
		if !ok || (pooledOnly && e.Claimed()) || slices.ContainsFunc(found, func(f pool.Entry) bool { return f.ID == id }) {
			continue
		}
		switch {
		case v.reserved[id]:
			// The holder's own reservation leaves its memory; one held by
			// another process is evicted by it, never from here.
			if !s.unreserve(id) && pooledOnly {
				continue
			}
		case v.pooled[id]:
			won, first, err := s.bid(ctx, id, "remove", "")
			if err != nil {
				return found, storeErr("removing sandbox "+id, err)
			}
			if !won && (first.Op == "claim" || first.Op == "reserve") {
				if pooledOnly {
					continue
				}
				e.ClaimedBy, e.ClaimedAt = first.By, first.At
			}
		}
		found = append(found, e)
		logs[logPart(e.ExpiresAt)] = append(logs[logPart(e.ExpiresAt)], encode(logRec{Op: "remove", Entry: e}))
		v.removed[id] = true
	}
	for part, recs := range logs {
		if err := s.put(ctx, part, recs...); err != nil {
			return found, storeErr("removing sandboxes", err)
		}
	}
	s.trim(ctx, v)
	return found, nil
}

// trim pops the stale items (removed, claimed, duplicates) at the pool head,
// so the partition does not grow. A live item popped by a race is put back.
func (s *Store) trim(ctx context.Context, v view) {
	seen := map[string]bool{}
	stale := 0
	for _, id := range v.order {
		if v.pooled[id] && !v.removed[id] && !seen[id] {
			break
		}
		seen[id] = true
		stale++
	}
	for range stale {
		it, ok, err := s.pop(ctx, partPool)
		if err != nil || !ok {
			return
		}
		var r poolRec
		if decode(it, &r) && v.pooled[r.ID] && !v.removed[r.ID] {
			s.requeue(ctx, it)
			return
		}
	}
}

// SetTarget stores the target.
func (s *Store) SetTarget(ctx context.Context, n int) error {
	return s.setMeta(ctx, "setting the pool's target", func(m *metaRec) { m.Target, m.Has = n, true })
}

// SetTiming stores the pool's ttl and use-duration.
func (s *Store) SetTiming(ctx context.Context, ttl, use time.Duration) error {
	return s.setMeta(ctx, "setting the pool's timing", func(m *metaRec) { m.TTL, m.Use = ttl, use })
}

// SetWorkload stores what the pool's sandboxes run (pool.Stored.Workload).
func (s *Store) SetWorkload(ctx context.Context, w string) error {
	return s.setMeta(ctx, "setting the pool's workload", func(m *metaRec) { m.Workload = w })
}

// setMeta writes a new settings record: the current ones with change applied.
func (s *Store) setMeta(ctx context.Context, doing string, change func(*metaRec)) error {
	metas, err := s.items(ctx, partMeta)
	if err != nil {
		return storeErr(doing, err)
	}
	cur, _ := foldMeta(metas)
	change(&cur)
	cur.At = s.c.clk.Now().UTC()
	return s.putMeta(ctx, cur, len(metas))
}

// foldMeta reads the settings records in order: the last target, the last
// timing and the last workload set win. latestAt is when the newest record was written.
func foldMeta(metas []any) (cur metaRec, latestAt time.Time) {
	for _, m := range metas {
		var r metaRec
		if !decode(m, &r) {
			continue
		}
		if r.Has {
			cur.Target, cur.Has = r.Target, true
		}
		if r.TTL > 0 {
			cur.TTL, cur.Use = r.TTL, r.Use
		}
		if r.Workload != "" {
			cur.Workload = r.Workload
		}
		if r.Gen != "" {
			cur.Gen = r.Gen
		}
		if r.Settle.After(cur.Settle) {
			cur.Settle, cur.Held = r.Settle, r.Held
		}
		if r.At.After(latestAt) {
			latestAt = r.At
		}
	}
	return cur, latestAt
}

// putMeta appends a target record and, when older ones pile up, pops one:
// each writer pops at most one and only after its own put, so the newest
// records always remain.
func (s *Store) putMeta(ctx context.Context, m metaRec, had int) error {
	if err := s.put(ctx, partMeta, encode(m)); err != nil {
		return storeErr("setting the pool's target", err)
	}
	if had >= 3 {
		_, _, _ = s.pop(ctx, partMeta)
	}
	return nil
}

// rebuild restores a lost queue from Sandboxes.List and the sandboxes' tags:
// claimed ones are recorded as claimed, reserved ones reserved again, and
// those with a bid that survived go as it decided. Those whose tags say
// nobody's are pooled only after LossSettle (settle): one may be a claimer's
// whose bid went with the queue and whose tags are still on their way (bid,
// claim record, tags); pooled now, it would be handed out twice. The wait is
// not the caller's: the settle, written in "meta" with them, keeps them out
// of the pool partition but in every Load's pool, and holds back every
// process's Put of them.
func (s *Store) rebuild(ctx context.Context) error {
	ts, err := s.c.listTagged(ctx)
	if err != nil {
		return err
	}
	nobodys, err := s.restore(ctx, ts, false)
	if err != nil {
		return err
	}
	// A new generation, without a target (the target is not in the tags;
	// one set since the loss stays): the queue is set up again.
	m := metaRec{Gen: nonce(), At: s.c.clk.Now().UTC()}
	if len(nobodys) > 0 {
		m.Settle = m.At.Add(s.c.opts.LossSettle)
		for _, t := range nobodys {
			m.Held = append(m.Held, poolRec{ID: t.ref.ID, URL: t.ref.URL, CreatedAt: t.ref.CreatedAt.UTC(), ExpiresAt: t.ref.ExpiresAt.UTC()})
		}
	}
	if err := s.put(ctx, partMeta, encode(m)); err != nil {
		return storeErr("rebuilding the pool's queue", err)
	}
	if len(nobodys) > 0 {
		s.noteSettle(m.Settle)
		s.settleWG.Add(1)
		go s.settle(m.Settle)
	}
	return nil
}

// settle pools, once the settle is over, the sandboxes a rebuild found
// nobody's, read again: those a late claimer's tags now say claimed are
// recorded claimed instead. A process gone before (its Close waits) leaves
// them to the controller's adoption, which waits out the settle too (Put).
func (s *Store) settle(until time.Time) {
	defer s.settleWG.Done()
	select {
	case <-s.c.life.Done():
		return
	case <-s.c.clk.After(s.c.clk.Until(until)):
	}
	ctx, cancel := context.WithTimeout(s.c.life, 30*time.Second)
	defer cancel()
	ts, err := s.c.listTagged(ctx)
	if err == nil {
		_, err = s.restore(ctx, ts, true)
	}
	if err != nil {
		s.c.opts.Logger.Warn("pooling the sandboxes again after a lost queue", "err", err)
	}
}

// noteSettle keeps the latest settle read or written.
func (s *Store) noteSettle(until time.Time) {
	for {
		old := s.settleUntil.Load()
		if until.UnixNano() <= old || s.settleUntil.CompareAndSwap(old, until.UnixNano()) {
			return
		}
	}
}

// waitSettle: a Put of a sandbox the store does not know, during a settle
// or shortly after, waits for its end and reads the sandbox's tags then (a
// late claimer's tags say claimed). It says whether the tags say claimed,
// and by whom.
func (s *Store) waitSettle(ctx context.Context, id string) (claimed tagged, ok bool, err error) {
	until := time.Unix(0, s.settleUntil.Load())
	if s.settleUntil.Load() == 0 || s.c.clk.Since(until) > time.Minute {
		return tagged{}, false, nil
	}
	select {
	case <-ctx.Done():
		return tagged{}, false, ctx.Err()
	case <-s.c.clk.After(s.c.clk.Until(until)):
	}
	sb, err := s.c.handle(ctx, id)
	if err != nil {
		return tagged{}, false, err
	}
	tags, err := sb.GetTags(ctx)
	if err != nil {
		return tagged{}, false, err
	}
	t := fromTags(id, tags)
	return t, t.claimedBy != "", nil
}

// restore writes what the tags of ts say that the queue lacks, in parallel
// (a rebuild of a few dozen sandboxes one RPC at a time took seconds on a
// slow control plane, every process's view of the pool stale meanwhile):
// claims' bids and each unclaimed one's bid check at once, then the
// records in one put per partition. Sandboxes nobody claimed or reserved,
// not pooled and without a bid, are returned, pooled only with poolNobodys.
func (s *Store) restore(ctx context.Context, ts []tagged, poolNobodys bool) (nobodys []tagged, err error) {
	// What survived in the pool partition (or another rebuild put) is not
	// put again.
	pooled, err := s.pooledIDs(ctx)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(ts, func(i, j int) bool { return ts[i].ref.ExpiresAt.Before(ts[j].ref.ExpiresAt) })
	var (
		mu   sync.Mutex // guards logs and nobodys
		logs = map[string][]any{}
		recs = make([]any, len(ts))
	)
	err = inParallel(len(ts), func(i int) error {
		t := ts[i]
		if pooled[t.ref.ID] {
			return nil
		}
		var err error
		if t.claimedBy != "" {
			e := pool.Entry{Ref: t.ref, ClaimedBy: t.claimedBy, ClaimedAt: t.claimedAt}
			if err = s.put(ctx, bidPart(e.ID), encode(bidRec{Op: "claim", By: e.ClaimedBy, Nonce: nonce(), At: e.ClaimedAt})); err == nil {
				mu.Lock()
				logs[logPart(e.ExpiresAt)] = append(logs[logPart(e.ExpiresAt)], encode(logRec{Op: "claim", Entry: e}))
				mu.Unlock()
			}
		} else if t.reserved {
			// A holder may still hand it out from its memory: reserved
			// again (first bid), never pooled for others to claim.
			var first bidRec
			if _, first, err = s.bid(ctx, t.ref.ID, "reserve", ""); err == nil {
				err = s.putDecided(ctx, t.ref, encode(first))
			}
		} else {
			var first any
			var bid bool
			if first, bid, err = s.head(ctx, bidPart(t.ref.ID)); err == nil && bid {
				err = s.putDecided(ctx, t.ref, first)
			} else if err == nil && poolNobodys {
				recs[i] = encode(poolRec{ID: t.ref.ID, URL: t.ref.URL, CreatedAt: t.ref.CreatedAt.UTC(), ExpiresAt: t.ref.ExpiresAt.UTC()})
			} else if err == nil {
				mu.Lock()
				nobodys = append(nobodys, t)
				mu.Unlock()
			}
		}
		if errors.Is(err, pool.ErrNotPooled) || errors.Is(err, pool.ErrAlreadyClaimed) {
			return nil
		}
		return err
	})
	if err != nil {
		return nil, storeErr("rebuilding the pool's queue", err)
	}
	var put []any // oldest first, as ts is sorted
	for _, r := range recs {
		if r != nil {
			put = append(put, r)
		}
	}
	if len(put) > 0 {
		logs[partPool] = put
	}
	parts := make([]string, 0, len(logs))
	for part := range logs {
		parts = append(parts, part)
	}
	if err := inParallel(len(parts), func(i int) error { return s.put(ctx, parts[i], logs[parts[i]]...) }); err != nil {
		return nil, storeErr("rebuilding the pool's queue", err)
	}
	return nobodys, nil
}

// pooledIDs says which sandboxes the pool partition holds a record of.
func (s *Store) pooledIDs(ctx context.Context) (map[string]bool, error) {
	raw, err := s.items(ctx, partPool)
	if err != nil {
		return nil, storeErr("rebuilding the pool's queue", err)
	}
	pooled := map[string]bool{}
	for _, it := range raw {
		var r poolRec
		if decode(it, &r) {
			pooled[r.ID] = true
		}
	}
	return pooled, nil
}

// inParallel runs f(0), ..., f(n-1), 16 at a time, and joins their errors.
func inParallel(n int, f func(i int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close releases the Store's share of the Modal client.
func (s *Store) Close() error {
	s.settleWG.Wait() // a settle under way pools what it held back
	s.c.release()
	return nil
}
