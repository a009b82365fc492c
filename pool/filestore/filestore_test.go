package filestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofrs/flock"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

func TestMain(m *testing.M) { testkit.Main(m) }

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

func ref(id string, expSec int) pool.Ref {
	return pool.Ref{ID: id, URL: "http://127.0.0.1:1/" + id, CreatedAt: t0, ExpiresAt: at(expSec)}
}

func open(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, "p")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func stateOf(st pool.Stored) *state {
	s := newState(settings{target: st.Target, hasTarget: st.HasTarget, ttl: st.TTL, use: st.UseDuration})
	for _, e := range st.Entries {
		s.push(e)
	}
	return s
}

// seed writes st straight to the file as a snapshot, bypassing the store's methods.
func seed(t testing.TB, s *Store, st pool.Stored) {
	t.Helper()
	var b bytes.Buffer
	if err := encodeSnapshot(&b, stateOf(st), nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path(), b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func load(t testing.TB, s *Store) pool.Stored {
	t.Helper()
	st, err := s.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// desc renders entries as "id" or "id*" (claimed) for compact comparisons.
func desc(es []pool.Entry) string {
	var parts []string
	for _, e := range es {
		if e.Claimed() {
			parts = append(parts, e.ID+"*")
		} else {
			parts = append(parts, e.ID)
		}
	}
	return strings.Join(parts, " ")
}

func claimed(r pool.Ref) pool.Entry { return pool.Entry{Ref: r, ClaimedBy: "x", ClaimedAt: t0} }

// rewritten reports whether fn wrote to the store file: appended to it or replaced it.
func rewritten(t *testing.T, s *Store, fn func()) bool {
	t.Helper()
	before, errBefore := os.Stat(s.Path())
	fn()
	after, errAfter := os.Stat(s.Path())
	if errBefore != nil || errAfter != nil {
		return (errBefore == nil) != (errAfter == nil)
	}
	return !os.SameFile(before, after) || before.Size() != after.Size()
}

func TestOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s := open(t, dir)
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir: %v %v", fi, err)
	}
	if s.Path() != filepath.Join(dir, "p.json") {
		t.Fatalf("Path = %s", s.Path())
	}
	st := load(t, s)
	if st.HasTarget || len(st.Entries) != 0 {
		t.Fatalf("missing file: %+v", st)
	}
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load created the file: %v", err)
	}
	for _, bad := range []string{"", "../x", "a/b", "a.json"} {
		if _, err := Open(dir, bad); err == nil {
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
}

func TestPut(t *testing.T) {
	for _, tc := range []struct {
		name    string
		start   []pool.Entry
		put     pool.Ref
		want    string
		rewrite bool
		wantErr bool
	}{
		{name: "empty", put: ref("a", 10), want: "a", rewrite: true},
		{name: "appends", start: []pool.Entry{{Ref: ref("a", 10)}}, put: ref("b", 15), want: "a b", rewrite: true},
		{name: "in age order", start: []pool.Entry{{Ref: ref("a", 10)}, {Ref: ref("c", 20)}}, put: ref("b", 5), want: "b a c", rewrite: true},
		{name: "known pooled", start: []pool.Entry{{Ref: ref("a", 10)}}, put: ref("a", 99), want: "a"},
		{name: "known claimed", start: []pool.Entry{claimed(ref("a", 10))}, put: ref("a", 99), want: "a*"},
		{name: "empty id", put: pool.Ref{}, want: "", wantErr: true},
		{name: "id not UTF-8", put: pool.Ref{ID: "a\xff"}, want: "", wantErr: true},
		{name: "time out of JSON's range", put: pool.Ref{ID: "a", ExpiresAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, want: "", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir())
			if tc.start != nil {
				seed(t, s, pool.Stored{Entries: tc.start})
			}
			var err error
			if rw := rewritten(t, s, func() { err = s.Put(context.Background(), tc.put) }); rw != tc.rewrite {
				t.Errorf("rewritten = %v, want %v", rw, tc.rewrite)
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			st := load(t, s)
			if got := desc(st.Entries); got != tc.want {
				t.Fatalf("entries %q, want %q", got, tc.want)
			}
			if tc.rewrite {
				i := slices.IndexFunc(st.Entries, func(e pool.Entry) bool { return e.ID == tc.put.ID })
				last := st.Entries[i]
				if last.Ref.URL != tc.put.URL || !last.ExpiresAt.Equal(tc.put.ExpiresAt) || !last.CreatedAt.Equal(tc.put.CreatedAt) {
					t.Fatalf("stored %+v, put %+v", last, tc.put)
				}
			}
		})
	}
}

func TestTake(t *testing.T) {
	minExp := at(100)
	for _, tc := range []struct {
		name        string
		start       []pool.Entry
		taken       string // "" when !ok
		dropped     string
		left        string
		noRewriting bool
	}{
		{name: "empty", noRewriting: true},
		{name: "first good", start: []pool.Entry{{Ref: ref("a", 200)}, {Ref: ref("b", 300)}}, taken: "a", left: "a* b"},
		{name: "boundary is good", start: []pool.Entry{{Ref: ref("a", 100)}, {Ref: ref("b", 300)}}, taken: "a", left: "a* b"},
		{name: "just below boundary dropped", start: []pool.Entry{
			{Ref: pool.Ref{ID: "a", ExpiresAt: minExp.Add(-time.Nanosecond)}}, {Ref: ref("b", 300)},
		}, taken: "b", dropped: "a", left: "b*"},
		{name: "drops head only", start: []pool.Entry{
			{Ref: ref("a", 10)}, {Ref: ref("b", 20)}, {Ref: ref("c", 150)}, {Ref: ref("d", 10)}, {Ref: ref("e", 300)},
		}, taken: "c", dropped: "a b", left: "c* d e"},
		{name: "claimed skipped and kept even expired", start: []pool.Entry{
			claimed(ref("a", 10)), {Ref: ref("b", 10)}, claimed(ref("c", 500)), {Ref: ref("d", 150)},
		}, taken: "d", dropped: "b", left: "a* c* d*"},
		{name: "only claimed", start: []pool.Entry{claimed(ref("a", 500))}, left: "a*", noRewriting: true},
		{name: "all expired dropped", start: []pool.Entry{
			{Ref: ref("a", 10)}, claimed(ref("b", 10)), {Ref: ref("c", 99)},
		}, dropped: "a c", left: "b*"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir())
			seed(t, s, pool.Stored{Target: 3, HasTarget: true, Entries: tc.start})
			var (
				taken   pool.Entry
				dropped []pool.Entry
				ok      bool
				err     error
			)
			rw := rewritten(t, s, func() {
				taken, dropped, ok, err = s.Take(context.Background(), pool.TakeRequest{MinExpiresAt: minExp, ClaimedBy: "tester", Now: at(50)})
			})
			if err != nil {
				t.Fatal(err)
			}
			if rw == tc.noRewriting {
				t.Errorf("rewritten = %v", rw)
			}
			if ok != (tc.taken != "") || taken.ID != tc.taken {
				t.Fatalf("taken %q ok=%v, want %q", taken.ID, ok, tc.taken)
			}
			if ok && (taken.ClaimedBy != "tester" || !taken.ClaimedAt.Equal(at(50))) {
				t.Fatalf("taken not marked: %+v", taken)
			}
			if got := desc(dropped); got != tc.dropped {
				t.Fatalf("dropped %q, want %q", got, tc.dropped)
			}
			st := load(t, s)
			if got := desc(st.Entries); got != tc.left {
				t.Fatalf("left %q, want %q", got, tc.left)
			}
			if st.Target != 3 || !st.HasTarget {
				t.Fatalf("target lost: %+v", st)
			}
			for _, e := range st.Entries {
				if e.ID == tc.taken && (e.ClaimedBy != "tester" || !e.ClaimedAt.Equal(at(50))) {
					t.Fatalf("stored claim: %+v", e)
				}
			}
		})
	}
	t.Run("empty claimer", func(t *testing.T) {
		s := open(t, t.TempDir())
		seed(t, s, pool.Stored{Entries: []pool.Entry{{Ref: ref("a", 200)}}})
		if _, _, _, err := s.Take(context.Background(), pool.TakeRequest{MinExpiresAt: minExp, Now: t0}); err == nil {
			t.Fatal("no error")
		}
	})
	t.Run("keep short", func(t *testing.T) {
		s := open(t, t.TempDir())
		seed(t, s, pool.Stored{Entries: []pool.Entry{{Ref: ref("a", 10)}, {Ref: ref("b", 200)}, {Ref: ref("c", 20)}}})
		taken, dropped, ok, err := s.Take(context.Background(), pool.TakeRequest{MinExpiresAt: minExp, ClaimedBy: "cli", Now: t0, KeepShort: true})
		if err != nil || !ok || taken.ID != "b" || len(dropped) != 0 {
			t.Fatalf("taken %q ok=%v dropped %q err %v", taken.ID, ok, desc(dropped), err)
		}
		if got := desc(load(t, s).Entries); got != "b* a c" {
			t.Fatalf("left %q, want short ones kept", got)
		}
	})
}

