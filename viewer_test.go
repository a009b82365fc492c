package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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
	deadline := time.Now().Add(5 * time.Second)
	for s.ctrl.Snapshot().Role != "viewer" {
		if time.Now().After(deadline) {
			t.Fatalf("role %q, want viewer", s.ctrl.Snapshot().Role)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a controller would have started creating by now
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
