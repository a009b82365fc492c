package conformance_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/modalx"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/conformance"
)

// startFake runs a fake Modal control plane and points the SDK at it through
// the process environment: the tests using it are top-level and sequential
// (their subtests share the one fake, each on its own pool).
func startFake(t *testing.T, opts fakemodal.Options) *fakemodal.Server {
	t.Helper()
	f, err := fakemodal.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	t.Setenv("MODAL_SERVER_URL", f.URL)
	t.Setenv("MODAL_TOKEN_ID", f.TokenID)
	t.Setenv("MODAL_TOKEN_SECRET", f.TokenSecret)
	t.Setenv("MODAL_CONFIG_PATH", t.TempDir()+"/none.toml")
	return f
}

func openModal(t *testing.T, name string) (*modalx.Backend, *modalx.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, s, err := modalx.New(ctx, modalx.Options{Pool: name, LeaseHeartbeat: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(); _ = s.Close() })
	return b, s
}

// TestModal runs the suite on the Modal adapter over the fake control plane.
func TestModal(t *testing.T) {
	f := startFake(t, fakemodal.Options{})
	var n atomic.Int64
	conformance.Run(t, func(t *testing.T) conformance.Env {
		name := fmt.Sprintf("conformance-%d", n.Add(1))
		b, s := openModal(t, name)
		return conformance.Env{
			Pool:    name,
			Backend: b,
			Store:   s,
			Checker: checker(t, &http.Transport{TLSClientConfig: f.TLSConfig()}),
			Kill: func(t *testing.T, id string) {
				if !f.KillServer(id) {
					t.Fatalf("the fake knows no sandbox %s", id)
				}
			},
			Reopen: func(t *testing.T) (pool.Backend, pool.Store) { return openModal(t, name) },
		}
	})
}

// TestModalRPCs counts, with the fake's counters, the Modal RPCs of one claim
// and of one steady-state maintenance pass on a full pool of 3, 30 and 100
// sandboxes, and checks that a pass costs the same at any size but for list
// pages: what a big pool costs in control-plane calls.
//
//	go test -run TestModalRPCs -v ./pool/conformance/
func TestModalRPCs(t *testing.T) {
	f := startFake(t, fakemodal.Options{})
	type row struct {
		n                     int
		claim, pass, backfill map[string]int
	}
	var rows []row
	for _, n := range []int{3, 30, 100} {
		name := fmt.Sprintf("rpc-%d", n)
		b, s := openModal(t, name)
		cfg := conformance.Config(name)
		cfg.Size = n
		c, err := pool.New(pool.Options{Config: cfg, Backend: b, Store: s,
			Checker: checker(t, &http.Transport{TLSClientConfig: f.TLSConfig()})})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		// No loop runs here: each pass starts at most --max-creating.
		for c.Snapshot().Counts[pool.StateReady] < n {
			if err := c.Maintain(ctx); err != nil {
				t.Fatal(err)
			}
			c.WaitIdle(ctx)
			if ctx.Err() != nil {
				t.Fatalf("fill %d: %v", n, ctx.Err())
			}
		}
		// Steady state: one pass after the fill, then the measured one.
		pass := func() map[string]int {
			f.ResetCounts()
			if err := c.Maintain(ctx); err != nil {
				t.Fatal(err)
			}
			c.WaitIdle(ctx)
			return f.Counts()
		}
		pass()
		r := row{n: n, pass: pass()}
		if _, _, _, created, _ := c.Counters(); created != int64(n) {
			t.Fatalf("pool of %d: %d created, want %d (a pass on a full pool creates nothing)", n, created, n)
		}
		f.ResetCounts()
		if _, err := c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "rpc"}); err != nil {
			t.Fatal(err)
		}
		r.claim = f.Counts()
		r.backfill = pass() // the pass after a claim: one creation
		rows = append(rows, r)
		if _, err := c.TerminateAll(ctx); err != nil {
			t.Fatal(err)
		}
		c.Close()
		cancel()
	}
	total := func(m map[string]int) int {
		n := 0
		for _, v := range m {
			n += v
		}
		return n
	}
	t.Logf("Modal RPCs (fake control plane, SandboxList page %d):", 100)
	t.Logf("| sandboxes | one claim | one pass on a full pool | its backfill pass (1 creation) | pass by RPC |")
	t.Logf("|---:|---:|---:|---:|---|")
	for _, r := range rows {
		t.Logf("| %d | %d | %d | %d | %s |", r.n, total(r.claim), total(r.pass), total(r.backfill), fakemodal.FormatCounts(r.pass))
	}
	last := rows[len(rows)-1]
	t.Logf("claim by RPC: %s", fakemodal.FormatCounts(last.claim))
	t.Logf("backfill pass by RPC: %s", fakemodal.FormatCounts(last.backfill))
	small := rows[0]
	for _, r := range rows[1:] {
		// Each extra page of a list (sandboxes, queue items) is one more call.
		pages := (r.n+99)/100 - (small.n+99)/100 + 1
		if d := total(r.pass) - total(small.pass); d > pages {
			t.Errorf("a pass on %d sandboxes makes %d RPCs, %d more than on %d: want at most %d more (list pages)",
				r.n, total(r.pass), d, small.n, pages)
		}
		if d := total(r.claim) - total(small.claim); d != 0 {
			t.Errorf("a claim on %d sandboxes makes %d RPCs, %d more than on %d", r.n, total(r.claim), d, small.n)
		}
	}
}
