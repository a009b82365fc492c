// Package claimtable is the local agent's claim gate in shared memory: a
// table of slots, one per live sandbox, in a memory file (memfd) that the
// agent makes and hands to the processes of its pool over its socket. A
// claim is then one compare-and-swap on the sandbox's slot, with no round
// trip to the agent: on an idle machine every cross-process wake-up costs
// 0.2-0.4 ms, more than all the rest of a claim (issue 9).
//
// The gate is what keeps a store that lost a claim (moved away, an old
// copy put back) from handing a claimed sandbox out again, and the pool's
// own terminations from killing one: a claim is a CAS pooled -> claimed,
// a pool's termination a CAS pooled -> ended, so they never both win.
//
// Layout: a header of headerWords words, then two words per slot:
//
//	key    gen<<48 | id             0 when free; written by the agent only
//	state  gen<<48 | st<<46 | tag   CASed by the agent and by claimers
//
// id is a sandbox id's 48 bits, tag a claim's 46-bit hash (Tag), gen the
// slot's use count (never 0). A sandbox lives in one of the Bucket slots of
// the bucket its id hashes to; a claimer finds it by scanning them. The
// claimer CASes the state with the gen it read in the key, so a slot freed
// and given to another sandbox in between is never claimed by mistake (ABA).
//
// Only the agent places and frees sandboxes (Place, Free: one caller at a
// time); everyone may Claim. Whatever the table cannot answer (no slot: a
// full bucket) the agent answers over its socket. Who made a claim, and
// when, its claimer notes beside the table (Notes).
package claimtable

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// State is a slot's state.
type State uint8

const (
	Free    State = iota // no sandbox
	Pooled               // live, no claim holds it
	Claimed              // live, held by the claim of the slot's tag
	Ended                // ending or ended: not to be claimed
)

// Result is a claim's outcome.
type Result uint8

const (
	Unknown Result = iota // the table cannot say (no slot for the id): ask the agent
	Won                   // this claim holds it now
	Held                  // this same claim held it already
	Taken                 // another claim holds it
	Gone                  // it is ending or ended
)

func (r Result) String() string {
	return [...]string{"unknown", "won", "held", "taken", "gone"}[r]
}

const (
	// Bucket is how many slots an id may be placed in.
	Bucket = 8
	// DefaultSlots is 1 MiB of table: 65,536 sandboxes at most, the
	// memory of a page touched only once a sandbox lands in it.
	DefaultSlots = 1 << 16

	magic       = 0x73627074_61626c65 // "sbptable"
	version     = 1
	headerWords = 8 // 64 bytes: slots start on a cache line

	idBits  = 48
	idMask  = 1<<idBits - 1
	tagBits = 46
	tagMask = 1<<tagBits - 1
)

// Table is a mapping of a claim table.
type Table struct {
	mem   []byte
	words []uint64 // mem as words
	slots int
}

// Slot names a sandbox's slot: its index and the gen of that use. The zero
// Slot is none.
type Slot struct {
	i   uint32
	gen uint16
}

// Valid says s names a slot.
func (s Slot) Valid() bool { return s.gen != 0 }

// Create makes a table of slots (a multiple of Bucket) in a new memory
// file, sealed at its size (no process can shrink it under another's
// mapping), and maps it. The file is what Open maps elsewhere.
func Create(slots int) (*Table, *os.File, error) {
	if slots <= 0 || slots%Bucket != 0 || slots > 1<<30 {
		return nil, nil, fmt.Errorf("claim table: %d slots: want a positive multiple of %d", slots, Bucket)
	}
	size := int64(headerWords+2*slots) * 8
	f, err := sealedFile("sandboxpool-claims", size)
	if err != nil {
		return nil, nil, fmt.Errorf("claim table: %w", err)
	}
	t, err := mapFile(f, int(size))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	t.slots = slots
	atomic.StoreUint64(&t.words[1], version)
	atomic.StoreUint64(&t.words[2], uint64(slots))
	atomic.StoreUint64(&t.words[0], magic) // last: the header is complete
	return t, f, nil
}

// sealedFile makes a memory file of size bytes, sealed at that size (no
// process can shrink it under another's mapping).
func sealedFile(name string, size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal: %w", err)
	}
	return f, nil
}

