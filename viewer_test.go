package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// TestSecondDashboardIsAViewer: a dashboard on a pool whose controller runs
// elsewhere attaches as a viewer, without the API port the holder serves.
func TestSecondDashboardIsAViewer(t *testing.T) {
	state := t.TempDir()
	addr := testkit.FreeAddr(t)
	opts := func() *options {
		o := &options{backend: "local", stateDir: state, listen: addr, port: 8080, logLevel: "info"}
		return o
	}
	cfg := pool.DefaultConfig()
	cfg.Size = 1
	logger := slog.New(slog.DiscardHandler)
	ctx := context.Background()

	first, err := startController(ctx, opts(), cfg, logger, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		first.stop(true, logger)
	}()
	second, err := startController(ctx, opts(), cfg, logger, true)
	if err != nil {
		t.Fatalf("a second dashboard refused: %v", err)
	}
	defer second.stop(false, logger)
	if !strings.Contains(second.apiAddr, "in use") {
		t.Fatalf("second dashboard's API %q: want off, the first serves it", second.apiAddr)
	}
	if !testkit.Until(10*time.Second, func() bool {
		return second.ctrl.Snapshot().Role == "viewer" && first.ctrl.Snapshot().Role == "controller"
	}) {
		t.Fatalf("roles %q and %q, want controller and viewer", first.ctrl.Snapshot().Role, second.ctrl.Snapshot().Role)
	}
	if h := second.ctrl.Snapshot().LeaseHolder; !strings.Contains(h, "pid") {
		t.Fatalf("the viewer names the holder %q", h)
	}
}

// TestReadOnlyDashboardNeverMaintains: --readonly watches a pool that no
// controller maintains, and neither creates, stores nor takes the lease.
func TestReadOnlyDashboardNeverMaintains(t *testing.T) {
	state := t.TempDir()
	o := &options{backend: "local", stateDir: state, listen: "", port: 8080, logLevel: "info", readonly: true}
	cfg := pool.DefaultConfig()
	cfg.Size, cfg.SizeSet = 2, true // --size is ignored: read-only changes nothing
	logger := slog.New(slog.DiscardHandler)
	s, err := startController(context.Background(), o, cfg, logger, true)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, "the viewer role", func() bool { return s.ctrl.Snapshot().Role == "viewer" })
	// Three rounds of watching the store and the lease: a controller would
	// have taken the lease and started creating by now.
	rounds := s.ctrl.Rounds()
	testkit.Eventually(t, 10*time.Second, "3 watch rounds", func() bool { return s.ctrl.Rounds() >= rounds+3 })
	holder, err := s.ctrl.LeaseHolder(context.Background())
	snap := s.ctrl.Snapshot()
	s.stop(false, logger)
	if err != nil || !holder.IsZero() {
		t.Fatalf("read-only took the lease: %q %v", holder, err)
	}
	if len(snap.Sandboxes) != 0 {
		t.Fatalf("read-only made %d sandboxes", len(snap.Sandboxes))
	}
	data, _ := os.ReadFile(filepath.Join(state, "default.json"))
	if strings.Contains(string(data), `"target"`) {
		t.Fatalf("read-only stored a target: %s", data)
	}
}

// TestViewerSeesThePoolsEvents: a viewer dashboard and a CLI claim share the
// pool's journal with the controller: the viewer sees the claim the
// controller served and counts it, the controller sees the CLI's claim.
func TestViewerSeesThePoolsEvents(t *testing.T) {
	state := t.TempDir()
	opts := func() *options {
		return &options{backend: "local", stateDir: state, listen: "", port: 8080, logLevel: "info"}
	}
	cfg := pool.DefaultConfig()
	cfg.Size = 2
	logger := slog.New(slog.DiscardHandler)
	ctx := context.Background()

	first, err := startController(ctx, opts(), cfg, logger, false)
	if err != nil {
		t.Fatal(err)
	}
	defer first.stop(true, logger)
	second, err := startController(ctx, opts(), cfg, logger, true)
	if err != nil {
		t.Fatal(err)
	}
	defer second.stop(false, logger)
	seen, cancel := second.ctrl.Subscribe(512)
	defer cancel()
	mine, cancelMine := first.ctrl.Subscribe(512)
	defer cancelMine()

	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if err := first.ctrl.WaitAtTarget(wctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := first.ctrl.Claim(wctx, pool.ClaimOptions{By: "api test"}); err != nil {
		t.Fatal(err)
	}
	// Through the journal ("· pid N") or, when the viewer's store poll
	// comes first, through the store: either is shown once (it flaked
	// under load waiting for the journal's copy).
	waitEvent(t, seen, func(e pool.Event) bool {
		return e.Kind == pool.EventClaimed && e.By == "api test"
	})
	if s := second.ctrl.Snapshot().Stats; s.ClaimsWarm+s.ClaimsWaited != 1 {
		t.Fatalf("the viewer counts %+v, want the controller's claim", s)
	}

	if err := claimFromStore(wctx, opts(), cfg, false, 30*time.Second, func(httpapi.ClaimView) error { return nil }); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, mine, func(e pool.Event) bool { return e.Kind == pool.EventClaimed && e.By == "cli" })
	if s := first.ctrl.Snapshot().Stats; s.ClaimsWarm+s.ClaimsWaited != 2 {
		t.Fatalf("the controller counts %+v, want its claim and the CLI's", s)
	}
}

func waitEvent(t *testing.T, ch <-chan pool.Event, ok func(pool.Event) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case e := <-ch:
			if ok(e) {
				return
			}
		case <-deadline:
			t.Fatal("the event never came")
		}
	}
}
