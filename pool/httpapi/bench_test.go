package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// The benchmark's pool is shared by every run of the benchmark (the
// framework calls it with growing b.N) and torn down by TestMain.
var bench struct {
	once sync.Once
	env  *localEnv
	stop func() error
	dir  string
	err  error

	memOnce sync.Once
	mem     *memPool
	memStop func()
	memErr  error

	coldMu sync.Mutex
	cold   map[int][]time.Duration // by concurrency
}

const (
	benchPoolSize       = 100
	benchClientsDefault = 20
	// benchRound claims are made between refills, so the pool never has
	// fewer than benchPoolSize-benchRound ready sandboxes.
	benchRound = 80
)

func benchPool(b *testing.B) *localEnv {
	b.Helper()
	bench.once.Do(func() {
		bench.dir, bench.err = os.MkdirTemp("", "sandboxpool-bench-")
		if bench.err != nil {
			return
		}
		bench.env, bench.stop, bench.err = startLocal(bench.dir, benchPoolSize, false, func(c *pool.Config) {
			c.MaxSize = benchPoolSize
		})
	})
	if bench.err != nil {
		b.Fatal(bench.err)
	}
	return bench.env
}

// teardownBench runs after every test and benchmark.
func teardownBench() {
	if bench.memStop != nil {
		bench.memStop()
	}
	if bench.stop != nil {
		if err := bench.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "benchmark pool teardown:", err)
		}
	}
	if bench.dir != "" {
		_ = os.RemoveAll(bench.dir)
	}
}

// BenchmarkClaimHTTP: POST /v1/claims over loopback with health checks on,
// 20 concurrent clients, from a pool of 100 ready local sandboxes. After
// each round of 80 claims the timer stops and the claimed sandboxes go back
// into the pool (the store's Remove and Put: no process is created during
// the benchmark), so the pool never runs dry. It reports the p50 and p99 of
// the claim latency seen by the clients, and the cold start of the same
// workload (as many clients at once each create a local sandbox and poll it
// every millisecond until it first answers) with the ratio of the p50s.
//
// store=file is the product: the controller over the file store, whose
// transactions (flock, write, two fsyncs) serialise claims. store=memory
// claims the very same sandboxes through a controller over the in-memory
// store: the cost of the API and the health check alone.
//
//	go test -run '^$' -bench ClaimHTTP -benchtime 4000x ./pool/httpapi/
//
// BENCH_CLIENTS=n changes the number of concurrent clients.
func BenchmarkClaimHTTP(b *testing.B) {
	e := benchPool(b)
	clients := benchClientsDefault
	if v, err := strconv.Atoi(os.Getenv("BENCH_CLIENTS")); err == nil && v > 0 {
		clients = v
	}
	b.Run("store=file", func(b *testing.B) {
		runClaims(b, e.base, e.http, e.st, clients, coldStarts(b, e, clients))
	})
	b.Run("store=memory", func(b *testing.B) {
		m := benchMemPool(b, e)
		runClaims(b, m.base, e.http, m.st, clients, coldStarts(b, e, clients))
	})
}

func runClaims(b *testing.B, base string, hc *http.Client, st pool.Store, clients int, cold []time.Duration) {
	ctx := context.Background()
	c := httpapi.Client{BaseURL: base, HTTP: hc}
	lat := make([]time.Duration, 0, b.N)
	var latMu sync.Mutex
	var failed atomic.Int64
	var firstErr atomic.Value
	b.ResetTimer()
	for done := 0; done < b.N; {
		round := min(b.N-done, benchRound)
		var next atomic.Int64
		var wg sync.WaitGroup
		claimed := make([]string, round)
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := make([]time.Duration, 0, round/clients+1)
				for {
					i := int(next.Add(1)) - 1
					if i >= round {
						break
					}
					start := time.Now()
					v, err := c.Claim(ctx, true, 10*time.Second)
					mine = append(mine, time.Since(start))
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
						continue
					}
					claimed[i] = v.ID
				}
				latMu.Lock()
				lat = append(lat, mine...)
				latMu.Unlock()
			}()
		}
		wg.Wait()
		done += round
		b.StopTimer()
		if err := recycle(ctx, st, claimed); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d claims failed, first: %v", n, b.N, firstErr.Load())
	}
	slices.Sort(lat)
	p50, p99 := percentile(lat, 50), percentile(lat, 99)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	coldP50 := percentile(cold, 50)
	b.ReportMetric(ms(coldP50), "cold-p50-ms")
	b.ReportMetric(float64(coldP50)/float64(p50), "cold/warm-x")
}

