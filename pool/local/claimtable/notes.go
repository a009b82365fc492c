package claimtable

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Notes is a table's side area, in a memory file of its own: per slot,
// who made the claim that holds it and its instant, written by the
// claimer after its CAS and read by the agent when it names the claim in
// a message. With it the claim's whole record is in shared memory and
// the agent is asked nothing about it (a request per claim was ~7% of a
// controller's CPU in bursts, and a wake-up of the agent).
//
// A note is checked against the claim's tag in the slot (Tag of its by
// and at) when read, so a note torn by a concurrent write, left half
// written by a claimer that died, or written for an earlier use of the
// slot reads as none.
//
// Layout: a header of headerWords words, then noteWords words per slot:
//
//	at      the claim's instant, Unix ns (0: none)
//	by      1 byte of length, then the bytes (MaxNote at most)
type Notes struct {
	mem   []byte
	words []uint64
	slots int
}

const (
	// MaxNote is the longest claimer's name a note holds; a longer one
	// is recorded by a request.
	MaxNote = (noteWords-1)*8 - 1

	noteWords    = 8                   // 64 bytes: a cache line per note
	notesMagic   = 0x7362706e_6f746573 // "sbpnotes"
	notesVersion = 1
)

// CreateNotes makes the notes of a table of slots in a new memory file,
// sealed at its size, and maps it. A page of it takes memory only once a
// claim writes there.
func CreateNotes(slots int) (*Notes, *os.File, error) {
	if slots <= 0 || slots > 1<<30 {
		return nil, nil, fmt.Errorf("claim notes: %d slots", slots)
	}
	size := int64(headerWords+noteWords*slots) * 8
	f, err := sealedFile("sandboxpool-claim-notes", size)
	if err != nil {
		return nil, nil, fmt.Errorf("claim notes: %w", err)
	}
	mem, words, err := mapWords(f, int(size))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	atomic.StoreUint64(&words[1], notesVersion)
	atomic.StoreUint64(&words[2], uint64(slots))
	atomic.StoreUint64(&words[0], notesMagic) // last: the header is complete
	return &Notes{mem: mem, words: words, slots: slots}, f, nil
}

// OpenNotes maps the notes in f (from CreateNotes) of a table of slots.
// f may be closed after: the mapping stays.
func OpenNotes(f *os.File, slots int) (*Notes, error) {
	size, err := sealedSize(f)
	if err != nil {
		return nil, fmt.Errorf("claim notes: %w", err)
	}
	if slots <= 0 || slots > 1<<30 || size != int64(headerWords+noteWords*slots)*8 {
		return nil, fmt.Errorf("claim notes: a file of %d bytes for %d slots", size, slots)
	}
	mem, words, err := mapWords(f, int(size))
	if err != nil {
		return nil, err
	}
	n := &Notes{mem: mem, words: words, slots: slots}
	if atomic.LoadUint64(&words[0]) != notesMagic || atomic.LoadUint64(&words[1]) != notesVersion ||
		atomic.LoadUint64(&words[2]) != uint64(slots) {
		n.Close()
		return nil, errors.New("claim notes: not notes of this version")
	}
	return n, nil
}

// Prefault maps every page of the notes in this process at once (see
// prefault). For the process that claims: the controller.
func (n *Notes) Prefault() error { return prefault(n.mem) }

// Close unmaps the notes; they must not be used after.
func (n *Notes) Close() error {
	n.words = nil
	return unix.Munmap(n.mem)
}

func (n *Notes) note(s Slot) []uint64 {
	i := headerWords + noteWords*int(s.i)
	return n.words[i : i+noteWords]
}

// Write notes that the claim of by at at holds s (after its claimer's
// CAS won, or found it held by this same claim). It returns false, and
// writes nothing, when by is longer than MaxNote.
func (n *Notes) Write(s Slot, by string, at time.Time) bool {
	if !s.Valid() || int(s.i) >= n.slots || len(by) > MaxNote {
		return false
	}
	w := n.note(s)
	var buf [(noteWords - 1) * 8]byte
	buf[0] = byte(len(by))
	copy(buf[1:], by)
	for i := range noteWords - 1 {
		var v uint64
		for j := range 8 {
			v |= uint64(buf[8*i+j]) << (8 * j)
		}
		atomic.StoreUint64(&w[1+i], v)
	}
	atomic.StoreUint64(&w[0], unixNano(at))
	return true
}

// Read returns the note of s when it is the claim of tag's: false for none,
// another claim's, or one being written.
func (n *Notes) Read(s Slot, tag uint64) (by string, at time.Time, ok bool) {
	if !s.Valid() || int(s.i) >= n.slots {
		return "", time.Time{}, false
	}
	w := n.note(s)
	ns := atomic.LoadUint64(&w[0])
	var buf [(noteWords - 1) * 8]byte
	for i := range noteWords - 1 {
		v := atomic.LoadUint64(&w[1+i])
		for j := range 8 {
			buf[8*i+j] = byte(v >> (8 * j))
		}
	}
	if int(buf[0]) > MaxNote {
		return "", time.Time{}, false
	}
	by = string(buf[1 : 1+int(buf[0])])
	if ns != 0 {
		at = time.Unix(0, int64(ns))
	}
	if Tag(by, at) != tag&tagMask {
		return "", time.Time{}, false
	}
	return by, at, true
}

// unixNano is at as Tag reads it: 0 for the zero time.
func unixNano(at time.Time) uint64 {
	if at.IsZero() {
		return 0
	}
	return uint64(at.UnixNano())
}
