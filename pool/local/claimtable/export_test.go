package claimtable

// SlotAt is slot i's first use, for tests that touch slots of their choice.
func SlotAt(i int) Slot { return Slot{i: uint32(i), gen: 1} }
