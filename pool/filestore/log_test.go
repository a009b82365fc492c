package filestore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

func take(t testing.TB, s *Store, by string) (pool.Entry, bool) {
	t.Helper()
	e, _, ok, err := s.Take(context.Background(), pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: by, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	return e, ok
}

// compactNow compacts s's file at once, as the background compaction does.
func compactNow(t testing.TB, s *Store) {
	t.Helper()
	if err := s.begin(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	defer s.end()
	if err := s.refresh(); err != nil {
		t.Fatal(err)
	}
	if err := s.compactLocked(); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func appendFile(t testing.TB, path, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// A writer killed mid-append leaves a line without its newline: it was never
// acknowledged, so it does not count, and the next writer cuts it away.
func TestTornLastLine(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	if err := s.Put(ctx, ref("a", 100)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTarget(ctx, 2); err != nil {
		t.Fatal(err)
	}
	good := readFile(t, s.Path())
	torn := `{"op":"claim","id":"a","by":"dead","at":"2030-01-`
	appendFile(t, s.Path(), torn)

	r := open(t, dir)
	if st := load(t, r); desc(st.Entries) != "a" || st.Target != 2 {
		t.Fatalf("with a torn tail: %+v", st)
	}
	if got := readFile(t, s.Path()); string(got) != string(good)+torn {
		t.Fatalf("a Load changed the file: %q", got)
	}
	if err := r.Put(ctx, ref("b", 200)); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, s.Path())
	want := string(good) + `{"op":"put","id":"b","url":"http://127.0.0.1:1/b","created_at":"2030-01-02T03:04:05.0000006Z","expires_at":"2030-01-02T03:07:25.0000006Z"}` + "\n"
	if string(got) != want {
		t.Fatalf("after a Put:\n%s\nwant:\n%s", got, want)
	}
	// s read the file before the torn line came and went: it follows along.
	if st := load(t, s); desc(st.Entries) != "a b" {
		t.Fatalf("s sees %q", desc(st.Entries))
	}
	if e, ok := take(t, s, "me"); !ok || e.ID != "a" {
		t.Fatalf("take: %v %v", e.ID, ok)
	}
}

func TestCorruptLog(t *testing.T) {
	snap := `{"version":2,"entries":[` + "\n" + `{"id":"a","url":"u","created_at":"2030-01-01T00:00:00Z","expires_at":"2030-01-01T00:05:00Z"}` + "\n]}\n"
	claimA := `{"op":"claim","id":"a","by":"x","at":"2030-01-01T00:01:00Z"}` + "\n"
	at := strconv.Itoa(len(snap))
	for _, tc := range []struct{ name, data, what string }{
		{"garbage in the middle", snap + "garbage\n" + claimA, "log record at byte " + at + ": invalid JSON"},
		{"garbage as a whole last line", snap + claimA + "}{\n", "log record at byte " + strconv.Itoa(len(snap)+len(claimA))},
		{"text on the snapshot's line", snap[:len(snap)-1] + `{"op":"del","id":"a"}` + "\n", "trailing data after the JSON object"},
		{"two records on a line", snap + strings.TrimSuffix(claimA, "\n") + claimA, "trailing data after the record"},
		{"unknown op", snap + `{"op":"grow"}` + "\n", `unknown op "grow"`},
		{"unknown field", snap + `{"op":"del","id":"a","why":1}` + "\n", `unknown field "why"`},
		{"claim of a claimed one", snap + claimA + claimA, `claim of "a", which is not in the pool`},
		{"claim by nobody", snap + `{"op":"claim","id":"a"}` + "\n", "by nobody"},
		{"put of a known id", snap + `{"op":"put","id":"a"}` + "\n", `put of "a", already recorded`},
		{"delete of an unknown id", snap + `{"op":"del","id":"z"}` + "\n", `delete of "z"`},
		{"negative target", snap + `{"op":"target","n":-1}` + "\n", "target without a count"},
		{"bad timing", snap + `{"op":"timing","ttl":"1m","use_duration":"1m"}` + "\n", "bad timing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t, t.TempDir())
			if err := os.WriteFile(s.Path(), []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			for name, call := range map[string]func() error{
				"Load":      func() error { _, err := s.Load(ctx); return err },
				"Put":       func() error { return s.Put(ctx, ref("new", 1)) },
				"SetTiming": func() error { return s.SetTiming(ctx, time.Hour, time.Minute) },
			} {
				err := call()
				if err == nil || !strings.Contains(err.Error(), s.Path()) || !strings.Contains(err.Error(), tc.what) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("%s: error %v: want one line with the path and %q", name, err, tc.what)
				}
			}
			if got := readFile(t, s.Path()); string(got) != tc.data {
				t.Fatalf("the file was changed: %q", got)
			}
		})
	}
}

// A claim that returned is never handed out again, even when its process is
// killed right after: the claim was written to the file (the kernel's page
// cache, which outlives the process) before Take returned.
func TestClaimSurvivesKill9(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	const n = 600
	var entries []pool.Entry
	for i := range n {
		entries = append(entries, pool.Entry{Ref: ref(fmt.Sprintf("sb-%03d", i), 100)})
	}
	seed(t, s, pool.Stored{Entries: entries})

	printed := map[string]string{} // id -> the claimer that printed it
	for round := range 4 {
		cmd := helper(t, dir, "take-until-killed")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		me := "pid " + strconv.Itoa(cmd.Process.Pid)
		r := bufio.NewReader(out)
		for got := 0; got < 1+round*7; {
			line, err := r.ReadString('\n')
			if err != nil {
				cmd.Process.Kill()
				t.Fatalf("helper: %q %v", line, err)
			}
			if id := strings.TrimSpace(line); strings.HasPrefix(id, "sb-") {
				printed[id] = me
				got++
			} else if strings.HasPrefix(line, "error:") {
				t.Fatal(line)
			}
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
	}
	st := load(t, s)
	by := map[string]string{}
	for _, e := range st.Entries {
		by[e.ID] = e.ClaimedBy
	}
	for id, who := range printed {
		if by[id] != who {
			t.Fatalf("%s printed by %s, stored as claimed by %q", id, who, by[id])
		}
	}
	for {
		e, ok := take(t, s, "after")
		if !ok {
			break
		}
		if who, dup := printed[e.ID]; dup {
			t.Fatalf("%s handed out again (first to %s)", e.ID, who)
		}
	}
	t.Logf("%d claims printed by killed processes, all kept", len(printed))
}

// The store file moved away or deleted mid-run: a new empty store starts at
// the path with the pool's settings, and the moved file is never written.
func TestStoreMovedAwayOrDeleted(t *testing.T) {
	for _, how := range []string{"moved", "deleted"} {
		t.Run(how, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			a, b := open(t, dir), open(t, dir)
			if err := a.SetTiming(ctx, 2*time.Minute, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := a.SetTarget(ctx, 3); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"x", "y"} {
				if err := a.Put(ctx, ref(id, 100)); err != nil {
					t.Fatal(err)
				}
			}
			load(t, b) // b has the file open
			moved := filepath.Join(dir, "elsewhere.json")
			var err error
			if how == "moved" {
				err = os.Rename(a.Path(), moved)
			} else {
				err = os.Remove(a.Path())
			}
			if err != nil {
				t.Fatal(err)
			}
			var before []byte
			if how == "moved" {
				before = readFile(t, moved)
			}
			if e, ok := take(t, b, "b"); ok {
				t.Fatalf("took %s from a store that is gone", e.ID)
			}
			if st := load(t, b); len(st.Entries) != 0 || st.Target != 3 || st.TTL != 2*time.Minute || st.UseDuration != 30*time.Second {
				t.Fatalf("after the loss: %+v", st)
			}
			if err := b.Put(ctx, ref("z", 100)); err != nil {
				t.Fatal(err)
			}
			fresh := open(t, dir)
			for name, s := range map[string]*Store{"a": a, "fresh": fresh} {
				st := load(t, s)
				if desc(st.Entries) != "z" || st.Target != 3 || st.TTL != 2*time.Minute || st.UseDuration != 30*time.Second {
					t.Fatalf("%s sees %+v", name, st)
				}
			}
			if e, ok := take(t, a, "a"); !ok || e.ID != "z" {
				t.Fatalf("a took %q %v", e.ID, ok)
			}
			if how == "moved" {
				if after := readFile(t, moved); !bytes.Equal(after, before) {
					t.Fatalf("the moved file was written:\n%s", after)
				}
			}
		})
	}
}

// ttl, use-duration and target survive every write by every Store, however
// stale its view (the runaway of issue 10: a cached view without timing).
func TestSettingsSurviveEveryWrite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	for i := range 6 {
		if err := a.Put(ctx, ref(fmt.Sprint("s", i), 100+i)); err != nil {
			t.Fatal(err)
		}
	}
	load(t, b) // b's view predates the settings
	if err := a.SetTiming(ctx, 2*time.Minute, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.SetTarget(ctx, 3); err != nil {
		t.Fatal(err)
	}
	short := pool.TakeRequest{MinExpiresAt: at(150), ClaimedBy: "b", Now: t0, KeepShort: true}
	for _, w := range []struct {
		name  string
		write func() error
	}{
		{"Put", func() error { return b.Put(ctx, ref("p", 300)) }},
		{"Take", func() error { _, ok := take(t, b, "b"); return okErr(ok) }},
		{"Take KeepShort", func() error { _, _, ok, err := b.Take(ctx, short); return errors2(err, okErr(ok)) }},
		{"Evict", func() error { _, err := b.Evict(ctx, "s3"); return err }},
		{"Remove", func() error { _, err := b.Remove(ctx, "s0"); return err }},
		{"compaction", func() error { compactNow(t, b); return nil }},
	} {
		name, write := w.name, w.write
		if err := write(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		st := load(t, open(t, dir))
		if st.TTL != 2*time.Minute || st.UseDuration != 30*time.Second || st.Target != 3 || !st.HasTarget {
			t.Fatalf("after %s: ttl %s use %s target %d %v", name, st.TTL, st.UseDuration, st.Target, st.HasTarget)
		}
	}
}

func okErr(ok bool) error {
	if !ok {
		return fmt.Errorf("nothing taken")
	}
	return nil
}

func errors2(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// A Store reads the whole file only when it was replaced; an unchanged file
// costs a stat, an appended one what was appended.
func TestReadsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	if err := a.Put(ctx, ref("x", 100)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		load(t, b)
	}
	if b.fullReads != 1 {
		t.Fatalf("%d full reads of an unchanged file", b.fullReads)
	}
	if err := a.Put(ctx, ref("y", 200)); err != nil {
		t.Fatal(err)
	}
	take(t, a, "a")
	if got := desc(load(t, b).Entries); got != "x* y" || b.fullReads != 1 {
		t.Fatalf("b sees %q after %d full reads", got, b.fullReads)
	}
	if e, ok := take(t, b, "b"); !ok || e.ID != "y" || b.fullReads != 1 {
		t.Fatalf("b took %q %v after %d full reads", e.ID, ok, b.fullReads)
	}
	compactNow(t, a)
	if got := desc(load(t, b).Entries); got != "x* y*" || b.fullReads != 2 {
		t.Fatalf("after a compaction b sees %q after %d full reads", got, b.fullReads)
	}
	if a.fullReads != 0 {
		t.Fatalf("a read its own writes back: %d full reads", a.fullReads)
	}
}

// The log is folded into the snapshot in the background once it is long
// enough; claimed entries whose sandbox expired go then.
func TestCompaction(t *testing.T) {
	old := compactMin
	compactMin = 4 << 10
	t.Cleanup(func() { compactMin = old })
	dir := t.TempDir()
	s := open(t, dir)
	now := time.Now()
	var entries []pool.Entry
	mk := func(id string, exp time.Time, by string) pool.Entry {
		return pool.Entry{Ref: pool.Ref{ID: id, URL: "http://127.0.0.1:1/" + id, CreatedAt: now, ExpiresAt: exp}, ClaimedBy: by, ClaimedAt: now}
	}
	for i := range 10 {
		entries = append(entries, mk(fmt.Sprint("old", i), now.Add(-2*expiredGrace), "x"), mk(fmt.Sprint("live", i), now.Add(time.Hour), "x"))
	}
	for i := range 20 {
		entries = append(entries, mk(fmt.Sprintf("p%03d", i), now.Add(time.Hour), ""))
	}
	seed(t, s, pool.Stored{Target: 7, HasTarget: true, Entries: entries})
	fi0, _ := os.Stat(s.Path())
	var taken []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		fi, _ := os.Stat(s.Path())
		if !os.SameFile(fi0, fi) && !s.compacting.Load() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no compaction after %d claims", len(taken))
		}
		e, _, ok, err := s.Take(context.Background(), pool.TakeRequest{MinExpiresAt: now, ClaimedBy: "me", Now: now})
		if err != nil || !ok {
			t.Fatalf("take: %v %v", ok, err)
		}
		taken = append(taken, e.ID)
		// Keep the pool at 20.
		if err := s.Put(context.Background(), mk(fmt.Sprintf("n%03d", len(taken)), now.Add(time.Hour), "").Ref); err != nil {
			t.Fatal(err)
		}
	}
	// Claims may have gone on in the new file while its compaction ended
	// (on a loaded machine): what is left is a log not due for another.
	_, lay, err := decode(readFile(t, s.Path()))
	if err != nil {
		t.Fatal(err)
	}
	if n := lay.end - lay.snapEnd; n >= compactMin && n >= lay.snapEnd/2 {
		t.Fatalf("log of %d bytes left after compaction (snapshot %d bytes): due for another", n, lay.snapEnd)
	}
	st := load(t, open(t, dir))
	got := map[string]pool.Entry{}
	for _, e := range st.Entries {
		got[e.ID] = e
	}
	for i := range 10 {
		if _, ok := got[fmt.Sprint("old", i)]; ok {
			t.Fatalf("old%d (expired, claimed) survived compaction", i)
		}
		if e := got[fmt.Sprint("live", i)]; !e.Claimed() {
			t.Fatalf("live%d lost its claim: %+v", i, e)
		}
	}
	for _, id := range taken {
		if e := got[id]; e.ClaimedBy != "me" {
			t.Fatalf("%s: %+v", id, e)
		}
	}
	if len(st.Entries) != 10+20+len(taken) || st.Target != 7 {
		t.Fatalf("%d entries, target %d", len(st.Entries), st.Target)
	}
	if fi, _ := os.Stat(s.Path()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("compacted file mode %v", fi.Mode())
	}
	if _, err := os.Stat(s.tmp); !os.IsNotExist(err) {
		t.Fatalf("temp file left: %v", err)
	}
	if got := desc(load(t, s).Entries); got != desc(st.Entries) {
		t.Fatalf("the compacting Store sees\n%s\nothers\n%s", got, desc(st.Entries))
	}
}

func TestGeneration(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	gen := func(s *Store) uint64 {
		t.Helper()
		g, err := s.Generation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	g := gen(b)
	for _, c := range []struct {
		name   string
		change func() error
	}{
		{"another Store's put", func() error { return a.Put(ctx, ref("x", 100)) }},
		{"another Store's claim", func() error { _, ok := take(t, a, "a"); return okErr(ok) }},
		{"its own target", func() error { return b.SetTarget(ctx, 2) }},
		{"another Store's compaction", func() error { compactNow(t, a); return nil }},
		{"the file deleted", func() error { return os.Remove(a.Path()) }},
	} {
		name, change := c.name, c.change
		if got := gen(b); got != g {
			t.Fatalf("before %s: generation moved from %d to %d with no change", name, g, got)
		}
		if err := change(); err != nil {
			t.Fatal(err)
		}
		next := gen(b)
		if next == g {
			t.Fatalf("%s: generation still %d", name, g)
		}
		g = next
	}
}

// A version 1 file (an earlier build's) is read as it is and rewritten as
// this build's version by the first change, so that an earlier build
// refuses the new layout instead of misreading it.
func TestVersion1Upgraded(t *testing.T) {
	s := open(t, t.TempDir())
	v1 := `{"version":1,"target":2,"ttl":"2m0s","use_duration":"30s","entries":[
{"id":"a","url":"u","created_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T03:09:05Z","claimed_by":"cli","claimed_at":"2030-01-02T03:05:05Z"},
{"id":"b","url":"u","created_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T03:09:05Z"}
]}
`
	if err := os.WriteFile(s.Path(), []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}
	if st := load(t, s); desc(st.Entries) != "a* b" || st.Target != 2 || st.TTL != 2*time.Minute {
		t.Fatalf("v1 read as %+v", st)
	}
	if got := readFile(t, s.Path()); string(got) != v1 {
		t.Fatalf("a Load rewrote the file: %s", got)
	}
	if e, ok := take(t, s, "me"); !ok || e.ID != "b" {
		t.Fatalf("took %q %v", e.ID, ok)
	}
	got := readFile(t, s.Path())
	if !bytes.HasPrefix(got, []byte(`{"version":3,"target":2,"ttl":"2m0s","use_duration":"30s","seq":1,"entries":[`)) {
		t.Fatalf("not upgraded:\n%s", got)
	}
	if st := load(t, open(t, filepath.Dir(s.Path()))); desc(st.Entries) != "a* b*" || st.UseDuration != 30*time.Second {
		t.Fatalf("after the upgrade: %+v", st)
	}
}

// Puts and takes are appended without a flush before their answer
// (change.lazy): the background flusher takes them to the disk after it;
// the changes that are not lazy (a removal, the target) flush before.
func TestTakeAndPutAppendWithoutFlush(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	seed(t, s, pool.Stored{Target: 2, HasTarget: true, Entries: []pool.Entry{{Ref: ref("a", 100)}}})
	appends, flushes := s.appends, s.flushes
	if err := s.Put(ctx, ref("b", 100)); err != nil {
		t.Fatal(err)
	}
	if e, ok := take(t, s, "me"); !ok || e.ID != "a" {
		t.Fatalf("took %v %v", e.ID, ok)
	}
	if s.appends != appends+2 || s.flushes != flushes {
		t.Fatalf("put + take: %d appends, %d flushes; want 2, 0", s.appends-appends, s.flushes-flushes)
	}
	testkit.Eventually(t, 10*time.Second, "the background flush of the put and the take", func() bool {
		return s.bgFlushes.Load() >= 1
	})
	if _, err := s.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if s.flushes != flushes+1 {
		t.Fatalf("remove: %d flushes, want 1", s.flushes-flushes)
	}
}

// LoadSince leaves out the claimed entries an earlier LoadSince returned,
// whoever claimed since (this Store or another process's); a claimed entry
// removed elsewhere shows in the count left out; a torn last line is not
// read as a claim; and once the claimed entries are indexed anew (the file
// compacted, another file put in place, holes squeezed out) all of them
// are returned again.
func TestLoadSinceReadsOnlyNewClaims(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	claimN := func(s *Store, prefix string, n int) []string {
		t.Helper()
		var ids []string
		for i := range n {
			id := fmt.Sprintf("%s%02d", prefix, i)
			if err := s.Put(ctx, ref(id, 100)); err != nil {
				t.Fatal(err)
			}
			if e, ok := take(t, s, "x"); !ok || e.ID != id {
				t.Fatalf("took %q %v, want %s", e.ID, ok, id)
			}
			ids = append(ids, id+"*")
		}
		return ids
	}
	for i, id := range []string{"p", "q", "r", "s", "u"} {
		if err := a.Put(ctx, ref(id, 10+i)); err != nil {
			t.Fatal(err)
		}
	}
	var mark uint64
	since := func(want string, wantOlder int) {
		t.Helper()
		st, older, next, err := a.LoadSince(ctx, mark)
		if err != nil {
			t.Fatal(err)
		}
		if got := desc(st.Entries); got != want || older != wantOlder {
			t.Fatalf("LoadSince: %q, %d left out; want %q, %d", got, older, want, wantOlder)
		}
		mark = next
	}
	since("p q r s u", 0)
	take(t, a, "a")
	take(t, b, "b") // another process
	since("p* q* r s u", 0)
	since("r s u", 2)
	take(t, b, "b")
	since("r* s u", 2)
	since("s u", 3)
	if _, err := b.Remove(ctx, "p"); err != nil { // a claimed one, elsewhere
		t.Fatal(err)
	}
	since("s u", 2)
	appendFile(t, a.Path(), `{"op":"claim","id":"s","by":"dead","at":"2030-01-`) // torn
	since("s u", 2)
	take(t, a, "a")
	since("s* u", 2)

	// Compacted elsewhere, one more claim: as many claimed entries as the
	// mark counted, indexed anew.
	compactNow(t, b)
	take(t, b, "b")
	since("q* r* s* u*", 0)
	since("", 4)

	// Another file put in place, with more claimed entries than that.
	other := open(t, t.TempDir())
	vs := claimN(other, "v", 5)
	if err := os.Rename(other.Path(), a.Path()); err != nil {
		t.Fatal(err)
	}
	since(strings.Join(vs, " "), 0)
	since("", 5)

	// Most claimed entries removed: their holes are squeezed out, and once
	// new claims make the list as long as the mark says, all are returned.
	hs := claimN(b, "h", 40)
	since(strings.Join(hs, " "), 5)
	for i := range 34 {
		if _, err := b.Remove(ctx, fmt.Sprintf("h%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	gs := claimN(b, "g", 40)
	since(strings.Join(append(append(vs, hs[34:]...), gs...), " "), 0)
	since("", 51)
}

// The background flush of lazy changes waits out its delay, unless the
// store is closed first: Close flushes them at once (a `claim` process
// exits right after its claim).
func TestCloseFlushesLazyChangesAtOnce(t *testing.T) {
	old := flushDelay
	flushDelay = time.Hour
	t.Cleanup(func() { flushDelay = old })
	s, err := Open(t.TempDir(), "p")
	if err != nil {
		t.Fatal(err)
	}
	seed(t, s, pool.Stored{Target: 2, HasTarget: true, Entries: []pool.Entry{{Ref: ref("a", 100)}, {Ref: ref("b", 100)}}})
	take(t, s, "me")
	take(t, s, "me")
	if n := s.bgFlushes.Load(); n != 0 {
		t.Fatalf("%d background flushes before the delay", n)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited for the flush's delay")
	}
	if n := s.bgFlushes.Load(); n != 1 {
		t.Fatalf("%d background flushes at Close, want 1 for both takes", n)
	}
}

// The log's records are the bytes the JSON encoder writes, whether they
// take appendRecord's way (plain strings) or the encoder's.
func TestRecordsAreWhatTheEncoderWrites(t *testing.T) {
	n := 3
	zone := time.FixedZone("x", 5*3600+30*60)
	at := time.Date(2026, 12, 2, 12, 0, 0, 123456789, time.UTC)
	recs := []record{
		{Op: "claim", ID: "sb-1", By: "api 127.0.0.1:5555", At: at},
		{Op: "claim", ID: "sb-1", By: "api 127.0.0.1:5555", At: at.In(zone).Truncate(time.Second)},
		{Op: "put", ID: "sb-2", URL: "http://127.0.0.1:4000/?a=<b>&c", CreatedAt: at.Add(-time.Hour), ExpiresAt: at.Add(time.Hour).Round(time.Millisecond)},
		{Op: "del", ID: "sb-3"},
		{Op: "target", N: &n},
		{Op: "timing", TTL: "2m0s", Use: "30s"},
		{Op: "workload", Workload: "plain"},
		{Op: "workload", Workload: `{"cmd":"exec python3 -m http.server {port}"}`},
		{Op: "claim", ID: `q"uote\back`, By: "dashboard", At: time.Now()}, // the encoder's way
		{Op: "claim", ID: "naïve\u2028", By: "cli\x7f\x01", At: time.Now()},
		{Op: "put", ID: "sb-4", CreatedAt: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
		{Op: "put", ID: "sb-5", CreatedAt: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)},
	}
	for _, r := range recs {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(&r); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		newLogWriter(&got).add(r)
		if got.String() != want.String() {
			t.Errorf("record %+v:\n got %s\nwant %s", r, got.String(), want.String())
		}
	}
	if _, ok := appendRecord(nil, &recs[0]); !ok {
		t.Error("a claim's record does not take appendRecord's way")
	}
}