// recycle puts claimed sandboxes back at the end of the pool, as ready.
func recycle(ctx context.Context, st pool.Store, ids []string) error {
	ids = slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == "" })
	removed, err := st.Remove(ctx, ids...)
	if err != nil {
		return err
	}
	for _, en := range removed {
		if err := st.Put(ctx, en.Ref); err != nil {
			return err
		}
	}
	if len(removed) != len(ids) {
		return fmt.Errorf("recycle: %d claimed, %d found in the store", len(ids), len(removed))
	}
	return nil
}

// memPool is a second controller over the same running sandboxes, with the
// in-memory store.
type memPool struct {
	base string
	st   *pooltest.Store
}

// benchMemPool copies the file pool's sandboxes into an in-memory store and
// serves a controller over it; it is torn down with the benchmark pool.
func benchMemPool(b *testing.B, e *localEnv) *memPool {
	b.Helper()
	bench.memOnce.Do(func() {
		ctx := context.Background()
		stored, err := e.st.Load(ctx)
		if err != nil {
			bench.memErr = err
			return
		}
		st := pooltest.NewStore()
		for _, en := range stored.Pooled() {
			_ = st.Put(ctx, en.Ref)
		}
		healthTr := &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}
		ctrl, err := pool.New(pool.Options{Config: e.ctrl.Config(), Backend: e.be, Store: st,
			Checker: pool.NewHTTPChecker(pool.NewHealthClient(healthTr))})
		if err != nil {
			bench.memErr = err
			return
		}
		sctx, cancel := context.WithCancel(ctx)
		addr, errc, err := httpapi.Serve(sctx, "127.0.0.1:0", httpapi.New(ctrl, httpapi.Options{}))
		if err != nil {
			cancel()
			ctrl.Close()
			bench.memErr = err
			return
		}
		bench.mem = &memPool{base: "http://" + addr, st: st}
		bench.memStop = func() {
			e.http.CloseIdleConnections()
			cancel()
			<-errc
			ctrl.Close() // the sandboxes stay: the file pool's teardown stops them
			healthTr.CloseIdleConnections()
		}
	})
	if bench.memErr != nil {
		b.Fatal(bench.memErr)
	}
	return bench.mem
}

// coldStart is what a claim costs without a warm pool: create a local
// sandbox and poll it every millisecond until it first answers 2xx.
func coldStart(ctx context.Context, e *localEnv, hc *http.Client) (time.Duration, error) {
	start := time.Now()
	ref, err := e.be.Create(ctx, time.Minute)
	if err != nil {
		return 0, err
	}
	defer func() { _ = e.be.Terminate(context.WithoutCancel(ctx), ref.ID) }()
	for {
		resp, err := hc.Get(ref.URL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return time.Since(start), nil
			}
		}
		if time.Since(start) > 10*time.Second {
			return 0, fmt.Errorf("sandbox %s never answered: %v", ref.ID, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// coldStarts measures cold starts once per process and concurrency:
// `clients` at once, as many as the warm benchmark runs, two rounds.
func coldStarts(b *testing.B, e *localEnv, clients int) []time.Duration {
	b.Helper()
	bench.coldMu.Lock()
	defer bench.coldMu.Unlock()
	if got, ok := bench.cold[clients]; ok {
		return got
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	defer hc.CloseIdleConnections()
	var mu sync.Mutex
	var out []time.Duration
	var firstErr error
	for range 2 {
		var wg sync.WaitGroup
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := coldStart(context.Background(), e, hc)
				mu.Lock()
				defer mu.Unlock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				out = append(out, d)
			}()
		}
		wg.Wait()
	}
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	slices.Sort(out)
	if bench.cold == nil {
		bench.cold = map[int][]time.Duration{}
	}
	bench.cold[clients] = out
	return out
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100 // ceil(p% of n), 1-based
	return sorted[max(i-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
