package filestore

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sandboxpool/sandboxpool/pool"
)

// quickTake is a take served from memory (TakeQuick) whose record is not
// written yet. Until it is, s.st holds the entry claimed over what the file
// says (applied), so that no take, load or write of this Store sees it
// pooled; every refresh lays it over the file again (reapplyLocked), and
// the next batch of any change writes it (writePendingLocked).
type quickTake struct {
	s     *Store
	e     pool.Entry // as claimed
	index int        // its place in the pool when taken, for Cancel
	// applied: s.st holds e claimed while the file holds it pooled. Owned
	// by the holder of sem.
	applied bool
	// won: its claimer's gate let it through (Record): only then may a
	// batch write it, since a record that finds the entry claimed by
	// another claim puts it back as this one's.
	won atomic.Bool
	// done: written, or cancelled; never written after.
	done      atomic.Bool
	cancelled bool // owned by the holder of sem
}

// TakeQuick implements pool.QuickTaker: the first pooled entry of what this
// Store last read, claimed in memory, with no lock, no stat and no write.
// The claimer's gate (the local agent's claim table) must decide the claim
// before its answer: two processes may take the same entry this way, or
// one this way and another from the file, and the gate lets one through.
// The record follows (Record), or the next change of this Store writes it.
func (s *Store) TakeQuick(tr pool.TakeRequest) (pool.Entry, pool.PendingTake, bool) {
	if tr.ClaimedBy == "" || !encodable(tr.Now) || !utf8.ValidString(tr.ClaimedBy) {
		return pool.Entry{}, nil, false // Take says why
	}
	if !s.quickTurn() {
		return pool.Entry{}, nil, false // a long transaction runs: Take queues, its wait bounded by the claim's context
	}
	defer func() { <-s.sem }()
	if s.closed.Load() || s.st == nil || s.roErr != nil {
		return pool.Entry{}, nil, false
	}
	i := slices.IndexFunc(s.st.pooled, func(e pool.Entry) bool { return !e.ExpiresAt.Before(tr.MinExpiresAt) })
	if i < 0 || (i > 0 && !tr.KeepShort) {
		return pool.Entry{}, nil, false // none, or short ones to drop first: a transaction's work
	}
	e := s.st.claim(i, tr.ClaimedBy, tr.Now)
	q := &quickTake{s: s, e: e, index: i, applied: true}
	s.pending = append(s.pending, q)
	return e, q, true
}

// quickWait is how long a take from memory waits for a transaction of this
// Store to end. A put's or a take's record holds the Store's turn for tens
// of µs (no flush: they are lazy); giving up at once sent a sixth of a
// burst's claims down Take, a transaction of their own (lock, stat,
// append) that waited for the same turn. A longer one (a compaction, a
// change flushed before its answer, another process's lock) is left to
// Take.
const quickWait = 2 * time.Millisecond

