package filestore

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

func takeQuick(t testing.TB, s *Store, by string, sec int) (pool.Entry, pool.PendingTake) {
	t.Helper()
	e, p, ok := s.TakeQuick(pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: by, Now: at(sec)})
	if !ok {
		t.Fatal("TakeQuick: not served from memory")
	}
	return e, p
}

func recordTake(t testing.TB, p pool.PendingTake) {
	t.Helper()
	if err := p.Record(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// claimedBy is who the store says claimed id ("" pooled, "-" missing).
func claimedBy(t testing.TB, s *Store, id string) string {
	t.Helper()
	for _, e := range load(t, s).Entries {
		if e.ID == id {
			return e.ClaimedBy
		}
	}
	return "-"
}

// A take from memory touches no file until its record, which makes it
// what a Take would have: others see the claim, and a file read afresh
// replays it. This Store sees it claimed meanwhile.
func TestTakeQuickWritesOnlyAtItsRecord(t *testing.T) {
	dir := t.TempDir()
	s, other := open(t, dir), open(t, dir)
	seed(t, s, pool.Stored{Entries: []pool.Entry{{Ref: ref("a", 100)}, {Ref: ref("b", 100)}}})
	if _, _, ok := s.TakeQuick(pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "me", Now: t0}); ok {
		t.Fatal("served a take from memory before the file was ever read")
	}
	load(t, s)
	before := readFile(t, s.Path())
	reads, appends := s.fullReads, s.appends
	e, p := takeQuick(t, s, "me", 1)
	if e.ID != "a" || e.ClaimedBy != "me" || !e.ClaimedAt.Equal(at(1)) {
		t.Fatalf("took %+v, want a claimed by me at %s", e, at(1))
	}
	if !bytes.Equal(readFile(t, s.Path()), before) || s.appends != appends {
		t.Fatal("the file changed before the take's record")
	}
	if got := claimedBy(t, s, "a"); got != "me" {
		t.Fatalf("this Store sees a claimed by %q before the record, want me", got)
	}
	if got := claimedBy(t, other, "a"); got != "" {
		t.Fatalf("another Store sees a claimed by %q before the record, want pooled", got)
	}
	if got, _ := take(t, s, "next"); got.ID != "b" {
		t.Fatalf("the next take got %s, want b", got.ID)
	}
	// Until its claimer's gate decided (Record), no batch writes it.
	if got := claimedBy(t, other, "a"); got != "" {
		t.Fatalf("another Store sees a claimed by %q after another write, before the record", got)
	}
	// A record that could not be made (its caller gave up) is made by the
	// next change of this Store.
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Record(gone); err == nil {
		t.Fatal("Record with a context ended: no error")
	}
	if err := s.SetTarget(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	if got := claimedBy(t, other, "a"); got != "me" {
		t.Fatalf("another Store sees a claimed by %q after the next write, want me", got)
	}
	recordTake(t, p) // written already: nothing more
	if s.appends != appends+2 || s.fullReads != reads {
		t.Fatalf("%d appends and %d full reads, want 2 and 0", s.appends-appends, s.fullReads-reads)
	}
	if p.Cancel() != true {
		t.Fatal("Cancel of a recorded take says it was not written")
	}
	if got := desc(load(t, open(t, dir)).Entries); got != "b* a*" { // in the order of their records
		t.Fatalf("the file replays to %s, want b* a*", got)
	}
}

// Another process takes the same entry from the file before the record
// (its gate refuses it: the claim table held it for the take from memory):
// the record puts the entry back claimed by its claim, and so it does for
// an entry removed meanwhile. The file stays one every reader replays.
func TestTakeQuickRecordWinsOverTheFile(t *testing.T) {
	dir := t.TempDir()
	s, other := open(t, dir), open(t, dir)
	seed(t, s, pool.Stored{Entries: []pool.Entry{{Ref: ref("a", 100)}, {Ref: ref("b", 100)}, {Ref: ref("c", 100)}}})
	load(t, s)
	a, pa := takeQuick(t, s, "me", 1)
	if got, _ := take(t, other, "cli"); got.ID != a.ID {
		t.Fatalf("the other Store took %s, want %s (the file has it pooled)", got.ID, a.ID)
	}
	b, pb := takeQuick(t, s, "me", 2)
	if b.ID != "b" {
		t.Fatalf("took %s from memory, want b", b.ID)
	}
	if _, err := other.Remove(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	recordTake(t, pa)
	recordTake(t, pb)
	for _, st := range []*Store{s, other, open(t, dir)} {
		if got := desc(load(t, st).Entries); got != "a* b* c" {
			t.Fatalf("entries %s, want a* b* c", got)
		}
		if by := claimedBy(t, st, "a"); by != "me" {
			t.Fatalf("a claimed by %q, want me", by)
		}
	}
}

// Records read from others' appends, and a compaction, keep a pending
// take: this Store never sees its entry pooled, and it is written once.
func TestTakeQuickSurvivesRefreshAndCompaction(t *testing.T) {
	dir := t.TempDir()
	s, other := open(t, dir), open(t, dir)
	var entries []pool.Entry
	for i := range 5 {
		entries = append(entries, pool.Entry{Ref: ref(fmt.Sprint("p", i), 100)})
	}
	seed(t, s, pool.Stored{Entries: entries})
	load(t, s)
	_, p0 := takeQuick(t, s, "me", 1)
	if err := other.Put(context.Background(), ref("new", 200)); err != nil {
		t.Fatal(err)
	}
	if got := desc(load(t, s).Entries); got != "p0* p1 p2 p3 p4 new" {
		t.Fatalf("after another's append: %s", got)
	}
	appendFile(t, s.Path(), "") // no change
	_, p1 := takeQuick(t, s, "me", 2)
	compactNow(t, s) // writes both claimed: they are recorded
	appends := s.appends
	recordTake(t, p0)
	recordTake(t, p1)
	if s.appends != appends {
		t.Fatal("a take the compaction wrote was written again")
	}
	if got := desc(load(t, open(t, dir)).Entries); got != "p0* p1* p2 p3 p4 new" {
		t.Fatalf("the file replays to %s", got)
	}
}

// A take the gate refused is withdrawn: nothing of it is written, and its
// entry is pooled again where it was.
func TestTakeQuickCancel(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	seed(t, s, pool.Stored{Entries: []pool.Entry{{Ref: ref("a", 100)}, {Ref: ref("b", 100)}}})
	load(t, s)
	before := readFile(t, s.Path())
	_, p := takeQuick(t, s, "me", 1)
	if p.Cancel() {
		t.Fatal("Cancel says the take was written")
	}
	recordTake(t, p)
	if err := s.SetTarget(context.Background(), 3); err != nil { // a batch: nothing pending in it
		t.Fatal(err)
	}
	if got := desc(load(t, open(t, dir)).Entries); got != "a b" {
		t.Fatalf("after a cancelled take the file has %s (was %q)", got, before)
	}
	if got := desc(load(t, s).Entries); got != "a b" {
		t.Fatalf("after a cancelled take this Store has %s", got)
	}
}

// Takes from memory in one Store race takes from the file in another, each
// claim decided by a gate (the claim table's part): no sandbox is won
// twice, every winner's claim ends up in the file as its, nothing else
// leaves the pool, and the file stays one every reader replays.
func TestTakeQuickRacesTakesFromTheFile(t *testing.T) {
	dir := t.TempDir()
	quick, file := open(t, dir), open(t, dir)
	const n = 300
	var entries []pool.Entry
	for i := range n {
		entries = append(entries, pool.Entry{Ref: ref(fmt.Sprintf("sb-%03d", i), 100)})
	}
	seed(t, quick, pool.Stored{Entries: entries})
	load(t, quick)
	var (
		mu     sync.Mutex
		winner = map[string]string{} // id -> by
		clock  atomic.Int64
	)
	gate := func(e pool.Entry) bool {
		mu.Lock()
		defer mu.Unlock()
		if by, ok := winner[e.ID]; ok {
			return by == e.ClaimedBy
		}
		winner[e.ID] = e.ClaimedBy
		return true
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	var failed atomic.Value
	fail := func(err error) { failed.CompareAndSwap(nil, err) }
	claimer := func(s *Store, name string, fromMemory bool) {
		defer wg.Done()
		for i := 0; ; i++ {
			tr := pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: fmt.Sprintf("%s-%d", name, i), Now: at(int(clock.Add(1)))}
			var (
				e   pool.Entry
				p   pool.PendingTake
				ok  bool
				err error
			)
			if fromMemory {
				e, p, ok = s.TakeQuick(tr)
			}
			if p == nil {
				e, _, ok, err = s.Take(ctx, tr)
				if err != nil {
					fail(err)
					return
				}
			}
			if !ok {
				return // none left
			}
			won := gate(e)
			switch {
			case won && p != nil:
				err = p.Record(ctx)
			case won:
			case p != nil:
				p.Cancel()
				err = s.Withdraw(ctx, e)
			default:
				err = s.Withdraw(ctx, e)
			}
			if err != nil {
				fail(err)
				return
			}
		}
	}
	for g := range 3 {
		wg.Add(2)
		go claimer(quick, fmt.Sprint("quick", g), true)
		go claimer(file, fmt.Sprint("file", g), false)
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	st := load(t, open(t, dir))
	if len(st.Entries) != n {
		t.Fatalf("%d entries in the file, want %d", len(st.Entries), n)
	}
	quickWins := 0
	for _, e := range st.Entries {
		if by := winner[e.ID]; e.ClaimedBy != by {
			t.Fatalf("%s claimed by %q in the file, won by %q", e.ID, e.ClaimedBy, by)
		}
		if strings.HasPrefix(e.ClaimedBy, "quick") {
			quickWins++
		}
	}
	t.Logf("%d claims won from memory, %d from the file", quickWins, len(winner)-quickWins)
}

// Takes recorded soon (a burst's) are written by the next change of the
// Store, in its one append; with none, by a change of their own within
// recordDelay; and at Close, whatever is left.
func TestTakeQuickRecordSoon(t *testing.T) {
	old := recordDelay
	recordDelay = time.Hour
	t.Cleanup(func() { recordDelay = old })
	dir := t.TempDir()
	s, other := open(t, dir), open(t, dir)
	seed(t, s, pool.Stored{Entries: []pool.Entry{{Ref: ref("a", 100)}, {Ref: ref("b", 100)}, {Ref: ref("c", 100)}, {Ref: ref("d", 100)}}})
	load(t, s)
	_, pa := takeQuick(t, s, "me", 1)
	_, pb := takeQuick(t, s, "me", 2)
	appends := s.appends
	pa.RecordSoon()
	pb.RecordSoon()
	if got := desc(load(t, other).Entries); got != "a b c d" || s.appends != appends {
		t.Fatalf("before any change another Store reads %s (%d appends), want a b c d (none)", got, s.appends-appends)
	}
	if err := s.Put(context.Background(), ref("e", 100)); err != nil {
		t.Fatal(err)
	}
	if got := desc(load(t, other).Entries); got != "a* b* c d e" || s.appends != appends+1 {
		t.Fatalf("after a put another Store reads %s (%d appends), want a* b* c d e (1)", got, s.appends-appends)
	}
	recordTake(t, pa) // written already: nothing more
	if s.appends != appends+1 {
		t.Fatalf("Record after the write appended again")
	}

	_, pc := takeQuick(t, s, "me", 3)
	pc.RecordSoon()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := desc(load(t, other).Entries); got != "a* b* c* d e" {
		t.Fatalf("after Close another Store reads %s, want a* b* c* d e", got)
	}

	recordDelay = time.Millisecond
	s2 := open(t, dir)
	load(t, s2)
	_, pd := takeQuick(t, s2, "me", 4)
	pd.RecordSoon()
	testkit.Eventually(t, 10*time.Second, "d recorded with no other change", func() bool {
		return claimedBy(t, other, "d") == "me"
	})
}
