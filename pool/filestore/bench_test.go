package filestore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// benchStore is a store of pooled entries and claimed ones, all expiring at
// 1000 s past t0.
func benchStore(b *testing.B, pooled, claimedN int, noSync bool) *Store {
	s := open(b, b.TempDir())
	s.noSync = noSync
	var entries []pool.Entry
	for i := range claimedN {
		entries = append(entries, pool.Entry{Ref: ref(fmt.Sprintf("claimed-%05d-0123456789abcdef", i), 1000), ClaimedBy: "api 127.0.0.1:5555", ClaimedAt: t0})
	}
	for i := range pooled {
		entries = append(entries, pool.Entry{Ref: ref(fmt.Sprintf("sandbox-%05d-0123456789abcdef", i), 1000)})
	}
	seed(b, s, pool.Stored{Target: pooled, HasTarget: true, TTL: 20 * time.Minute, UseDuration: 2 * time.Minute, Entries: entries})
	load(b, s)
	return s
}

// BenchmarkTake: one claim on a pool of 50, with 10 or 10,000 claimed
// entries besides; p50-ns is the median claim. The claimed sandbox is put
// back (untimed), so the store stays as it was.
//
//	go test -run '^$' -bench 'BenchmarkTake$' -benchtime 2000x ./pool/filestore/
func BenchmarkTake(b *testing.B) {
	for _, noSync := range []bool{false, true} {
		for _, claimedN := range []int{10, 10000} {
			name := fmt.Sprintf("fdatasync/claimed=%d", claimedN)
			if noSync {
				name = fmt.Sprintf("nosync/claimed=%d", claimedN)
			}
			b.Run(name, func(b *testing.B) {
				s := benchStore(b, 50, claimedN, noSync)
				ctx := context.Background()
				req := pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "bench", Now: t0}
				times := make([]time.Duration, 0, b.N)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					start := time.Now()
					e, _, ok, err := s.Take(ctx, req)
					times = append(times, time.Since(start))
					if err != nil || !ok {
						b.Fatal(ok, err)
					}
					b.StopTimer()
					if _, err := s.Remove(ctx, e.ID); err != nil {
						b.Fatal(err)
					}
					if err := s.Put(ctx, e.Ref); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				b.StopTimer()
				slices.Sort(times)
				b.ReportMetric(float64(times[len(times)/2].Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(times[len(times)*99/100].Nanoseconds()), "p99-ns")
			})
		}
	}
}

// BenchmarkTakeClaimedRatio: claims on two pools of 50, one with 10 claimed
// entries besides and one with 10,000, taken in turns so that both see the
// same machine load; ratio is p50 with 10,000 over p50 with 10.
//
//	go test -run '^$' -bench 'BenchmarkTakeClaimedRatio' -benchtime 3000x ./pool/filestore/
func BenchmarkTakeClaimedRatio(b *testing.B) {
	for _, noSync := range []bool{false, true} {
		name := "fdatasync"
		if noSync {
			name = "nosync"
		}
		b.Run(name, func(b *testing.B) {
			stores := []*Store{benchStore(b, 50, 10, noSync), benchStore(b, 50, 10000, noSync)}
			ctx := context.Background()
			req := pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "bench", Now: t0}
			times := [2][]time.Duration{}
			b.ResetTimer()
			for range b.N {
				for i, s := range stores {
					start := time.Now()
					e, _, ok, err := s.Take(ctx, req)
					times[i] = append(times[i], time.Since(start))
					if err != nil || !ok {
						b.Fatal(ok, err)
					}
					b.StopTimer()
					if _, err := s.Remove(ctx, e.ID); err != nil {
						b.Fatal(err)
					}
					if err := s.Put(ctx, e.Ref); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			}
			b.StopTimer()
			var p50 [2]float64
			for i := range times {
				slices.Sort(times[i])
				p50[i] = float64(times[i][len(times[i])/2].Nanoseconds())
			}
			b.ReportMetric(p50[0], "p50-ns-10")
			b.ReportMetric(p50[1], "p50-ns-10000")
			b.ReportMetric(p50[1]/p50[0], "ratio")
		})
	}
}

// BenchmarkTakeConcurrent: 20 goroutines claim from one Store at once;
// ns/op is the cost per claim, claims/append how many one append (one
// lock, one write) served.
//
//	go test -run '^$' -bench 'BenchmarkTakeConcurrent' -benchtime 4000x ./pool/filestore/
func BenchmarkTakeConcurrent(b *testing.B) {
	const workers = 20
	s := benchStore(b, b.N, 10, false)
	ctx := context.Background()
	var wg sync.WaitGroup
	var next sync.Mutex
	left := b.N
	appends := s.appends
	b.ResetTimer()
	for range workers {
		wg.Go(func() {
			for {
				next.Lock()
				if left == 0 {
					next.Unlock()
					return
				}
				left--
				next.Unlock()
				if _, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "bench", Now: t0}); err != nil || !ok {
					b.Error(ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if n := s.appends - appends; n > 0 {
		b.ReportMetric(float64(b.N)/float64(n), "claims/append")
	}
}

// BenchmarkLoad: the engine's store poll. generation is the cheap check
// (a lock and a stat), since the engine's load of an unchanged file (a
// stat, then a copy of the pooled entries), unchanged a Load of it (a
// copy of every entry), cold reads and decodes the whole file (a new
// process, or another process compacted it).
//
//	go test -run '^$' -bench 'BenchmarkLoad' -benchtime 50x ./pool/filestore/
func BenchmarkLoad(b *testing.B) {
	for _, claimedN := range []int{10, 10000} {
		s := benchStore(b, 50, claimedN, false)
		ctx := context.Background()
		b.Run(fmt.Sprintf("generation/claimed=%d", claimedN), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Generation(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("since/claimed=%d", claimedN), func(b *testing.B) {
			// The poll of a controller while claims go on: the claimed
			// entries an earlier load returned are left out.
			b.ReportAllocs()
			_, _, mark, err := s.LoadSince(ctx, 0)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if st, older, _, err := s.LoadSince(ctx, mark); err != nil || len(st.Entries) != 50 || older != claimedN {
					b.Fatal(err)
				}
			}
		})
		for _, cold := range []bool{false, true} {
			name := fmt.Sprintf("unchanged/claimed=%d", claimedN)
			if cold {
				name = fmt.Sprintf("cold/claimed=%d", claimedN)
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if cold {
						s.sem <- struct{}{}
						s.invalidate()
						<-s.sem
					}
					if st, err := s.Load(ctx); err != nil || len(st.Entries) != 50+claimedN {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