func TestRemove(t *testing.T) {
	start := []pool.Entry{{Ref: ref("a", 1)}, claimed(ref("b", 2)), {Ref: ref("c", 3)}}
	for _, tc := range []struct {
		name          string
		ids           []string
		removed, left string
	}{
		{name: "none", left: "b* a c"},
		{name: "unknown", ids: []string{"z"}, left: "b* a c"},
		{name: "pooled", ids: []string{"c"}, removed: "c", left: "b* a"},
		{name: "claimed", ids: []string{"b"}, removed: "b*", left: "a c"},
		{name: "several in Load's order", ids: []string{"c", "z", "a", "c", "b"}, removed: "b* a c", left: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir())
			seed(t, s, pool.Stored{Entries: start})
			var got []pool.Entry
			var err error
			rw := rewritten(t, s, func() { got, err = s.Remove(context.Background(), tc.ids...) })
			if err != nil {
				t.Fatal(err)
			}
			if rw != (tc.removed != "") {
				t.Errorf("rewritten = %v", rw)
			}
			if desc(got) != tc.removed {
				t.Fatalf("removed %q, want %q", desc(got), tc.removed)
			}
			if left := desc(load(t, s).Entries); left != tc.left {
				t.Fatalf("left %q, want %q", left, tc.left)
			}
		})
	}
}