// quickTurn takes this Store's turn, waiting up to quickWait for it.
func (s *Store) quickTurn() bool {
	select {
	case s.sem <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(quickWait)
	defer t.Stop()
	select {
	case s.sem <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

// Record implements pool.PendingTake.
func (q *quickTake) Record(ctx context.Context) error {
	if q.done.Load() {
		return nil
	}
	q.won.Store(true)
	err := q.s.commit(ctx, true, func(*state, *logWriter) {})
	if err == nil && !q.done.Load() {
		err = errors.New("filestore: the take was not recorded") // never: every batch writes what is pending
	}
	return err
}

// RecordSoon implements pool.PendingTake: the next batch of any change of
// this Store writes it, and one starts within recordDelay if none does.
func (q *quickTake) RecordSoon() {
	if q.done.Load() {
		return
	}
	q.won.Store(true)
	q.s.recordSoon()
}

// recordDelay: takes recorded soon wait this long for a change of their
// own, so that a burst's records are one append (or come with the
// backfill's first put after the burst). Meanwhile only this process sees
// them claimed; the claim table holds them for everyone.
var recordDelay = 5 * time.Millisecond

// recordSoon starts a change within recordDelay that writes the takes
// pending, unless one is due already. Close writes what is left.
func (s *Store) recordSoon() {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.recordTimer != nil || s.closing.Load() {
		return
	}
	s.bg.Add(1)
	s.recordTimer = time.AfterFunc(recordDelay, func() {
		defer s.bg.Done()
		s.rmu.Lock()
		s.recordTimer = nil
		s.rmu.Unlock()
		s.writeWon()
	})
}

// stopRecordSoon stops the change recordSoon set up, if it has not
// started: Close writes the takes itself.
func (s *Store) stopRecordSoon() {
	s.rmu.Lock()
	t := s.recordTimer
	s.recordTimer = nil
	s.rmu.Unlock()
	if t != nil && t.Stop() {
		s.bg.Done()
	}
}

// writeWon writes the takes pending whose gate let them through, if a
// change did not write them meanwhile.
func (s *Store) writeWon() {
	s.sem <- struct{}{}
	due := slices.ContainsFunc(s.pending, func(q *quickTake) bool { return q.won.Load() && !q.done.Load() })
	<-s.sem
	if !due {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = s.commit(ctx, true, func(*state, *logWriter) {}) // a failure fails the next change too, which says so
}

// Cancel implements pool.PendingTake.
func (q *quickTake) Cancel() (recorded bool) {
	s := q.s
	s.sem <- struct{}{}
	defer func() { <-s.sem }()
	if q.done.Load() {
		return !q.cancelled
	}
	q.done.Store(true)
	q.cancelled = true
	s.pending = slices.DeleteFunc(s.pending, func(p *quickTake) bool { return p == q })
	if q.applied && s.st != nil && s.ownsLocked(q) {
		s.st.remove(q.e.ID, false)
		e := pool.Entry{Ref: q.e.Ref} // pooled again, where it was
		s.st.pooled = slices.Insert(s.st.pooled, min(q.index, len(s.st.pooled)), e)
	}
	q.applied = false
	return false
}

// ownsLocked says s.st holds q's entry claimed by q's claim.
func (s *Store) ownsLocked(q *quickTake) bool {
	i, ok := s.st.claimedAt[q.e.ID]
	if !ok {
		return false
	}
	e := s.st.claimed[i]
	return e.ClaimedBy == q.e.ClaimedBy && e.ClaimedAt.Equal(q.e.ClaimedAt)
}

// reapplyLocked lays the pending takes over s.st, just read from the file:
// an entry the file holds pooled is claimed in memory (applied); one the
// file no longer holds, or holds claimed by another claim, is not.
func (s *Store) reapplyLocked() {
	for _, q := range s.pending {
		if q.applied && s.ownsLocked(q) {
			continue // read on top of it (others' appends)
		}
		q.applied = false
		if i := s.st.pooledIndex(q.e.ID); i >= 0 {
			s.st.claim(i, q.e.ClaimedBy, q.e.ClaimedAt)
			q.index, q.applied = i, true
		}
	}
}

// writePendingLocked logs the pending takes their gate let through into w, on s.st as just
// refreshed: a claim of an entry the file holds pooled; for one it no
// longer holds, or holds claimed by another claim (whose gate refused it:
// the claim table is what decided), the entry put back claimed. It
// returns them, to be marked done once the batch is written.
func (s *Store) writePendingLocked(w *logWriter) []*quickTake {
	var out []*quickTake
	for _, q := range s.pending {
		if !q.won.Load() {
			continue // its gate has not decided: it may yet be withdrawn
		}
		out = append(out, q)
		e := q.e
		if !q.applied {
			if s.st.has(e.ID) {
				s.st.remove(e.ID, false)
				w.add(record{Op: "del", ID: e.ID})
			}
			s.st.add(e)
			w.add(record{Op: "put", ID: e.ID, URL: e.URL, CreatedAt: e.CreatedAt, ExpiresAt: e.ExpiresAt})
			q.applied = true
		}
		w.add(record{Op: "claim", ID: e.ID, By: e.ClaimedBy, At: e.ClaimedAt})
	}
	return out
}

// recordedLocked marks takes written (by a batch, or a compaction of s.st
// that held them applied).
func (s *Store) recordedLocked(qs []*quickTake) {
	for _, q := range qs {
		q.done.Store(true)
	}
	s.pending = slices.DeleteFunc(s.pending, func(q *quickTake) bool { return q.done.Load() })
}

// Withdraw implements pool.Withdrawer: a claim its gate refused leaves the
// store, unless another claim's record holds the entry by now (a take from
// memory that won the gate and wrote its record meanwhile).
func (s *Store) Withdraw(ctx context.Context, e pool.Entry) error {
	return s.commit(ctx, false, func(st *state, w *logWriter) {
		if i, ok := st.claimedAt[e.ID]; ok {
			if c := st.claimed[i]; c.ClaimedBy != e.ClaimedBy || !c.ClaimedAt.Equal(e.ClaimedAt) {
				return // another claim's
			}
		} else if st.pooledIndex(e.ID) < 0 {
			return
		}
		st.remove(e.ID, false)
		w.add(record{Op: "del", ID: e.ID})
	})
}
