package pool

// claimedSet is the claimed entries of the store as this process sees them,
// kept apart from the pooled ones (Controller.stored holds only those): a
// claim, a pass and a creation walk the pool, never the claimed entries, so
// they cost the same with 10 or 10,000 of them (issue 9). Each entry keeps
// the last health its sandbox had while pooled, for the snapshot's row.
// Guarded by Controller.mu.
type claimedSet struct {
	// list is in the order entries were first seen claimed; a removed one
	// leaves a hole (empty ID) until holes are many, so a removal is O(1).
	list  []claimedEntry
	at    map[string]int // id -> index in list
	holes int
}

type claimedEntry struct {
	Entry
	health Health
}

func (s *claimedSet) len() int { return len(s.at) }

func (s *claimedSet) has(id string) bool {
	_, ok := s.at[id]
	return ok
}

func (s *claimedSet) get(id string) (claimedEntry, bool) {
	i, ok := s.at[id]
	if !ok {
		return claimedEntry{}, false
	}
	return s.list[i], true
}

// put records e (claimed) with health h; one recorded already is replaced.
func (s *claimedSet) put(e Entry, h Health) {
	if s.at == nil {
		s.at = map[string]int{}
	}
	if i, ok := s.at[e.ID]; ok {
		s.list[i] = claimedEntry{e, h}
		return
	}
	s.at[e.ID] = len(s.list)
	s.list = append(s.list, claimedEntry{e, h})
}

// remove deletes id and reports whether it was there.
func (s *claimedSet) remove(id string) bool {
	i, ok := s.at[id]
	if !ok {
		return false
	}
	s.list[i] = claimedEntry{}
	delete(s.at, id)
	if s.holes++; s.holes > 32 && s.holes > len(s.list)/2 {
		kept := s.list[:0]
		for _, ce := range s.list {
			if ce.ID != "" {
				s.at[ce.ID] = len(kept)
				kept = append(kept, ce)
			}
		}
		clear(s.list[len(kept):])
		s.list, s.holes = kept, 0
	}
	return true
}

// each calls fn for every entry, in order.
func (s *claimedSet) each(fn func(claimedEntry)) {
	for _, ce := range s.list {
		if ce.ID != "" {
			fn(ce)
		}
	}
}
