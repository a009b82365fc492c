package pool_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/filestore"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// storedClaimer is who the file store in dir says claimed id ("" pooled,
// "-" not there), as another process reads it.
func storedClaimer(t *testing.T, dir, id string) string {
	t.Helper()
	st, err := filestore.Open(dir, "default")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, err := st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range s.Entries {
		if e.ID == id {
			return e.ClaimedBy
		}
	}
	return "-"
}

// The controller that maintains the pool takes a claim after a quiet spell
// from the file store's memory when the backend's gate decides it at once
// (the local agent's claim table): the store is written after the answer,
// not before.
// Until then the gate alone holds the claim, as after a kill -9 of the
// controller, and a claimer in another process that takes the same
// sandbox from the file is refused; the record then puts it back claimed.
func TestQuickTakeRecordsTheStoreAfterTheAnswer(t *testing.T) {
	clk := clockwork.NewFakeClockAt(t0)
	cfg := pool.DefaultConfig()
	cfg.Size = 7
	be := pooltest.NewBackend(clk)
	released := make(chan struct{})
	close(released)
	gate := &quickGate{slowRecorder: &slowRecorder{Backend: be, in: make(chan string, 16), release: released}, table: map[string]pool.Entry{}}
	dir := t.TempDir()
	st, err := filestore.Open(dir, "default")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pool.New(pool.Options{Config: cfg, Backend: gate, Store: st, Clock: clk, Checker: be.Checker})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- c.Serve(ctx, false) }()
	t.Cleanup(func() {
		cancel()
		<-served
		c.Close()
		st.Close()
	})
	testkit.Eventually(t, waitLong, "filled", func() bool {
		return c.Summary().Counts[pool.StateReady] == cfg.Size && c.Creating() == 0
	})

	cl, err := c.Claim(ctx, pool.ClaimOptions{By: "api", AnnounceLater: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Announce) // before Close, which waits for it
	if by := storedClaimer(t, dir, cl.ID); by != "" {
		t.Fatalf("before the answer's announcement the file says %s is claimed by %q: written before the answer", cl.ID, by)
	}
	gate.mu.Lock()
	held := gate.table[cl.ID]
	gate.mu.Unlock()
	if held.ClaimedBy != "api" {
		t.Fatalf("the gate holds %s for %q, want the claim (api)", cl.ID, held.ClaimedBy)
	}

	// Another process (no loops: it takes from the file) claims meanwhile:
	// the file hands it the same sandbox, and the gate refuses it.
	other, err := filestore.Open(dir, "default")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	viewer, err := pool.New(pool.Options{Config: cfg, Backend: gate, Store: other, Clock: clk, Checker: be.Checker})
	if err != nil {
		t.Fatal(err)
	}
	defer viewer.Close()
	clk.Advance(time.Millisecond) // another instant: another claim
	cl2, err := viewer.Claim(ctx, pool.ClaimOptions{By: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	if cl2.ID == cl.ID {
		t.Fatalf("%s handed out twice", cl.ID)
	}

	// Claims while another is on its way out (back to back, a burst) take
	// from memory too (one takes from the file when a transaction of this
	// process runs meanwhile), and leave their record to the store:
	// written soon after the answer, with nothing else to write.
	var burst []pool.Claimed
	fromMemory := 0
	for i := range 4 {
		clk.Advance(time.Millisecond)
		cl3, err := c.Claim(ctx, pool.ClaimOptions{By: fmt.Sprintf("api%d", i+2), AnnounceLater: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl3.Announce)
		if storedClaimer(t, dir, cl3.ID) == "" {
			fromMemory++
		}
		burst = append(burst, cl3)
	}
	if fromMemory == 0 {
		t.Fatal("every claim beside another's wrote the file before its answer: none taken from memory")
	}

	cl.Announce()
	if by := storedClaimer(t, dir, cl.ID); by != "api" {
		t.Fatalf("after the answer the file says %s is claimed by %q, want api", cl.ID, by)
	}
	if by := storedClaimer(t, dir, cl2.ID); by != "cli" {
		t.Fatalf("the other claim's %s is claimed by %q in the file, want cli", cl2.ID, by)
	}
	for _, cl3 := range burst {
		cl3.Announce()
	}
	testkit.Eventually(t, waitLong, "the burst's claims recorded in the file", func() bool {
		for _, cl3 := range burst {
			if storedClaimer(t, dir, cl3.ID) != cl3.ClaimedBy {
				return false
			}
		}
		return true
	})
}