// sealedSize is the size of f, a file sealed against shrinking: unsealed,
// it could shrink under a mapping (SIGBUS).
func sealedSize(f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_SHRINK == 0 {
		return 0, errors.New("the file is not sealed against shrinking")
	}
	return st.Size, nil
}

// Open maps the table in f (from Create, in this process or another). f
// may be closed after: the mapping stays.
func Open(f *os.File) (*Table, error) {
	size, err := sealedSize(f)
	if err != nil {
		return nil, fmt.Errorf("claim table: %w", err)
	}
	if size < headerWords*8 || size > (headerWords+2<<30)*8 || size%8 != 0 {
		return nil, fmt.Errorf("claim table: a file of %d bytes", size)
	}
	t, err := mapFile(f, int(size))
	if err != nil {
		return nil, err
	}
	slots := atomic.LoadUint64(&t.words[2])
	if atomic.LoadUint64(&t.words[0]) != magic || atomic.LoadUint64(&t.words[1]) != version ||
		slots == 0 || slots%Bucket != 0 || int64(headerWords+2*slots)*8 != size {
		t.Close()
		return nil, errors.New("claim table: not a table of this version")
	}
	t.slots = int(slots)
	return t, nil
}

func mapFile(f *os.File, size int) (*Table, error) {
	mem, words, err := mapWords(f, size)
	if err != nil {
		return nil, err
	}
	return &Table{mem: mem, words: words}, nil
}

// mapWords maps size bytes of f, shared, and the same memory as words.
func mapWords(f *os.File, size int) ([]byte, []uint64, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("claim table: mmap: %w", err)
	}
	// Page-aligned, so every word is aligned for the atomics.
	return mem, unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), size/8), nil
}

// Prefault maps every page of the table in this process at once (see
// prefault). For the process that claims: the controller.
func (t *Table) Prefault() error { return prefault(t.mem) }

// prefault maps every page of mem writable in this process now, in one
// call: a claim's CAS or note then never faults a page in. Sandboxes land
// in slots all over the table (their ids hash to a bucket), so a claim
// touched a page of it and one of the notes not mapped yet here nearly
// every time for the first few thousand claims: page faults were ~3% of a
// controller's CPU in bursts. It takes the files' memory (5 MiB for the
// default table and notes), which a pool's claims come to touch over its
// life anyway. Before Linux 5.14 (no MADV_POPULATE_WRITE) it fails and
// pages fault in as they are touched.
func prefault(mem []byte) error {
	if err := unix.Madvise(mem, unix.MADV_POPULATE_WRITE); err != nil {
		return fmt.Errorf("claim table: prefault: %w", err)
	}
	return nil
}

// Close unmaps the table; it must not be used after.
func (t *Table) Close() error {
	t.words = nil
	return unix.Munmap(t.mem)
}

// Slots is the table's number of slots.
func (t *Table) Slots() int { return t.slots }

func (t *Table) key(i uint32) *uint64   { return &t.words[headerWords+2*int(i)] }
func (t *Table) state(i uint32) *uint64 { return &t.words[headerWords+2*int(i)+1] }

// bucket is the first slot of id's bucket. Ids are random, but a mix
// keeps made-up ones (sb-000000000001, 2, 3...) from sharing one.
func (t *Table) bucket(id uint64) uint32 {
	h := (id & idMask) * 0x9e3779b97f4a7c15
	return uint32((h>>32)%uint64(t.slots/Bucket)) * Bucket
}

func gen(w uint64) uint16    { return uint16(w >> 48) }
func stateOf(w uint64) State { return State(w >> 46 & 3) }
func tagOf(w uint64) uint64  { return w & tagMask }
func word(g uint16, s State, tag uint64) uint64 {
	return uint64(g)<<48 | uint64(s)<<46 | tag&tagMask
}

// Tag is the tag of a claim by by at at, the same in every process: the
// same claim recorded again is held already, another one is refused.
// Never 0. Two claims of one sandbox share a tag once in 2^46.
func Tag(by string, at time.Time) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037) // FNV-1a
	for i := 0; i < len(by); i++ {
		h = (h ^ uint64(by[i])) * prime
	}
	ns := unixNano(at)
	h = (h ^ 0xff) * prime // ends by: "ab"+at and "a"+... differ
	for i := 0; i < 8; i++ {
		h = (h ^ ns>>(8*i)&0xff) * prime
	}
	if h&tagMask == 0 {
		return 1
	}
	return h & tagMask
}

