package pool_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// scalePool is a controller over the in-memory fakes holding n ready
// sandboxes: real processes would not fit 1,000 on this machine.
func scalePool(tb testing.TB, n int, healthTimeout time.Duration) (*pool.Controller, *pooltest.Backend) {
	tb.Helper()
	clk := clockwork.NewRealClock()
	be := pooltest.NewBackend(clk)
	st := pooltest.NewStore()
	cfg := pool.DefaultConfig()
	cfg.Size, cfg.MaxSize, cfg.MaxCreating, cfg.HealthTimeout = n, 10000, 1000, healthTimeout
	c, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Clock: clk, Checker: be.Checker})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	ctx := context.Background()
	for range n/cfg.MaxCreating + 1 { // a pass starts at most MaxCreating
		if err := c.Maintain(ctx); err != nil {
			tb.Fatal(err)
		}
		c.WaitIdle(ctx)
	}
	if s, _ := st.Load(ctx); len(s.Entries) != n {
		tb.Fatalf("filled %d of %d", len(s.Entries), n)
	}
	return c, be
}

// BenchmarkMaintainPass is one steady-state pass (list, load, reconcile,
// size) over a full pool of n.
func BenchmarkMaintainPass(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			c, be := scalePool(b, n, time.Second)
			ctx := context.Background()
			creates := be.Creates
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Maintain(ctx); err != nil {
					b.Fatal(err)
				}
			}
			if be.Creates != creates {
				b.Fatalf("a steady-state pass created %d sandboxes", be.Creates-creates)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/sandbox")
		})
	}
}

// BenchmarkHealthSweep probes every pooled sandbox once (instant checker).
func BenchmarkHealthSweep(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			c, _ := scalePool(b, n, time.Second)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if bad := c.ProbeAll(ctx); bad != 0 {
					b.Fatalf("%d bad", bad)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/sandbox")
		})
	}
}

// TestHealthSweepWithHungSandboxes: hung sandboxes are probed in parallel
// with the others, so a sweep of 500 with 10 hung takes one health timeout,
// not ten.
func TestHealthSweepWithHungSandboxes(t *testing.T) {
	const timeout = 500 * time.Millisecond
	c, be := scalePool(t, 500, timeout)
	for _, id := range be.Live()[:10] {
		be.SetHung(id)
	}
	start := time.Now()
	bad := c.ProbeAll(context.Background())
	took := time.Since(start)
	if bad != 10 {
		t.Fatalf("%d failed, want the 10 hung", bad)
	}
	if took > timeout+time.Second {
		t.Fatalf("sweep took %s, want within one health timeout (%s) plus 1s", took, timeout)
	}
}

// BenchmarkRecordMemory is the heap a controller holds per sandbox record.
func BenchmarkRecordMemory(b *testing.B) {
	const n = 10000
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		c, _ := scalePool(b, n, time.Second)
		c.ProbeAll(context.Background()) // a health record per sandbox too
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/sandbox")
		runtime.KeepAlive(c)
	}
}

// BenchmarkLoopbackFloor is the physical floor of a claim over the API: one
// HTTP GET round trip on loopback with keep-alive, to an empty handler.
func BenchmarkLoopbackFloor(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) })}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	client := pool.NewHealthClient(nil)
	url := "http://" + ln.Addr().String() + "/"
	for b.Loop() {
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
	client.CloseIdleConnections()
}
