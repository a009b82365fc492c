package claimtable_test

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool/local/claimtable"
	"golang.org/x/sys/unix"
)

// envChild makes the test binary a claimer in another process: it maps the
// table on fd 3 and claims the id and tag given (CHILD=id,tag), printing
// the result.
const envChild = "CLAIMTABLE_TEST_CHILD"

func TestMain(m *testing.M) {
	if arg := os.Getenv(envChild); arg != "" {
		idText, tagText, _ := strings.Cut(arg, ",")
		id, _ := strconv.ParseUint(idText, 10, 64)
		tag, _ := strconv.ParseUint(tagText, 10, 64)
		t, err := claimtable.Open(os.NewFile(3, "table"))
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println(t.Claim(id, tag))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func create(t *testing.T, slots int) (*claimtable.Table, *os.File) {
	t.Helper()
	tab, f, err := claimtable.Create(slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tab.Close()
		f.Close()
	})
	return tab, f
}

// open maps f again: another process's view, as far as the memory goes.
func open(t *testing.T, f *os.File) *claimtable.Table {
	t.Helper()
	tab, err := claimtable.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tab.Close() })
	return tab
}

func TestClaim(t *testing.T) {
	agent, f := create(t, claimtable.DefaultSlots)
	other := open(t, f)
	now := time.Now()
	mine, theirs := claimtable.Tag("api 127.0.0.1:1", now), claimtable.Tag("api 127.0.0.1:1", now.Add(time.Nanosecond))
	const id, pooled, unknown = 0xabc, 0xdef, 0x123
	s := agent.Place(id)
	agent.Place(pooled)
	if !s.Valid() {
		t.Fatal("no slot in an empty table")
	}
	for _, step := range []struct {
		tab  *claimtable.Table
		id   uint64
		tag  uint64
		want claimtable.Result
	}{
		{other, unknown, mine, claimtable.Unknown},
		{other, id, mine, claimtable.Won},
		{agent, id, mine, claimtable.Held}, // the same claim recorded again
		{agent, id, theirs, claimtable.Taken},
		{other, id, theirs, claimtable.Taken},
	} {
		if got := step.tab.Claim(step.id, step.tag); got != step.want {
			t.Fatalf("claim %x with tag %x: %s, want %s", step.id, step.tag, got, step.want)
		}
	}
	if st, tag := agent.Load(s); st != claimtable.Claimed || tag != mine {
		t.Fatalf("the agent reads %d %x, want claimed %x", st, tag, mine)
	}
	// A pool's termination of a claimed sandbox changes nothing.
	if st, tag := agent.EndPooled(s); st != claimtable.Claimed || tag != mine {
		t.Fatalf("EndPooled of a claimed slot: %d %x, want claimed %x", st, tag, mine)
	}
	if got := other.Claim(id, mine); got != claimtable.Held {
		t.Fatalf("after a refused pool termination: %s, want held", got)
	}
	// Its claimer's terminate ends it: no claim of it after.
	if st, tag := agent.End(s); st != claimtable.Claimed || tag != mine {
		t.Fatalf("End of a claimed slot: %d %x", st, tag)
	}
	if got := other.Claim(id, mine); got != claimtable.Gone {
		t.Fatalf("claim after its end: %s, want gone", got)
	}
	// A pooled one the pool terminates: gone for a claim after.
	ps := agent.Find(pooled)
	if st, _ := agent.EndPooled(ps); st != claimtable.Pooled {
		t.Fatalf("EndPooled of a pooled slot: %d", st)
	}
	if got := other.Claim(pooled, mine); got != claimtable.Gone {
		t.Fatalf("claim after a pool's termination: %s, want gone", got)
	}
	agent.Free(s)
	if got := other.Claim(id, mine); got != claimtable.Unknown {
		t.Fatalf("claim after its slot was freed: %s, want unknown", got)
	}
}

// A slot freed and given to another sandbox is never claimed through a
// stale Slot (ABA), and the gen never comes back to 0 (none).
func TestSlotReuse(t *testing.T) {
	agent, f := create(t, claimtable.Bucket) // one bucket: every id shares it
	claimer := open(t, f)
	tag := claimtable.Tag("cli", time.Now())
	var first claimtable.Slot
	for i := range claimtable.Bucket {
		s := agent.Place(uint64(100 + i))
		if !s.Valid() {
			t.Fatalf("no slot for the %dth sandbox of %d", i+1, claimtable.Bucket)
		}
		if i == 0 {
			first = s
		}
	}
	if s := agent.Place(200); s.Valid() {
		t.Fatal("a slot in a full bucket")
	}
	stale := claimer.Find(100)
	agent.End(first)
	agent.Free(first)
	next := agent.Place(200) // the freed slot, its next use
	if !next.Valid() || next == first {
		t.Fatalf("the freed slot was not reused: %+v then %+v", first, next)
	}
	if r, _ := claimer.ClaimSlot(stale, tag); r != claimtable.Gone {
		t.Fatalf("a claim through the stale slot: %s, want gone", r)
	}
	if st, _ := agent.Load(next); st != claimtable.Pooled {
		t.Fatalf("the new sandbox is %d after a stale claim, want pooled", st)
	}
	if r := claimer.Claim(100, tag); r != claimtable.Unknown {
		t.Fatalf("a claim of the old id: %s, want unknown", r)
	}
	// 70,000 uses of one slot: its gen wraps past 0.
	id := uint64(200)
	for i := range 70000 {
		s := agent.Find(id)
		agent.End(s)
		agent.Free(s)
		id = uint64(300 + i)
		if s = agent.Place(id); !s.Valid() {
			t.Fatalf("use %d: no slot", i)
		}
	}
	if r := claimer.Claim(id, tag); r != claimtable.Won {
		t.Fatalf("after 70,000 uses: %s, want won", r)
	}
}