func TestSetTarget(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	for _, tc := range []struct {
		n       int
		rewrite bool
		wantErr bool
	}{
		{n: 0, rewrite: true}, // 0 is a real target, unlike "never set"
		{n: 0},
		{n: 5, rewrite: true},
		{n: 5},
		{n: -1, wantErr: true},
	} {
		var err error
		rw := rewritten(t, s, func() { err = s.SetTarget(ctx, tc.n) })
		if (err != nil) != tc.wantErr || rw != tc.rewrite {
			t.Fatalf("SetTarget(%d): err=%v rewritten=%v", tc.n, err, rw)
		}
		if st := load(t, s); !st.HasTarget || (!tc.wantErr && st.Target != tc.n) {
			t.Fatalf("after SetTarget(%d): %+v", tc.n, st)
		}
	}
	if err := s.Put(ctx, ref("a", 1)); err != nil {
		t.Fatal(err)
	}
	if st := load(t, s); st.Target != 5 || len(st.Entries) != 1 {
		t.Fatalf("Put lost the target: %+v", st)
	}
}

func TestFileFormat(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	if err := s.Put(ctx, ref("a", 1)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(s.Path())
	if !bytes.HasPrefix(b, []byte(`{"version":3,"seq":1,"entries":[`)) || bytes.Contains(b, []byte("target")) {
		t.Fatalf("never-sized pool: %s", b)
	}
	if err := s.SetTarget(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "me", Now: at(1)}); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(s.Path())
	want := `{"version":3,"seq":1,"entries":[
{"id":"a","url":"http://127.0.0.1:1/a","created_at":"2030-01-02T03:04:05.0000006Z","expires_at":"2030-01-02T03:04:06.0000006Z"}
]}
{"op":"target","n":2}
{"op":"claim","id":"a","by":"me","at":"2030-01-02T03:04:06.0000006Z"}
`
	if string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
	fi, _ := os.Stat(s.Path())
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	// Only the file and its lock.
	names, _ := filepath.Glob(filepath.Join(filepath.Dir(s.Path()), "*"))
	for i := range names {
		fi, _ := os.Stat(names[i])
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", names[i], fi.Mode())
		}
		names[i] = filepath.Base(names[i])
	}
	if want := []string{"p.json", "p.lock"}; !slices.Equal(names, want) {
		t.Fatalf("files %v, want %v", names, want)
	}
}

