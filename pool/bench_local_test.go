package pool_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/filestore"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// realPool is a controller over the real local backend and file store.
func realPool(tb testing.TB, size, maxCreating int, warmup time.Duration) (*pool.Controller, *local.Backend, *filestore.Store) {
	tb.Helper()
	dir := tb.TempDir()
	be, err := local.New(local.Options{Pool: "bench", StateDir: dir, Warmup: warmup})
	if err != nil {
		tb.Fatal(err)
	}
	st, err := filestore.Open(dir, "bench")
	if err != nil {
		tb.Fatal(err)
	}
	cfg := pool.DefaultConfig()
	cfg.Pool, cfg.Size, cfg.MaxCreating = "bench", size, maxCreating
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = c.Cleanup(ctx)
		c.Close()
		_ = st.Close()
	})
	return c, be, st
}

func fill(tb testing.TB, c *pool.Controller) time.Duration {
	tb.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Serve(ctx, false) }()
	defer func() { cancel(); <-done }()
	if err := c.WaitAtTarget(ctx, nil); err != nil {
		tb.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkClaimLocal claims from a pool of 50 ready local sandboxes through
// the file store, health check on. Each claimed sandbox goes back to the
// pool untimed, so the pool never runs dry.
func BenchmarkClaimLocal(b *testing.B) {
	c, _, st := realPool(b, 50, 20, 0)
	fill(b, c)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		got, err := c.Claim(ctx, pool.ClaimOptions{CheckHealth: true, By: "bench"})
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := st.Remove(ctx, got.ID); err != nil {
			b.Fatal(err)
		}
		if err := st.Put(ctx, got.Ref); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(p float64) float64 {
		return float64(lat[min(int(float64(len(lat))*p), len(lat)-1)]) / float64(time.Millisecond)
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

// BenchmarkFill50 fills an empty pool to 50 with the built-in server, in
// parallel (--max-creating 20) and one at a time, and reports both and
// their ratio: with no warmup (a creation is ~25 ms of process starts, so
// CPU-bound on 2 cores) and with a 250 ms warmup (latency-bound, like a
// sandbox that installs things before it serves).
func BenchmarkFill50(b *testing.B) {
	for _, warmup := range []time.Duration{0, 250 * time.Millisecond} {
		b.Run("warmup="+warmup.String(), func(b *testing.B) {
			var parallel, serial time.Duration
			for b.Loop() {
				c, _, _ := realPool(b, 50, 20, warmup)
				parallel += fill(b, c)
				c1, _, _ := realPool(b, 50, 1, warmup)
				serial += fill(b, c1)
			}
			n := float64(b.N)
			b.ReportMetric(parallel.Seconds()/n, "parallel-s")
			b.ReportMetric(serial.Seconds()/n, "serial-s")
			b.ReportMetric(serial.Seconds()/parallel.Seconds(), "speedup-x")
		})
	}
}