// Claimers in many goroutines, each with its own mapping, and the pool
// terminating: exactly one of them wins each sandbox.
func TestConcurrentClaims(t *testing.T) {
	agent, f := create(t, claimtable.DefaultSlots)
	const claimers, rounds = 8, 300
	tabs := make([]*claimtable.Table, claimers)
	for i := range tabs {
		tabs[i] = open(t, f)
	}
	at := time.Now()
	for round := range rounds {
		id := uint64(round + 1)
		s := agent.Place(id)
		var won, held, taken, gone atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, tab := range tabs {
			tag := claimtable.Tag("c"+strconv.Itoa(i), at)
			wg.Go(func() {
				<-start
				for range 2 { // the second try is the same claim again
					switch tab.Claim(id, tag) {
					case claimtable.Won:
						won.Add(1)
					case claimtable.Held:
						held.Add(1)
					case claimtable.Taken:
						taken.Add(1)
					case claimtable.Gone:
						gone.Add(1)
					default:
						t.Errorf("round %d: unknown", round)
					}
				}
			})
		}
		var poolWon bool
		wg.Go(func() {
			<-start
			st, _ := agent.EndPooled(s)
			poolWon = st == claimtable.Pooled
		})
		close(start)
		wg.Wait()
		if poolWon {
			if won.Load() != 0 || held.Load() != 0 || gone.Load()+taken.Load() != 2*claimers {
				t.Fatalf("round %d: the pool's termination and %d claims won", round, won.Load())
			}
		} else if won.Load() != 1 || held.Load() != 1 || taken.Load() != 2*claimers-2 {
			t.Fatalf("round %d: won %d held %d taken %d gone %d, want one claim", round, won.Load(), held.Load(), taken.Load(), gone.Load())
		}
		agent.End(s)
		agent.Free(s)
	}
}

// A claim made in another process is the agent's to read.
func TestClaimFromAnotherProcess(t *testing.T) {
	agent, f := create(t, claimtable.DefaultSlots)
	s := agent.Place(42)
	tag := claimtable.Tag("api 127.0.0.1:9", time.Now())
	run := func() string {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d", envChild, 42, tag))
		cmd.ExtraFiles = []*os.File{f}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("claimer: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run(); got != "won" {
		t.Fatalf("the other process's claim: %q, want won", got)
	}
	if st, got := agent.Load(s); st != claimtable.Claimed || got != tag {
		t.Fatalf("the agent reads %d %x, want claimed %x", st, got, tag)
	}
	if got := run(); got != "held" {
		t.Fatalf("the same claim again: %q, want held", got)
	}
}

func TestTag(t *testing.T) {
	at := time.Date(2026, 12, 2, 9, 0, 0, 123456789, time.UTC)
	same := claimtable.Tag("api 127.0.0.1:1", at.In(time.FixedZone("x", 3600)))
	for _, c := range []struct {
		by string
		at time.Time
	}{
		{"api 127.0.0.1:1", at.Add(time.Nanosecond)},
		{"api 127.0.0.1:2", at},
		{"api 127.0.0.1:1", time.Time{}},
		{"", at},
	} {
		if tag := claimtable.Tag(c.by, c.at); tag == same || tag == 0 || tag >= 1<<46 {
			t.Fatalf("Tag(%q, %s) = %x against %x", c.by, c.at, tag, same)
		}
	}
	if claimtable.Tag("api 127.0.0.1:1", at) != same {
		t.Fatal("the same claim in another zone has another tag")
	}
}

// Open maps only a sealed table of its version: anything else could shrink
// under it or mean something else.
func TestOpenRefuses(t *testing.T) {
	fd, err := unix.MemfdCreate("x", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "x")
	defer f.Close()
	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	if tab, err := claimtable.Open(f); err == nil {
		tab.Close()
		t.Fatal("an unsealed file was mapped")
	}
	fd, err = unix.MemfdCreate("y", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	g := os.NewFile(uintptr(fd), "y")
	defer g.Close()
	if err := g.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(g.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
		t.Fatal(err)
	}
	if tab, err := claimtable.Open(g); err == nil {
		tab.Close()
		t.Fatal("a file of zeros was mapped")
	}
	if _, _, err := claimtable.Create(claimtable.Bucket + 1); err == nil {
		t.Fatal("a table of slots that are no multiple of a bucket")
	}
}