// Loads hand out copies, and every Store sees every other writer's changes.
func TestSharedAndCopied(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	if err := a.Put(ctx, ref("x", 1)); err != nil {
		t.Fatal(err)
	}
	st := load(t, a)
	st.Entries[0].ID = "mutated"
	if got := desc(load(t, a).Entries); got != "x" {
		t.Fatalf("a Load's result is shared with the store: %q", got)
	}
	if got := desc(load(t, b).Entries); got != "x" {
		t.Fatalf("b sees %q", got)
	}
	if _, _, _, err := b.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "b", Now: t0}); err != nil {
		t.Fatal(err)
	}
	if got := desc(load(t, a).Entries); got != "x*" {
		t.Fatalf("a does not see b's claim: %q", got)
	}
	// An outside writer that puts a new file in place (as an editor does).
	st = load(t, a)
	st.Entries[0].ID = "y"
	other := filepath.Join(t.TempDir(), "other.json")
	var buf bytes.Buffer
	if err := encodeSnapshot(&buf, stateOf(st), nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(other, buf.Bytes(), 0o600)
	if err := os.Rename(other, a.Path()); err != nil {
		t.Fatal(err)
	}
	if got := desc(load(t, a).Entries); got != "y*" {
		t.Fatalf("a does not see the outside change: %q", got)
	}
	if _, err := a.Remove(ctx, "y"); err != nil {
		t.Fatal(err)
	}
	if got := desc(load(t, b).Entries); got != "" {
		t.Fatalf("b sees %q after the remove", got)
	}
}

