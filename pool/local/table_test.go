package local

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/filestore"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
	"golang.org/x/sys/unix"
)

// stopped runs fn while the agent is stopped (SIGSTOP): whatever fn does
// with the agent waits, so fn must not ask it anything. fn must return
// within 10 s.
func stopped(t *testing.T, pid int, fn func()) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(pid, syscall.SIGCONT)
		<-done
		t.Fatal("a claim waited for the stopped agent")
	}
}

// requestClaim asks the agent to record e's claim, as a Backend without
// the claim table does.
func requestClaim(ctx context.Context, b *Backend, e pool.Entry) error {
	_, err := b.call(ctx, request{Op: "claimed", ID: e.ID, By: e.ClaimedBy, At: e.ClaimedAt, Once: true}, false)
	return err
}

func tableBackend(t *testing.T, dir string) *Backend {
	t.Helper()
	b, err := New(Options{StateDir: dir, Pool: "table", IdleExit: 5 * time.Second, TermGrace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func listed(t *testing.T, b *Backend, id string) (pool.Ref, bool) {
	t.Helper()
	refs, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(refs, func(r pool.Ref) bool { return r.ID == id })
	if i < 0 {
		return pool.Ref{}, false
	}
	return refs[i], true
}

// Two Backends (two claimers of one pool) and the real agent: a claim is
// decided in the claim table while the agent is stopped (no request), a
// second claim of the sandbox is refused, the agent honors the table's
// claim in its lists, its change lists, its record and a pool's
// termination; a pool's termination wins over a later claim; after the
// agent is killed the table is not trusted, and the next agent's is mapped.
func TestClaimTableAcrossProcesses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	b1, b2 := tableBackend(t, dir), tableBackend(t, dir)
	t.Cleanup(func() { shutdownAndWait(t, b1) })
	r, err := b1.Create(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	pooled, err := b1.Create(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	before, err := b1.ListChanges(ctx, pool.ListCursor{}) // maps b1's table
	if err != nil {
		t.Fatal(err)
	}
	listed(t, b2, r.ID) // maps b2's
	if b1.table.Load() == nil || b2.table.Load() == nil {
		t.Fatal("no claim table mapped after a list")
	}
	pid := b1.table.Load().pid
	if pid != b2.table.Load().pid || pid <= 0 {
		t.Fatalf("tables of agents %d and %d", pid, b2.table.Load().pid)
	}
	now := time.Now()
	mine := pool.Entry{Ref: r, ClaimedBy: "api 127.0.0.1:1", ClaimedAt: now}
	theirs := pool.Entry{Ref: r, ClaimedBy: "api 127.0.0.1:1", ClaimedAt: now.Add(time.Millisecond)}
	type outcome struct {
		decided, recorded bool
		err               error
	}
	var won, again, refused outcome
	stopped(t, pid, func() {
		won.decided, won.recorded, won.err = b1.TryClaimOnce(mine)
		again.decided, again.recorded, again.err = b2.TryClaimOnce(mine)
		refused.decided, refused.recorded, refused.err = b2.TryClaimOnce(theirs)
	})
	if !won.decided || !won.recorded || won.err != nil {
		t.Fatalf("the claim in the table: %+v, want decided, recorded, nil", won)
	}
	if !again.decided || !again.recorded || again.err != nil {
		t.Fatalf("the same claim from the other process: %+v, want decided, recorded, nil", again)
	}
	if !refused.decided || !errors.Is(refused.err, pool.ErrAlreadyClaimed) {
		t.Fatalf("a second claim: %+v, want decided, ErrAlreadyClaimed", refused)
	}
	// The agent has had no request about the claim: it reads the slot.
	if ref, ok := listed(t, b2, r.ID); !ok || !ref.Claimed {
		t.Fatalf("the agent lists %s as %+v (listed %v), want claimed", r.ID, ref, ok)
	}
	l, err := b2.ListChanges(ctx, before.Next)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(l.Refs, func(x pool.Ref) bool { return x.ID == r.ID }); l.Full || i < 0 || !l.Refs[i].Claimed {
		t.Fatalf("changes since before the claim: %+v, want %s claimed", l, r.ID)
	}
	// Who holds it the agent reads in its claimer's note.
	if err := b2.TerminatePooled(ctx, r.ID); !errors.Is(err, pool.ErrAlreadyClaimed) || !strings.Contains(err.Error(), "claimed by api 127.0.0.1:1:") {
		t.Fatalf("a pool's termination of the claimed sandbox: %v, want ErrAlreadyClaimed, claimed by api 127.0.0.1:1", err)
	}
	// The agent's requests (a Backend without the table: an older binary)
	// honor the slot: the same claim is fine, another one refused.
	if err := b1.MarkClaimedOnce(ctx, mine); err != nil {
		t.Fatalf("the claim's record: %v", err)
	}
	if err := requestClaim(ctx, b2, mine); err != nil {
		t.Fatalf("the same claim's request: %v", err)
	}
	if err := requestClaim(ctx, b2, theirs); !errors.Is(err, pool.ErrAlreadyClaimed) {
		t.Fatalf("another claim's request: %v, want ErrAlreadyClaimed", err)
	}
	// A pool's termination, then a claim of that sandbox: gone.
	if err := b2.TerminatePooled(ctx, pooled.ID); err != nil {
		t.Fatal(err)
	}
	// (Its slot is free once it is forgotten: the agent says so then.)
	gone := func(b *Backend, e pool.Entry) error {
		decided, _, err := b.TryClaimOnce(e)
		if !decided {
			err = b.MarkClaimedOnce(ctx, e)
		}
		return err
	}
	if err := gone(b1, pool.Entry{Ref: pooled, ClaimedBy: "cli", ClaimedAt: now}); !errors.Is(err, pool.ErrNotFound) {
		t.Fatalf("a claim after the pool's termination: %v, want ErrNotFound", err)
	}
	// Its claimer's terminate ends it; the same claim again is refused.
	if err := b1.Terminate(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if err := gone(b2, mine); !errors.Is(err, pool.ErrNotFound) {
		t.Fatalf("a claim after its claimer's terminate: %v, want ErrNotFound", err)
	}

	// kill -9: the old table is not trusted; the next agent's is mapped.
	fresh, err := b1.Create(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the agent gone", func() bool { return !b1.table.Load().alive() })
	if decided, _, err := b1.TryClaimOnce(pool.Entry{Ref: fresh, ClaimedBy: "cli", ClaimedAt: now}); decided {
		t.Fatalf("a claim decided by a dead agent's table: %v", err)
	}
	if err := b1.MarkClaimedOnce(ctx, pool.Entry{Ref: fresh, ClaimedBy: "cli", ClaimedAt: now}); !errors.Is(err, pool.ErrNotFound) {
		t.Fatalf("the claim's request with no agent: %v, want ErrNotFound", err)
	}
	next, err := b1.Create(ctx, time.Minute) // starts the next agent
	if err != nil {
		t.Fatal(err)
	}
	listed(t, b1, next.ID)
	if tab := b1.table.Load(); tab == nil || tab.pid == pid || !tab.alive() {
		t.Fatalf("after the next agent's list: table %+v, want the next agent's (not %d)", tab, pid)
	}
	if decided, _, err := b1.TryClaimOnce(pool.Entry{Ref: next, ClaimedBy: "cli", ClaimedAt: now}); !decided || err != nil {
		t.Fatalf("a claim in the next agent's table: %v %v", decided, err)
	}
}

// countingBackend counts the claim requests (MarkClaimedOnce) to the agent.
type countingBackend struct {
	*Backend
	requests atomic.Int32
}

func (b *countingBackend) MarkClaimedOnce(ctx context.Context, e pool.Entry) error {
	b.requests.Add(1)
	return b.Backend.MarkClaimedOnce(ctx, e)
}

// served is how many requests of op the agent answered so far.
func served(t *testing.T, b *Backend, op string) uint64 {
	t.Helper()
	resp, err := b.call(context.Background(), request{Op: "ping", Served: true}, false)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Served[op]
}

// A controller's claim on the local backend does not ask the agent: it is
// answered while the agent is stopped, and its whole record is in shared
// memory (the table and the claimer's note): no request after either.
func TestClaimAnsweredWhileTheAgentIsStopped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := &countingBackend{Backend: tableBackend(t, t.TempDir())}
	t.Cleanup(func() { shutdownAndWait(t, b.Backend) })
	cfg := pool.DefaultConfig()
	cfg.Size = 2
	cfg.Pool = "table"
	c, err := pool.New(pool.Options{Config: cfg, Backend: b, Store: pooltest.NewStore()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	testkit.Eventually(t, 20*time.Second, "2 ready and the table mapped", func() bool {
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		return c.Snapshot().Counts[pool.StateReady] == 2 && b.table.Load() != nil
	})
	pid, err := b.AgentPid(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got pool.Claimed
	var asked int32
	stopped(t, pid, func() {
		// AnnounceLater: its record starts at Announce, after the answer.
		got, err = c.Claim(ctx, pool.ClaimOptions{By: "cli", AnnounceLater: true})
		asked = b.requests.Load()
	})
	if err != nil {
		t.Fatal(err)
	}
	if asked != 0 {
		t.Fatalf("the claim asked the agent %d times before its answer", asked)
	}
	got.Announce()
	c.WaitIdle(ctx)
	if n := b.requests.Load(); n != 0 {
		t.Fatalf("%d claim requests after the answer, want none (its note is its record)", n)
	}
	if n := served(t, b.Backend, "claimed"); n != 0 {
		t.Fatalf("the agent answered %d claim requests, want none", n)
	}
	if ref, ok := listed(t, b.Backend, got.ID); !ok || !ref.Claimed {
		t.Fatalf("the agent lists the claimed %s as %+v", got.ID, ref)
	}
	err = requestClaim(ctx, b.Backend, pool.Entry{Ref: got.Ref, ClaimedBy: "other", ClaimedAt: time.Now()})
	if !errors.Is(err, pool.ErrAlreadyClaimed) || !strings.Contains(err.Error(), "claimed by cli") {
		t.Fatalf("another claim's request of %s: %v, want refused, held by cli (its note)", got.ID, err)
	}
}

// A burst of concurrent claims on the local backend asks the agent nothing
// (counted at the agent), whether the store takes each in a transaction
// (pooltest's store, passes run by hand) or the controller that serves the
// pool takes them from the file store's memory; a claimer's name too long
// for a note is the one claim whose record is a request. The agent names
// each claimer.
func TestClaimBurstAsksTheAgentNothing(t *testing.T) {
	t.Parallel()
	for _, serve := range []bool{false, true} {
		name := map[bool]string{false: "store transaction", true: "take from memory"}[serve]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			claimBurst(t, serve)
		})
	}
}

func claimBurst(t *testing.T, serve bool) {
	ctx := context.Background()
	dir := t.TempDir()
	b := tableBackend(t, dir)
	t.Cleanup(func() { shutdownAndWait(t, b) })
	const n = 12
	cfg := pool.DefaultConfig()
	cfg.Size = n + 1
	cfg.Pool = "table"
	var st pool.Store = pooltest.NewStore()
	if serve {
		fs, err := filestore.Open(dir, cfg.Pool)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		st = fs
	}
	c, err := pool.New(pool.Options{Config: cfg, Backend: b, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if serve {
		sctx, cancel := context.WithCancel(ctx)
		served := make(chan error, 1)
		go func() { served <- c.Serve(sctx, false) }()
		t.Cleanup(func() {
			cancel()
			<-served
		})
	}
	testkit.Eventually(t, 20*time.Second, "the pool ready and the table mapped", func() bool {
		if !serve {
			if err := c.Maintain(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return c.Snapshot().Counts[pool.StateReady] == n+1 && c.Creating() == 0 && b.table.Load() != nil
	})
	before := served(t, b, "claimed")
	got := make([]pool.Claimed, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got[i], errs[i] = c.Claim(ctx, pool.ClaimOptions{By: fmt.Sprintf("api 127.0.0.1:%d", 40000+i)})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.WaitIdle(ctx)
	if k := served(t, b, "claimed") - before; k != 0 {
		t.Fatalf("%d concurrent claims: %d claim requests at the agent, want none", n, k)
	}
	long := strings.Repeat("y", 80)
	last, err := c.Claim(ctx, pool.ClaimOptions{By: long})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitIdle(ctx) // its record
	if k := served(t, b, "claimed") - before; k != 1 {
		t.Fatalf("a claimer's name of %d bytes: %d claim requests at the agent, want its record", len(long), k)
	}
	for i, cl := range append(got, last) {
		want := long
		if i < n {
			want = fmt.Sprintf("api 127.0.0.1:%d", 40000+i)
		}
		err := b.TerminatePooled(ctx, cl.ID)
		if !errors.Is(err, pool.ErrAlreadyClaimed) || !strings.Contains(err.Error(), "claimed by "+want+":") {
			t.Fatalf("a pool's termination of %s: %v, want left running, claimed by %s", cl.ID, err, want)
		}
	}
}

func TestIDKey(t *testing.T) {
	for _, id := range []string{"sb-0123456789ab", "sb-ffffffffffff", "sb-000000000000", "sb-0123456789AB", "sb-0123456789a", "sb-0123456789abc", "xb-0123456789ab", "sb-0123456789ag", ""} {
		key, ok := idKey(id)
		if ok != validID(id) {
			t.Fatalf("idKey(%q) ok %v, validID %v", id, ok, validID(id))
		}
		if ok && fmt.Sprintf("sb-%012x", key) != id {
			t.Fatalf("idKey(%q) = %x", id, key)
		}
	}
}

// A Backend that has only created (its pool's passes have not listed since
// the agent started) decides claims in the table, with no request.
func TestClaimTableMappedByACreation(t *testing.T) {
	t.Parallel()
	b := tableBackend(t, t.TempDir())
	t.Cleanup(func() { shutdownAndWait(t, b) })
	ref, err := b.Create(context.Background(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	decided, _, err := b.TryClaimOnce(pool.Entry{Ref: ref, ClaimedBy: "test", ClaimedAt: time.Now()})
	if !decided || err != nil {
		t.Fatalf("TryClaimOnce after a creation: decided %v, err %v; want decided by the table", decided, err)
	}
}

// A controller's Backend (Prefault) maps the claim table and notes whole
// with the first creation: its claims take no page fault. Without it, each
// claim of a sandbox in a page not touched yet faults one in.
func TestPrefaultedClaimsTakeNoPageFault(t *testing.T) {
	t.Parallel()
	b, err := New(Options{StateDir: t.TempDir(), Pool: "table", IdleExit: 5 * time.Second, TermGrace: 200 * time.Millisecond, Prefault: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdownAndWait(t, b) })
	var refs []pool.Ref
	for range 8 {
		ref, err := b.Create(context.Background(), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	faults := func() int64 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
			t.Fatal(err)
		}
		return ru.Minflt
	}
	at := time.Now()
	before := faults()
	for _, ref := range refs {
		if decided, _, err := b.TryClaimOnce(pool.Entry{Ref: ref, ClaimedBy: "test", ClaimedAt: at}); !decided || err != nil {
			t.Fatalf("claim %s: decided %v, %v", ref.ID, decided, err)
		}
	}
	if n := faults() - before; n >= 4 {
		t.Fatalf("8 claims took %d page faults; want none (the table and notes prefaulted)", n)
	}
}
