package journal

import (
	"bytes"
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// collector gathers what Follow delivers, but for the probe's sync marks.
type collector struct {
	mu     sync.Mutex
	got    []pool.Event
	org    []Origin
	synced bool // a sync mark came through
}

// syncMark is what sync appends: the collector notes and drops it.
const syncMark = "testkit sync"

func (c *collector) add(o Origin, e pool.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Message == syncMark {
		c.synced = true
		return
	}
	c.got = append(c.got, e)
	c.org = append(c.org, o)
}

func (c *collector) events() []pool.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]pool.Event(nil), c.got...)
}

func (c *collector) wait(t *testing.T, n int) []pool.Event {
	t.Helper()
	var got []pool.Event
	if !testkit.Until(10*time.Second, func() bool { got = c.events(); return len(got) >= n }) {
		t.Fatalf("followed %d events, want %d", len(got), n)
	}
	return got
}

// sync waits until Follow has the file open (it reads from the end of a
// file that exists when it starts): a probe journal appends marks until one
// comes through, so everything appended from now on is followed.
func (c *collector) sync(t *testing.T, dir, name string) {
	t.Helper()
	probe, err := Open(dir, name, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	testkit.Eventually(t, 10*time.Second, "Follow to see a sync mark", func() bool {
		probe.Append(pool.Event{Kind: pool.EventResized, Message: syncMark})
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.synced
	})
}

func follow(t *testing.T, j *Journal) *collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{}
	done := make(chan struct{})
	go func() { defer close(done); _ = j.Follow(ctx, c.add) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func TestFollowSeesOthersNotItself(t *testing.T) {
	dir := t.TempDir()
	opts := Options{PollEvery: 5 * time.Millisecond}
	viewer, err := Open(dir, "p", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer viewer.Close()
	ctl, err := Open(dir, "p", opts)
	if err != nil {
		t.Fatal(err)
	}
	c := follow(t, viewer)
	c.sync(t, dir, "p")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	viewer.Append(pool.Event{Kind: pool.EventResized, Message: "mine"})
	ctl.Append(pool.Event{Time: at, Kind: pool.EventClaimed, SandboxID: "sb-1", By: "cli", Warm: true,
		Duration: 3 * time.Millisecond, Health: pool.Health{OK: true, Status: 200, Latency: time.Millisecond, CheckedAt: at}})
	ctl.Append(pool.Event{Kind: pool.EventTerminated, SandboxID: "sb-1", Reason: pool.ReasonUser})
	got := c.wait(t, 2)
	if len(got) != 2 {
		t.Fatalf("got %d events (own ones included?): %+v", len(got), got)
	}
	e := got[0]
	if e.Kind != pool.EventClaimed || e.SandboxID != "sb-1" || e.By != "cli" || !e.Warm || e.Duration != 3*time.Millisecond ||
		!e.Time.Equal(at) || e.Health.Latency != time.Millisecond || e.Health.Status != 200 {
		t.Fatalf("round trip: %+v", e)
	}
	if c.org[0].Pid != os.Getpid() || c.org[0].ID == viewer.Origin().ID {
		t.Fatalf("origin %+v", c.org[0])
	}
	if err := ctl.Close(); err != nil {
		t.Fatal(err)
	}
	if err := viewer.Close(); err != nil {
		t.Fatal(err)
	}
	// Follow skips its own lines by their prefix, undecoded: each line
	// starts with its writer's.
	data, err := os.ReadFile(Path(dir, "p"))
	if err != nil {
		t.Fatal(err)
	}
	own := map[string]int{}
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		for _, j := range []*Journal{viewer, ctl} {
			if bytes.HasPrefix(line, linePrefix(j.Origin())) {
				own[j.Origin().ID]++
			}
		}
	}
	if own[viewer.Origin().ID] != 1 || own[ctl.Origin().ID] != 2 {
		t.Fatalf("lines by their writer's prefix: %v, want viewer 1 and ctl 2:\n%s", own, data)
	}
	fi, err := os.Stat(Path(dir, "p"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestRotationIsCappedAndFollowed(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(dir, "p", Options{MaxBytes: 2000, PollEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir, "p", Options{PollEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := follow(t, r)
	c.sync(t, dir, "p")
	const n = 60
	for i := range n {
		w.Append(pool.Event{Kind: pool.EventCreated, SandboxID: "sb-" + string(rune('A'+i%26))})
		if i%5 == 0 {
			c.wait(t, i+1) // the follower sees each generation before the next rotation
		}
	}
	got := c.wait(t, n)
	if len(got) != n {
		t.Fatalf("followed %d of %d", len(got), n)
	}
	_ = w.Close()
	for _, p := range []string{Path(dir, "p"), Path(dir, "p") + ".1"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 2000+1000 {
			t.Fatalf("%s is %d bytes, over the cap", p, fi.Size())
		}
	}
}

func TestAppendNeverBlocks(t *testing.T) {
	w, err := Open(t.TempDir(), "p", Options{Buffer: 1, Keep: func(pool.Event) bool {
		time.Sleep(time.Millisecond) // a slow disk
		return true
	}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 10000 {
		w.Append(pool.Event{Kind: pool.EventHealthFailed})
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("10000 appends took %s", d)
	}
	if w.Dropped() == 0 {
		t.Fatal("nothing dropped with a buffer of 1")
	}
	_ = w.Close()
	w.Append(pool.Event{Kind: pool.EventError}) // after Close: ignored, no panic
}
