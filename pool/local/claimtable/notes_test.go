package claimtable_test

import (
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool/local/claimtable"
	"golang.org/x/sys/unix"
)

func createNotes(t *testing.T, slots int) (*claimtable.Notes, *os.File) {
	t.Helper()
	n, f, err := claimtable.CreateNotes(slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		f.Close()
	})
	return n, f
}

func openNotes(t *testing.T, f *os.File, slots int) *claimtable.Notes {
	t.Helper()
	n, err := claimtable.OpenNotes(f, slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// A claimer notes its claim in its own mapping; the agent reads it for the
// claim holding the slot only.
func TestNotes(t *testing.T) {
	agent, f := create(t, claimtable.DefaultSlots)
	claimer := open(t, f)
	agentNotes, nf := createNotes(t, agent.Slots())
	claimerNotes := openNotes(t, nf, claimer.Slots())
	at := time.Now()
	long := strings.Repeat("x", claimtable.MaxNote)
	for i, by := range []string{"api 127.0.0.1:5555", "", long} {
		id := uint64(1000 + i)
		s := agent.Place(id)
		tag := claimtable.Tag(by, at)
		if _, _, ok := agentNotes.Read(s, tag); ok {
			t.Fatalf("%q: a note before the claim", by)
		}
		cs := claimer.Find(id)
		if r, _ := claimer.ClaimSlot(cs, tag); r != claimtable.Won {
			t.Fatalf("%q: claim %s", by, r)
		}
		if !claimerNotes.Write(cs, by, at) {
			t.Fatalf("%q: not noted", by)
		}
		got, gotAt, ok := agentNotes.Read(s, tag)
		if !ok || got != by || !gotAt.Equal(at) {
			t.Fatalf("the agent reads %q %s %v, want %q %s", got, gotAt, ok, by, at)
		}
		if _, _, ok := agentNotes.Read(s, claimtable.Tag(by, at.Add(time.Nanosecond))); ok {
			t.Fatalf("%q: the note read for another claim", by)
		}
		// The slot's next use: its claim reads no note until it writes one.
		agent.End(s)
		agent.Free(s)
		next := agent.Place(id)
		if _, _, ok := agentNotes.Read(next, claimtable.Tag("cli", at)); ok {
			t.Fatalf("%q: the slot's old note read for its next claim", by)
		}
		agent.End(next)
		agent.Free(next)
	}
	if claimerNotes.Write(claimer.Find(1000), long+"x", at) {
		t.Fatalf("a name of %d bytes noted, past MaxNote %d", len(long)+1, claimtable.MaxNote)
	}
	s := agent.Place(2000)
	if !claimerNotes.Write(s, "cli", time.Time{}) {
		t.Fatal("a claim of no instant not noted")
	}
	if by, at, ok := agentNotes.Read(s, claimtable.Tag("cli", time.Time{})); !ok || by != "cli" || !at.IsZero() {
		t.Fatalf("a claim of no instant: %q %s %v", by, at, ok)
	}
}

// Two claims' notes written over each other in one slot as the agent reads
// it: a read is either the claim it asks for, whole, or none.
func TestNotesTorn(t *testing.T) {
	agent, _ := create(t, claimtable.DefaultSlots)
	notes, nf := createNotes(t, agent.Slots())
	other := openNotes(t, nf, agent.Slots())
	s := agent.Place(7)
	at := time.Now()
	a, b := "api 127.0.0.1:1", "a much longer claimer's name, 40 bytes.."
	tagA := claimtable.Tag(a, at)
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; !stop.Load(); i++ {
			if i%2 == 0 {
				other.Write(s, a, at)
			} else {
				other.Write(s, b, at.Add(time.Second))
			}
		}
	})
	seen := 0
	for range 100000 {
		if by, gotAt, ok := notes.Read(s, tagA); ok {
			if by != a || !gotAt.Equal(at) {
				stop.Store(true)
				wg.Wait()
				t.Fatalf("read %q %s for the claim of %q %s", by, gotAt, a, at)
			}
			seen++
		}
	}
	stop.Store(true)
	wg.Wait()
	if seen == 0 {
		t.Log("no whole note read (the writer was never descheduled mid-note)")
	}
}

func TestOpenNotesRefuses(t *testing.T) {
	_, f := createNotes(t, 64)
	if n, err := claimtable.OpenNotes(f, 128); err == nil {
		n.Close()
		t.Fatal("notes mapped for a table of another size")
	}
	fd, err := unix.MemfdCreate("x", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	g := os.NewFile(uintptr(fd), "x")
	defer g.Close()
	if err := g.Truncate(int64(8+8*64) * 8); err != nil {
		t.Fatal(err)
	}
	if n, err := claimtable.OpenNotes(g, 64); err == nil {
		n.Close()
		t.Fatal("unsealed notes mapped")
	}
}

// minorFaults is this thread's count of minor page faults so far.
func minorFaults(t *testing.T) int64 {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Minflt
}

// A claimer's mapping prefaulted takes no page fault on any page of the
// table or the notes; one not prefaulted takes one a page (the agent's
// creation of the files touched none of those pages).
func TestPrefaultMapsEveryPage(t *testing.T) {
	agent, f := create(t, claimtable.DefaultSlots)
	_, nf := createNotes(t, agent.Slots())
	const pageNotes = 4096 / 64 // notes a page
	touch := func(tab *claimtable.Table, notes *claimtable.Notes) int64 {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		at := time.Now()
		runtime.GC() // so the loop's own faults are only the mappings', not a heap growing
		before := minorFaults(t)
		for i := range agent.Slots() / pageNotes {
			notes.Write(claimtable.SlotAt(i*pageNotes), "api 127.0.0.1:5555", at)
		}
		for id := range uint64(4 * agent.Slots() / claimtable.Bucket) {
			tab.Find(id) // reads buckets all over the table
		}
		return minorFaults(t) - before
	}
	cold := touch(open(t, f), openNotes(t, nf, agent.Slots()))
	tab, notes := open(t, f), openNotes(t, nf, agent.Slots())
	if err := tab.Prefault(); err != nil {
		t.Skip(err) // a kernel before 5.14
	}
	if err := notes.Prefault(); err != nil {
		t.Fatal(err)
	}
	// The thread also faults on the runtime's own pages now and then (a
	// stack, a heap span): a prefault that worked leaves a few percent of
	// the cold count, one that did nothing leaves all of it.
	pages := int64(agent.Slots() / pageNotes)
	if warm := touch(tab, notes); warm > pages/16 || cold < pages {
		t.Fatalf("page faults touching every page: %d prefaulted, %d not; want under %d and at least %d", warm, cold, pages/16, pages)
	}
}
