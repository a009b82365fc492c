package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// The benchmark's pool is shared by every run of the benchmark (the
// framework calls it with growing b.N) and torn down by TestMain.
var bench struct {
	once sync.Once
	env  *localEnv
	stop func() error
	dir  string
	err  error

	coldOnce sync.Once
	cold     []time.Duration
	coldErr  error
}

const (
	benchPoolSize = 100
	benchClients  = 20
	// benchRound claims are made between refills, so the pool never has
	// fewer than benchPoolSize-benchRound ready sandboxes.
	benchRound = 80
	benchCold  = 10
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
// 20 concurrent clients, from a pool of 100 ready local sandboxes over the
// file store. After each round of 80 claims the timer stops and the claimed
// sandboxes go back into the pool (the store's Remove and Put: no process
// is created during the benchmark), so the pool never runs dry. Reports the
// p50 and p99 of the claim latency seen by the clients, and the cold start
// of the same workload (a local sandbox created and answering its first
// health check, measured sequentially, so at its fastest) with the ratio.
//
//	go test -run '^$' -bench ClaimHTTP -benchtime 4000x ./pool/httpapi/
func BenchmarkClaimHTTP(b *testing.B) {
	e := benchPool(b)
	cold := coldStarts(b, e)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	var latMu sync.Mutex
	var failed atomic.Int64
	b.ResetTimer()
	for done := 0; done < b.N; {
		round := min(b.N-done, benchRound)
		var next atomic.Int64
		var wg sync.WaitGroup
		claimed := make([]pool.Ref, round)
		for range benchClients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := make([]time.Duration, 0, round/benchClients+1)
				for {
					i := int(next.Add(1)) - 1
					if i >= round {
						break
					}
					start := time.Now()
					v, err := claimOnce(ctx, e)
					mine = append(mine, time.Since(start))
					if err != nil {
						failed.Add(1)
						continue
					}
					claimed[i] = pool.Ref{ID: v.ID, URL: v.URL, ExpiresAt: v.ExpiresAt}
				}
				latMu.Lock()
				lat = append(lat, mine...)
				latMu.Unlock()
			}()
		}
		wg.Wait()
		done += round
		b.StopTimer()
		if err := recycle(ctx, e, claimed); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d claims failed", n, b.N)
	}
	slices.Sort(lat)
	p50, p99 := percentile(lat, 50), percentile(lat, 99)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	coldP50 := percentile(cold, 50)
	b.ReportMetric(ms(coldP50), "cold-p50-ms")
	b.ReportMetric(float64(coldP50)/float64(p50), "cold/warm-x")
}

// claimOnce is one client's claim, health check on.
func claimOnce(ctx context.Context, e *localEnv) (httpapi.ClaimView, error) {
	c := httpapi.Client{BaseURL: e.base, HTTP: e.http}
	return c.Claim(ctx, true, 10*time.Second)
}

// recycle puts claimed sandboxes back at the end of the pool, as ready.
func recycle(ctx context.Context, e *localEnv, claimed []pool.Ref) error {
	ids := make([]string, 0, len(claimed))
	for _, r := range claimed {
		if r.ID != "" {
			ids = append(ids, r.ID)
		}
	}
	removed, err := e.st.Remove(ctx, ids...)
	if err != nil {
		return err
	}
	for _, en := range removed {
		if err := e.st.Put(ctx, en.Ref); err != nil {
			return err
		}
	}
	if len(removed) != len(ids) {
		return fmt.Errorf("recycle: %d claimed, %d found in the store", len(ids), len(removed))
	}
	return nil
}

// coldStarts measures, once per process, what a claim costs without a warm
// pool: create a local sandbox and poll it every millisecond until it first
// answers 2xx.
func coldStarts(b *testing.B, e *localEnv) []time.Duration {
	b.Helper()
	bench.coldOnce.Do(func() {
		ctx := context.Background()
		hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
		defer hc.CloseIdleConnections()
		for range benchCold {
			start := time.Now()
			ref, err := e.be.Create(ctx, time.Minute)
			if err != nil {
				bench.coldErr = err
				return
			}
			for {
				resp, err := hc.Get(ref.URL)
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode/100 == 2 {
						break
					}
				}
				if time.Since(start) > 10*time.Second {
					bench.coldErr = fmt.Errorf("sandbox %s never answered: %v", ref.ID, err)
					break
				}
				time.Sleep(time.Millisecond)
			}
			bench.cold = append(bench.cold, time.Since(start))
			_ = e.be.Terminate(ctx, ref.ID)
			if bench.coldErr != nil {
				return
			}
		}
		slices.Sort(bench.cold)
	})
	if bench.coldErr != nil {
		b.Fatal(bench.coldErr)
	}
	return bench.cold
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100 // ceil(p% of n), 1-based
	return sorted[max(i-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
