package filestore

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// settings are the pool-wide values, kept apart from the entries so that a
// store that loses its file can carry them into the new one.
type settings struct {
	target    int
	hasTarget bool
	ttl, use  time.Duration
	workload  string // pool.Stored.Workload
	// seq counts the records the file's history holds (its snapshot's
	// count, plus one per log line): compactions keep it, so a file read
	// whole with a lower one than this Store last saw went back in time
	// (an older copy put back).
	seq uint64
}

// state is the pool as decoded. Pooled entries are in pool order; claimed
// ones are kept apart, so that a claim never walks past them and costs the
// same with 10 or 10,000 of them.
type state struct {
	settings
	pooled []pool.Entry
	// claimed holds claimed entries in claim order; a deleted one leaves a
	// hole (empty ID) until holes are many, so a delete costs O(1).
	claimed   []pool.Entry
	claimedAt map[string]int // id -> index in claimed
	holes     int
	// epoch names this state's indexing of claimed: a new one for each
	// state and each squeeze, so that a claim mark (storedSince) of
	// another never passes for one of this.
	epoch uint32
}

// epochs hands out state epochs, never 0.
var epochs atomic.Uint32

func nextEpoch() uint32 {
	for {
		if e := epochs.Add(1); e != 0 {
			return e
		}
	}
}

func newState(set settings) *state {
	return &state{settings: set, claimedAt: map[string]int{}, epoch: nextEpoch()}
}

// stored is a copy of the state as the engine sees it: claimed entries
// (the oldest, as claims take from the head), then the pool.
func (st *state) stored() pool.Stored {
	out := pool.Stored{Target: st.target, HasTarget: st.hasTarget, TTL: st.ttl, UseDuration: st.use, Workload: st.workload,
		Entries: make([]pool.Entry, 0, len(st.claimedAt)+len(st.pooled))}
	for _, e := range st.claimed {
		if e.ID != "" {
			out.Entries = append(out.Entries, e)
		}
	}
	out.Entries = append(out.Entries, st.pooled...)
	return out
}

// storedSince is stored with, of the claimed entries, only those recorded
// after mark (from an earlier storedSince of this state; any other mark,
// 0 included, gives them all), and the number of claimed entries left
// out. next is the mark for the next call.
func (st *state) storedSince(mark uint64) (out pool.Stored, older int, next uint64) {
	from := 0
	if n := int(uint32(mark)); uint32(mark>>32) == st.epoch && n <= len(st.claimed) {
		from = n
	}
	out = pool.Stored{Target: st.target, HasTarget: st.hasTarget, TTL: st.ttl, UseDuration: st.use, Workload: st.workload,
		Entries: make([]pool.Entry, 0, len(st.claimed)-from+len(st.pooled))}
	for _, e := range st.claimed[from:] {
		if e.ID != "" {
			out.Entries = append(out.Entries, e)
		}
	}
	older = len(st.claimedAt) - len(out.Entries)
	out.Entries = append(out.Entries, st.pooled...)
	return out, older, uint64(st.epoch)<<32 | uint64(len(st.claimed))
}

func (st *state) has(id string) bool {
	if _, ok := st.claimedAt[id]; ok {
		return true
	}
	return st.pooledIndex(id) >= 0
}

func (st *state) pooledIndex(id string) int {
	return slices.IndexFunc(st.pooled, func(e pool.Entry) bool { return e.ID == id })
}

// push records an entry that is not recorded yet at the end, as a
// snapshot lists them.
func (st *state) push(e pool.Entry) {
	if e.Claimed() {
		st.claimedAt[e.ID] = len(st.claimed)
		st.claimed = append(st.claimed, e)
		return
	}
	st.pooled = append(st.pooled, e)
}

// add records an entry that is not recorded yet. A pooled one goes by age:
// a sandbox that got ready later but expires sooner (parallel creations
// finish out of order) goes before.
func (st *state) add(e pool.Entry) {
	if e.Claimed() {
		st.push(e)
		return
	}
	at := len(st.pooled)
	for at > 0 && e.ExpiresAt.Before(st.pooled[at-1].ExpiresAt) {
		at--
	}
	st.pooled = slices.Insert(st.pooled, at, e)
}

// claim hands out the pooled entry at index i.
func (st *state) claim(i int, by string, at time.Time) pool.Entry {
	e := st.pooled[i]
	st.pooled = slices.Delete(st.pooled, i, i+1)
	e.ClaimedBy, e.ClaimedAt = by, at
	st.add(e)
	return e
}

// remove deletes an entry by id; pooledOnly leaves claimed ones alone.
func (st *state) remove(id string, pooledOnly bool) (pool.Entry, bool) {
	if i := st.pooledIndex(id); i >= 0 {
		e := st.pooled[i]
		st.pooled = slices.Delete(st.pooled, i, i+1)
		return e, true
	}
	i, ok := st.claimedAt[id]
	if !ok || pooledOnly {
		return pool.Entry{}, false
	}
	e := st.claimed[i]
	st.claimed[i] = pool.Entry{}
	delete(st.claimedAt, id)
	if st.holes++; st.holes > 32 && st.holes > len(st.claimed)/2 {
		st.squeeze(func(pool.Entry) bool { return true })
	}
	return e, true
}

// squeeze drops the holes and the claimed entries keep rejects.
func (st *state) squeeze(keep func(pool.Entry) bool) {
	kept := st.claimed[:0]
	clear(st.claimedAt)
	for _, e := range st.claimed {
		if e.ID != "" && keep(e) {
			st.claimedAt[e.ID] = len(kept)
			kept = append(kept, e)
		}
	}
	clear(st.claimed[len(kept):])
	st.claimed, st.holes = kept, 0
	st.epoch = nextEpoch() // indexes changed
}

// take serves one claim: pooled entries met before the first one that
// expires at or after minExpiresAt are dropped, or skipped and left in the
// pool with keepShort.
func (st *state) take(minExpiresAt time.Time, by string, now time.Time, keepShort bool) (taken pool.Entry, dropped []pool.Entry, ok bool) {
	for i := 0; i < len(st.pooled); {
		e := st.pooled[i]
		if !e.ExpiresAt.Before(minExpiresAt) {
			return st.claim(i, by, now), dropped, true
		}
		if keepShort {
			i++
			continue
		}
		dropped = append(dropped, e)
		st.pooled = slices.Delete(st.pooled, i, i+1)
	}
	return pool.Entry{}, dropped, false
}
