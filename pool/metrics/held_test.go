package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The process metrics are read at most once per processHold, whatever the
// scrape rate; the other series stay live.
func TestProcessMetricsHeld(t *testing.T) {
	n := 0
	h := &heldCollector{c: countingCollector{&n}, hold: time.Hour}
	reg := prometheus.NewRegistry()
	reg.MustRegister(h)
	for range 5 {
		mfs, err := reg.Gather()
		if err != nil || len(mfs) != 1 || mfs[0].GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Fatalf("gather: %v %v", err, mfs)
		}
	}
	if n != 1 {
		t.Fatalf("collected %d times in 5 scrapes within the hold, want 1", n)
	}
	h.hold = 0
	if _, err := reg.Gather(); err != nil || n != 2 {
		t.Fatalf("after the hold: collected %d times (%v), want 2", n, err)
	}
}

type countingCollector struct{ n *int }

var countingDesc = prometheus.NewDesc("test_collections", "test", nil, nil)

func (c countingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- countingDesc }
func (c countingCollector) Collect(ch chan<- prometheus.Metric) {
	*c.n++
	ch <- prometheus.MustNewConstMetric(countingDesc, prometheus.GaugeValue, 1)
}