func TestCorrupt(t *testing.T) {
	good := `{"id":"a","url":"u","created_at":"2030-01-01T00:00:00Z","expires_at":"2030-01-01T00:05:00Z"}`
	for _, tc := range []struct{ name, data, what string }{
		{"not json", "hello", "invalid JSON at byte 1"},
		{"empty", "", "empty file"},
		{"truncated", `{"version":1,"entries":[` + good, "truncated"},
		{"trailing garbage", `{"version":1,"entries":[]} x`, "trailing data"},
		{"second object", `{"version":1,"entries":[]}{"version":1}`, "trailing data"},
		{"newer version", `{"version":4,"entries":[]}`, "store version 4, written by a newer sandboxpool: this build reads versions 1 to 3"},
		{"version 0", `{"version":0,"entries":[]}`, "unknown version 0"},
		{"no version", `{"entries":[]}`, `no "version"`},
		{"array", `[]`, "JSON array, not an object"},
		{"target string", `{"version":1,"target":"3","entries":[]}`, "target"},
		{"target fraction", `{"version":1,"target":1.5,"entries":[]}`, "target"},
		{"negative target", `{"version":1,"target":-1,"entries":[]}`, "negative target -1"},
		{"entries object", `{"version":1,"entries":{}}`, "entries"},
		{"id number", `{"version":1,"entries":[{"id":7}]}`, "entries.id"},
		{"bad time", `{"version":1,"entries":[{"id":"a","expires_at":"soon"}]}`, "soon"},
		{"entry without id", `{"version":1,"entries":[` + good + `,{"url":"u"}]}`, "entry 1 has no id"},
		{"null entry", `{"version":1,"entries":[null]}`, "entry 0 has no id"},
		{"duplicate id", `{"version":1,"entries":[` + good + `,` + good + `]}`, `entry 1 repeats id "a"`},
		{"unknown field", `{"version":1,"entries":[],"extra":1}`, `unknown field "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t, t.TempDir())
			if err := os.WriteFile(s.Path(), []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Stat(s.Path())
			for name, call := range map[string]func() error{
				"Load": func() error { _, err := s.Load(ctx); return err },
				"Put":  func() error { return s.Put(ctx, ref("new", 1)) },
				"Take": func() error {
					_, _, _, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "me", Now: t0})
					return err
				},
				"Remove":    func() error { _, err := s.Remove(ctx, "a"); return err },
				"SetTarget": func() error { return s.SetTarget(ctx, 4) },
			} {
				err := call()
				if err == nil {
					t.Fatalf("%s: no error", name)
				}
				msg := err.Error()
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(msg, s.Path()) || !strings.Contains(msg, tc.what) || strings.Contains(msg, "\n") {
					t.Fatalf("%s: error %q: want ErrCorrupt, the path and %q on one line", name, msg, tc.what)
				}
				b, _ := os.ReadFile(s.Path())
				after, _ := os.Stat(s.Path())
				if string(b) != tc.data || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
					t.Fatalf("%s touched the file: %q", name, b)
				}
			}
			t.Log(mustErr(s.Load(ctx)))
		})
	}
}

func mustErr(_ pool.Stored, err error) error { return err }

func TestUnreadable(t *testing.T) {
	s := open(t, t.TempDir())
	if err := os.Mkdir(s.Path(), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{mustErr(s.Load(context.Background())), s.SetTarget(context.Background(), 1)} {
		if err == nil || !strings.Contains(err.Error(), s.Path()) {
			t.Fatalf("err = %v, want one naming %s", err, s.Path())
		}
	}
}

func TestContextWhileLocked(t *testing.T) {
	s := open(t, t.TempDir())
	other := flock.New(filepath.Join(filepath.Dir(s.Path()), "p.lock"))
	if err := other.Lock(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.SetTarget(ctx, 1)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "p.lock") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v", d)
	}
	// Readers wait for a writer too, and go on once it is gone.
	done := make(chan error)
	go func() { _, err := s.Load(context.Background()); done <- err }()
	short, cancel3 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel3()
	if _, err := s.Load(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Load under a writer's lock: %v, want it to wait", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Load went on under a writer's lock: %v", err)
	default:
	}
	other.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := s.Load(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Load: %v", err)
	}
}

func TestClosed(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if _, err := s.Load(context.Background()); err == nil {
		t.Fatal("Load after Close")
	}
}

// Goroutines on one Store and on two Stores of one file: no entry is taken twice.
func TestConcurrentTakeInProcess(t *testing.T) {
	dir := t.TempDir()
	stores := []*Store{open(t, dir), open(t, dir)}
	const n = 60
	var entries []pool.Entry
	for i := range n {
		entries = append(entries, pool.Entry{Ref: ref(fmt.Sprintf("s%03d", i), 100)})
	}
	seed(t, stores[0], pool.Stored{Entries: entries})
	var (
		mu  sync.Mutex
		got []string
		wg  sync.WaitGroup
	)
	for g := range 6 {
		wg.Go(func() {
			s := stores[g%2]
			for {
				e, _, ok, err := s.Take(context.Background(), pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: fmt.Sprint("g", g), Now: t0})
				if err != nil {
					t.Error(err)
					return
				}
				if !ok {
					return
				}
				mu.Lock()
				got = append(got, e.ID)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(got)
	if len(got) != n || len(slices.Compact(got)) != n {
		t.Fatalf("took %d entries, %d distinct, want %d", len(got), len(slices.Compact(got)), n)
	}
}

func TestLeaseInProcess(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	if h, err := a.LeaseHolder(ctx); err != nil || !h.IsZero() {
		t.Fatalf("free lease: %q %v", h, err)
	}
	la, err := a.AcquireLease(ctx, pool.LeaseRecord{Host: "run pid 1 on host"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} { // the same Store cannot take it twice either
		_, err := s.AcquireLease(ctx, pool.LeaseRecord{Host: "second"})
		var held *pool.LeaseHeldError
		if !errors.As(err, &held) || held.Holder.String() != "run pid 1 on host" {
			t.Fatalf("second acquire: %v", err)
		}
		if h, err := s.LeaseHolder(ctx); err != nil || h.String() != "run pid 1 on host" {
			t.Fatalf("holder: %q %v", h, err)
		}
	}
	if err := la.Release(); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(); err != nil {
		t.Fatal("second Release:", err)
	}
	if h, err := b.LeaseHolder(ctx); err != nil || !h.IsZero() {
		t.Fatalf("released lease: %q %v", h, err)
	}
	lb, err := b.AcquireLease(ctx, pool.LeaseRecord{Host: "b"})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Release()
	if h, _ := a.LeaseHolder(ctx); h.String() != "b" {
		t.Fatalf("holder %q", h)
	}
}

// Probes (LeaseHolder) running all the time must not make an acquire fail.
func TestLeaseProbesDoNotBlockAcquire(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				b.LeaseHolder(ctx)
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	for range 50 {
		l, err := a.AcquireLease(ctx, pool.LeaseRecord{Host: "a"})
		if err != nil {
			t.Fatal(err)
		}
		l.Release()
	}
}

func TestTimingRoundTrip(t *testing.T) {
	s, err := Open(t.TempDir(), "p")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.SetTiming(ctx, time.Minute, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTiming(ctx, time.Second, time.Minute); err == nil {
		t.Fatal("use-duration above ttl accepted")
	}
	st, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL != time.Minute || st.UseDuration != 10*time.Second {
		t.Fatalf("timing %s %s", st.TTL, st.UseDuration)
	}
	if _, _, err := decode([]byte(`{"version":1,"ttl":"1m","use_duration":"2m","entries":[]}`)); err == nil {
		t.Fatal("a file with use_duration >= ttl decoded")
	}
}

// TestEpochCountsLosses: a file moved away is a loss (its entries went
// missing without anyone removing them), and so is a corrupt one moved away
// as its error advises; a compaction or another process's append is not.
func TestEpochCountsLosses(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	epoch := func() uint64 {
		t.Helper()
		st, err := s.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Epoch
	}
	if err := s.Put(ctx, ref("a", 60)); err != nil {
		t.Fatal(err)
	}
	first := epoch()
	other := open(t, filepath.Dir(s.Path()))
	if err := other.Put(ctx, ref("b", 70)); err != nil {
		t.Fatal(err)
	}
	compactNow(t, other)
	if got := epoch(); got != first {
		t.Fatalf("epoch %d after another process's put and a compaction, want %d", got, first)
	}
	if err := os.Rename(s.Path(), s.Path()+".moved"); err != nil {
		t.Fatal(err)
	}
	if got := epoch(); got != first+1 {
		t.Fatalf("epoch %d after the file was moved away, want %d", got, first+1)
	}
	if err := s.Put(ctx, ref("c", 80)); err != nil { // a new file
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path(), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx); err == nil {
		t.Fatal("a corrupt file loaded")
	}
	if err := os.Rename(s.Path(), s.Path()+".bad"); err != nil {
		t.Fatal(err)
	}
	if got := epoch(); got != first+2 {
		t.Fatalf("epoch %d after the corrupt file was moved away, want %d", got, first+2)
	}
}

// TestEpochCountsAnOldCopyPutBack: a copy of the file taken earlier, put
// back in place (copied over it, or renamed onto it), is a loss too: the
// entries made since went missing without anyone removing them. Its
// EpochWhy says so; a compaction or another process's append is none.
func TestEpochCountsAnOldCopyPutBack(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	other := open(t, filepath.Dir(s.Path()))
	load := func() pool.Stored {
		t.Helper()
		st, err := s.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if err := s.Put(ctx, ref("a", 60)); err != nil {
		t.Fatal(err)
	}
	old := readFile(t, s.Path())
	for _, id := range []string{"b", "c"} {
		if err := other.Put(ctx, ref(id, 70)); err != nil {
			t.Fatal(err)
		}
	}
	compactNow(t, other)
	first := load().Epoch
	if err := other.Put(ctx, ref("d", 80)); err != nil {
		t.Fatal(err)
	}
	compactNow(t, other)
	if got := load(); got.Epoch != first || len(got.Entries) != 4 {
		t.Fatalf("after another process's puts and compactions: epoch %d (want %d), %d entries", got.Epoch, first, len(got.Entries))
	}
	for i, put := range []func() error{
		func() error { return os.WriteFile(s.Path(), old, 0o600) }, // copied over it
		func() error { // renamed onto it
			if err := os.WriteFile(s.Path()+".bak", old, 0o600); err != nil {
				return err
			}
			return os.Rename(s.Path()+".bak", s.Path())
		},
	} {
		if i == 1 {
			if err := s.Put(ctx, ref("e", 90)); err != nil { // the history goes on from the copy
				t.Fatal(err)
			}
			if err := s.Put(ctx, ref("f", 90)); err != nil {
				t.Fatal(err)
			}
		}
		if err := put(); err != nil {
			t.Fatal(err)
		}
		got := load()
		if got.Epoch != first+uint64(i)+1 || !strings.Contains(got.EpochWhy, "went back in time (an older copy was put back") || len(got.Entries) != 1 {
			t.Fatalf("old copy %d put back: epoch %d (want %d), why %q, %d entries", i, got.Epoch, first+uint64(i)+1, got.EpochWhy, len(got.Entries))
		}
	}
}

// TestWorkloadRoundTrip: the pool's workload is kept as given, by another
// Store of the file (its log record), through a compaction (the snapshot),
// and into the new file that a lost one is replaced by, as the target is.
func TestWorkloadRoundTrip(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	const w = `{"cmd":"exec python3 -m http.server {port} & echo \"<ok>\""}`
	if err := a.SetWorkload(ctx, w); err != nil {
		t.Fatal(err)
	}
	if err := a.SetWorkload(ctx, ""); err == nil {
		t.Fatal("an empty workload was stored")
	}
	workload := func(s *Store) string {
		t.Helper()
		st, err := s.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Workload
	}
	if got := workload(b); got != w {
		t.Fatalf("another Store reads workload %q, want %q", got, w)
	}
	compactNow(t, a)
	if got := workload(open(t, dir)); got != w {
		t.Fatalf("after a compaction: workload %q, want %q", got, w)
	}
	if err := os.Rename(a.Path(), a.Path()+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, pool.Ref{ID: "sb-1", URL: "http://127.0.0.1:1", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got := workload(open(t, dir)); got != w {
		t.Fatalf("in the file that replaced a lost one: workload %q, want %q", got, w)
	}
}
