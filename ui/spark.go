package ui

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// sparks keeps the pool over the last 10 minutes, in 10 s buckets: the
// ready count (last sample of each bucket), claims, and claim latencies,
// for the header's sparklines. Time is the model's clock: a fake clock pins
// the picture.
type sparks struct {
	b [sparkBuckets]bucket
}

const (
	sparkBucket  = 10 * time.Second
	sparkBuckets = 60 // 10 minutes
	latKeep      = 32 // latencies kept per bucket for the p50
)

type bucket struct {
	at      time.Time // start of the bucket; zero when unused
	ready   int
	sampled bool
	claims  int
	lat     []time.Duration
}

func (s *sparks) at(t time.Time) *bucket {
	start := t.Truncate(sparkBucket)
	b := &s.b[int(start.Unix()/int64(sparkBucket/time.Second))%sparkBuckets]
	if !b.at.Equal(start) {
		*b = bucket{at: start}
	}
	return b
}

func (s *sparks) sample(t time.Time, ready int) {
	b := s.at(t)
	b.ready, b.sampled = ready, true
}

func (s *sparks) claim(t time.Time, waited time.Duration) {
	b := s.at(t)
	b.claims++
	if len(b.lat) < latKeep {
		b.lat = append(b.lat, waited)
	}
}

// window returns the buckets of the last 10 minutes up to now, oldest
// first (a bucket never written is zero).
func (s *sparks) window(now time.Time) []bucket {
	out := make([]bucket, sparkBuckets)
	end := now.Truncate(sparkBucket)
	for i := range sparkBuckets {
		start := end.Add(-time.Duration(sparkBuckets-1-i) * sparkBucket)
		b := s.b[int(start.Unix()/int64(sparkBucket/time.Second))%sparkBuckets]
		if b.at.Equal(start) {
			out[i] = b
		}
	}
	return out
}

var sparkRunes = []rune("▁▂▃▄▅▆▇█")

// sparkline draws vals (NaN-free; missing as -1) in len(vals) cells, scaled
// from 0 to the largest value; missing values are blank.
func sparkline(vals []float64) string {
	top := 0.0
	for _, v := range vals {
		top = max(top, v)
	}
	var b strings.Builder
	for _, v := range vals {
		switch {
		case v < 0:
			b.WriteByte(' ')
		case top == 0:
			b.WriteRune(sparkRunes[0])
		default:
			i := int(v / top * float64(len(sparkRunes)-1))
			b.WriteRune(sparkRunes[min(max(i, 0), len(sparkRunes)-1)])
		}
	}
	return b.String()
}

// series folds the window into n columns: ready (the last sample, carried
// over gaps), claims per minute, and claim latency p50 (ms); and the
// current values: ready now, claims in the last minute, p50 over the window.
func (s *sparks) series(now time.Time, n int) (ready, perMin, p50 []float64, readyNow, lastMin int, p50All time.Duration, anyLat bool) {
	w := s.window(now)
	ready, perMin, p50 = make([]float64, n), make([]float64, n), make([]float64, n)
	carry, have := 0, false
	var all []time.Duration
	for c := range n {
		from, to := c*len(w)/n, (c+1)*len(w)/n
		claims := 0
		var lat []time.Duration
		for _, b := range w[from:to] {
			if b.sampled {
				carry, have = b.ready, true
			}
			claims += b.claims
			lat = append(lat, b.lat...)
		}
		ready[c] = -1
		if have {
			ready[c] = float64(carry)
		}
		perMin[c] = float64(claims) * float64(time.Minute) / float64(time.Duration(to-from)*sparkBucket)
		p50[c] = -1
		if len(lat) > 0 {
			p50[c] = float64(median(lat)) / float64(time.Millisecond)
			all = append(all, lat...)
		}
	}
	readyNow = carry
	for _, b := range w[len(w)-6:] {
		lastMin += b.claims
	}
	if len(all) > 0 {
		p50All, anyLat = median(all), true
	}
	return
}

func median(d []time.Duration) time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	return d[len(d)/2]
}

// sparkLine is the header's third line: as many of the three sparklines as
// fit in w cells, each at least sparkMin wide (ready first, then claims per
// minute, then claim latency).
func (m *Model) sparkLine(w int) string {
	const sparkMin, sparkMax = 8, 20
	st := m.st
	type part struct{ label, value string }
	fixed := func(ps []part) int {
		n := 0
		for i, p := range ps {
			if i > 0 {
				n += 3
			}
			n += width(p.label) + 1 + 1 + width(p.value)
		}
		return n
	}
	// The values first: the widths depend on them.
	_, _, _, readyNow, lastMin, p50All, anyLat := m.spark.series(m.now, 1)
	lat := "–"
	if anyLat {
		lat = fmtLatency(p50All)
	}
	parts := []part{
		{"ready", strconv.Itoa(readyNow)},
		{"claims/min", strconv.Itoa(lastMin)},
		{"claim p50", lat},
	}
	for len(parts) > 0 && (w-fixed(parts))/len(parts) < sparkMin {
		parts = parts[:len(parts)-1]
	}
	if len(parts) == 0 {
		return ""
	}
	sw := min((w-fixed(parts))/len(parts), sparkMax)
	ready, perMin, p50, _, _, _, _ := m.spark.series(m.now, sw)
	lines := [][]float64{ready, perMin, p50}
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteString(st.Faint.wrap(" · "))
		}
		b.WriteString(st.Faint.wrap(p.label) + " ")
		st.Accent.write(&b, sparkline(lines[i]))
		b.WriteString(" " + p.value)
	}
	return b.String()
}