// Place gives id (48 bits) a slot, pooled, or returns the zero Slot when
// its bucket is full. The agent's alone, one call at a time (with Free).
func (t *Table) Place(id uint64) Slot {
	b := t.bucket(id)
	for i := b; i < b+Bucket; i++ {
		if atomic.LoadUint64(t.key(i)) != 0 {
			continue
		}
		g := gen(atomic.LoadUint64(t.state(i))) + 1
		if g == 0 {
			g = 1
		}
		// The state first: a claimer that reads the new key finds the new
		// gen in the state.
		atomic.StoreUint64(t.state(i), word(g, Pooled, 0))
		atomic.StoreUint64(t.key(i), uint64(g)<<48|id&idMask)
		return Slot{i: i, gen: g}
	}
	return Slot{}
}

// Free gives s back once its sandbox is forgotten. The agent's alone.
func (t *Table) Free(s Slot) {
	if !s.Valid() || gen(atomic.LoadUint64(t.key(s.i))) != s.gen {
		return
	}
	// The key first: a claimer that still finds it sees the state ended
	// (Free comes after End) or free, with the old gen: gone either way.
	atomic.StoreUint64(t.key(s.i), 0)
	atomic.StoreUint64(t.state(s.i), word(s.gen, Free, 0))
}

// Load reads s's state and the tag of the claim holding it (Claimed).
func (t *Table) Load(s Slot) (State, uint64) {
	w := atomic.LoadUint64(t.state(s.i))
	if gen(w) != s.gen {
		return Free, 0
	}
	return stateOf(w), tagOf(w)
}

// End marks s ended (terminated, expired, its workload exited) and
// returns what it was before, with the tag of a claim that held it.
func (t *Table) End(s Slot) (State, uint64) {
	return t.end(s, false)
}

// EndPooled marks s ended only if no claim holds it: a pool's
// termination. It returns what it was before: Claimed means it is left
// as it is.
func (t *Table) EndPooled(s Slot) (State, uint64) {
	return t.end(s, true)
}

func (t *Table) end(s Slot, onlyPooled bool) (State, uint64) {
	p := t.state(s.i)
	for {
		w := atomic.LoadUint64(p)
		st := stateOf(w)
		if gen(w) != s.gen || st == Free || st == Ended || onlyPooled && st == Claimed {
			if gen(w) != s.gen {
				return Free, 0
			}
			return st, tagOf(w)
		}
		if atomic.CompareAndSwapUint64(p, w, word(s.gen, Ended, tagOf(w))) {
			return st, tagOf(w)
		}
	}
}

// Find returns id's slot, or the zero Slot when the table has none for it.
func (t *Table) Find(id uint64) Slot {
	id &= idMask
	b := t.bucket(id)
	for i := b; i < b+Bucket; i++ {
		k := atomic.LoadUint64(t.key(i))
		if k != 0 && k&idMask == id {
			return Slot{i: i, gen: gen(k)}
		}
	}
	return Slot{}
}

// Claim claims id (48 bits) for the claim of tag (Tag): Won or Held, or
// Taken, Gone, or Unknown when the table has no slot for it.
func (t *Table) Claim(id, tag uint64) Result {
	s := t.Find(id)
	if !s.Valid() {
		return Unknown
	}
	r, _ := t.ClaimSlot(s, tag)
	return r
}

// ClaimSlot claims s for the claim of tag; held is the tag of the claim
// that holds it after (this one's for Won and Held).
func (t *Table) ClaimSlot(s Slot, tag uint64) (r Result, held uint64) {
	tag &= tagMask
	p := t.state(s.i)
	for {
		w := atomic.LoadUint64(p)
		if gen(w) != s.gen {
			return Gone, 0 // freed (and maybe given to another sandbox) since
		}
		switch stateOf(w) {
		case Pooled:
			if atomic.CompareAndSwapUint64(p, w, word(s.gen, Claimed, tag)) {
				return Won, tag
			}
		case Claimed:
			if tagOf(w) == tag {
				return Held, tag
			}
			return Taken, tagOf(w)
		default:
			return Gone, 0
		}
	}
}
