package main

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// TestSecondDashboardIsAViewer: a dashboard on a pool whose controller runs
// elsewhere attaches as a viewer, without the API port the holder serves.
func TestSecondDashboardIsAViewer(t *testing.T) {
	state := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
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
	deadline := time.Now().Add(10 * time.Second)
	for second.ctrl.Snapshot().Role != "viewer" || first.ctrl.Snapshot().Role != "controller" {
		if time.Now().After(deadline) {
			t.Fatalf("roles %q and %q, want controller and viewer", first.ctrl.Snapshot().Role, second.ctrl.Snapshot().Role)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h := second.ctrl.Snapshot().LeaseHolder; !strings.Contains(h, "pid") {
		t.Fatalf("the viewer names the holder %q", h)
	}
}
