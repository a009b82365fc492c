// Package metrics exports a pool controller's state and history as
// Prometheus metrics, on a registry of its own (never the global one), so
// that several controllers in one process, or tests, never collide.
//
// Two sources feed it: the controller's events, observed synchronously
// (claims, their latency, create-to-ready latency), and, at each scrape, the
// controller's snapshot and cumulative counters (sandboxes by state, target,
// creations, health checks, terminations, waste, warm-hit ratio).
package metrics

import (
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Namespace prefixes every metric name.
const Namespace = "sandboxpool"

// Claim results, as the "result" label of sandboxpool_claims_total.
const (
	ResultOK        = "ok"        // a sandbox was handed out
	ResultTimeout   = "timeout"   // no good sandbox within the claim timeout
	ResultCancelled = "cancelled" // the claimer went away (client disconnected, shutdown)
)

// Claim sources, as the "source" label: the first word of ClaimOptions.By.
var sources = map[string]bool{"api": true, "dashboard": true, "cli": true}

// Source maps a claimer ("api 127.0.0.1:5555", "dashboard", "cli") to the
// bounded "source" label: api, dashboard, cli or other.
func Source(by string) string {
	word, _, _ := strings.Cut(by, " ")
	if sources[word] {
		return word
	}
	return "other"
}

// Metrics holds the collectors of one controller and the registry they live in.
type Metrics struct {
	ctrl *pool.Controller
	reg  *prometheus.Registry

	claims       *prometheus.CounterVec
	claimLatency *prometheus.HistogramVec
	readyLatency prometheus.Histogram
	errors       *prometheus.CounterVec

	// The series a claim adds to, looked up once (WithLabelValues hashes
	// its labels on each call): ok claims by known source, latency by warm.
	claimsOK  map[string]prometheus.Counter
	latencyBy [2]prometheus.Observer // [0] waited, [1] warm
}

// ErrorKinds are the kinds of sandboxpool_errors_total always exported (at
// zero until one happens): pool's Problem kinds, and unknown for an error
// event that does not say.
var ErrorKinds = []string{pool.ProblemStore, pool.ProblemBackend, pool.ProblemBudget, pool.ProblemBackoff,
	pool.ProblemLease, ErrorKindUnknown}

// ErrorKindUnknown labels an error event that carries no kind.
const ErrorKindUnknown = "unknown"

// New builds the metrics of ctrl on a new registry and starts observing its
// events. Call it once per controller: every call adds an observer.
func New(ctrl *pool.Controller) *Metrics {
	m := &Metrics{
		ctrl: ctrl,
		reg:  prometheus.NewRegistry(),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "claims_total",
			Help: "Claims by source (api, dashboard, cli, other) and result (ok, timeout, cancelled).",
		}, []string{"source", "result"}),
		claimLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "claim_duration_seconds",
			Help:    "Time from a claim's start to the sandbox being handed out; warm is true when a ready sandbox was there at once.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"warm"}),
		readyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "create_to_ready_seconds",
			Help:    "Time from asking the backend for a sandbox to it answering its first health check and being pooled.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 5, 10, 20, 30, 60, 120},
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "errors_total",
			Help: "Errors the controller met (error events), by kind: store, backend, budget, backoff, lease, unknown.",
		}, []string{"kind"}),
	}
	for _, k := range ErrorKinds {
		m.errors.WithLabelValues(k)
	}
	// Pre-create the usual series so that rates work from the first scrape.
	for src := range sources {
		for _, res := range []string{ResultOK, ResultTimeout} {
			m.claims.WithLabelValues(src, res)
		}
	}
	m.claimsOK = map[string]prometheus.Counter{} // not "other": its series appears with its first claim
	for src := range sources {
		m.claimsOK[src] = m.claims.WithLabelValues(src, ResultOK)
	}
	m.latencyBy[0] = m.claimLatency.WithLabelValues("false")
	m.latencyBy[1] = m.claimLatency.WithLabelValues("true")

	m.reg.MustRegister(m.claims, m.claimLatency, m.readyLatency, m.errors, &snapshotCollector{ctrl: ctrl},
		collectors.NewGoCollector(), &heldCollector{c: collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), hold: processHold})
	ctrl.Observe(m.observe)
	return m
}

// Registry is the registry holding every metric of this controller; add
// your own collectors to it to serve them on the same endpoint.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:            m.reg, // counts its own scrape errors
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
	})
}

// observe is called synchronously for every event: it only touches
// prometheus collectors (lock-free or briefly locked), never the controller.
func (m *Metrics) observe(e pool.Event) {
	switch e.Kind {
	case pool.EventClaimed:
		if c, ok := m.claimsOK[Source(e.By)]; ok {
			c.Inc()
		} else {
			m.claims.WithLabelValues(Source(e.By), ResultOK).Inc()
		}
		warm := 0
		if e.Warm {
			warm = 1
		}
		m.latencyBy[warm].Observe(e.Duration.Seconds())
	case pool.EventClaimTimeout:
		m.claims.WithLabelValues(Source(e.By), claimFailure(e.Err)).Inc()
	case pool.EventCreated:
		m.readyLatency.Observe(e.Duration.Seconds())
	case pool.EventError:
		m.errors.WithLabelValues(errorKind(e)).Inc()
	}
}

// errorKind is an error event's kind label; an event that does not say
// counts as unknown.
func errorKind(e pool.Event) string {
	if e.ErrorKind == "" {
		return ErrorKindUnknown
	}
	return e.ErrorKind
}

// claimFailure tells a claim that ran out of time from one whose claimer
// went away. The event carries only the error text.
func claimFailure(err string) string {
	if strings.Contains(err, "context canceled") {
		return ResultCancelled
	}
	return ResultTimeout
}

// snapshotCollector reads the controller at scrape time: gauges of the
// present and counters the controller keeps itself.
type snapshotCollector struct{ ctrl *pool.Controller }

var (
	descSandboxes = prometheus.NewDesc(Namespace+"_sandboxes",
		"Sandboxes of the pool by state, as the controller sees them now.", []string{"state"}, nil)
	descTarget = prometheus.NewDesc(Namespace+"_target",
		"Number of ready sandboxes the pool keeps.", nil, nil)
	descCreations = prometheus.NewDesc(Namespace+"_creations_total",
		"Finished creations by result: ok (ready and pooled) or failed (every try failed).", []string{"result"}, nil)
	descHealth = prometheus.NewDesc(Namespace+"_health_checks_total",
		"Health checks by result: ok or failed.", []string{"result"}, nil)
	descTerminations = prometheus.NewDesc(Namespace+"_terminations_total",
		"Sandboxes terminated by reason (expired, unhealthy, shrink, user, failed, orphan, cleanup).", []string{"reason"}, nil)
	descWaste = prometheus.NewDesc(Namespace+"_waste_sandbox_seconds_total",
		"Sandbox-seconds spent ready in the pool by sandboxes that were never claimed.", nil, nil)
	descWarmRatio = prometheus.NewDesc(Namespace+"_warm_hit_ratio",
		"Share of successful claims served at once from a ready sandbox (0 before any claim).", nil, nil)
	descIdleSeconds = prometheus.NewDesc(Namespace+"_idle_sandbox_seconds_total",
		"Sandbox-seconds spent unclaimed in the pool (ready, unhealthy or expiring), since this process started.", nil, nil)
	descIdleCost = prometheus.NewDesc(Namespace+"_idle_cost_total",
		"Idle sandbox-seconds in money, at --price-per-hour (exported when a price is set).", nil, nil)
	descCostPerHour = prometheus.NewDesc(Namespace+"_cost_per_hour",
		"What the pool costs per hour at its current size (every sandbox not claimed), at --price-per-hour (exported when a price is set).", nil, nil)
	descAutosize = prometheus.NewDesc(Namespace+"_autosize_enabled",
		"1 while the target follows demand (--autosize), else 0.", nil, nil)
	descClaimRate = prometheus.NewDesc(Namespace+"_claim_rate",
		"Recent claims per second, as autosize reads them.", nil, nil)
	descClaimStats = prometheus.NewDesc(Namespace+"_pool_claims_total",
		"Claims seen by this controller by outcome: warm (served at once), waited (waited for a creation), failed.", []string{"outcome"}, nil)
	descProblems = prometheus.NewDesc(Namespace+"_problems",
		"What is wrong with the pool now, by kind (0 when all is well); /healthz is 503 while any is above 0.", []string{"kind"}, nil)
)

// reasons are always exported, at zero when nothing was terminated for them yet.
var reasons = []string{pool.ReasonExpired, pool.ReasonUnhealthy, pool.ReasonShrink, pool.ReasonUser,
	pool.ReasonFailed, pool.ReasonCancelled, pool.ReasonOrphan, pool.ReasonCleanup}

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSandboxes, descTarget, descCreations, descHealth,
		descTerminations, descWaste, descWarmRatio, descClaimStats, descIdleSeconds, descIdleCost,
		descCostPerHour, descAutosize, descClaimRate, descProblems} {
		ch <- d
	}
}

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	snap := c.ctrl.Summary() // counts only: a scrape costs the same with 10,000 claimed
	problems := map[string]int{}
	for _, k := range ErrorKinds {
		problems[k] = 0
	}
	for _, p := range c.ctrl.Problems() {
		problems[p.Kind]++
	}
	for k, n := range problems {
		ch <- prometheus.MustNewConstMetric(descProblems, prometheus.GaugeValue, float64(n), k)
	}
	for _, st := range pool.States {
		ch <- prometheus.MustNewConstMetric(descSandboxes, prometheus.GaugeValue, float64(snap.Counts[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(descTarget, prometheus.GaugeValue, float64(snap.Target))

	terms, healthOK, healthFailed, createOK, createFailed := c.ctrl.Counters()
	ch <- prometheus.MustNewConstMetric(descCreations, prometheus.CounterValue, float64(createOK), "ok")
	ch <- prometheus.MustNewConstMetric(descCreations, prometheus.CounterValue, float64(createFailed), "failed")
	ch <- prometheus.MustNewConstMetric(descHealth, prometheus.CounterValue, float64(healthOK), "ok")
	ch <- prometheus.MustNewConstMetric(descHealth, prometheus.CounterValue, float64(healthFailed), "failed")
	seen := make(map[string]bool, len(reasons))
	for _, r := range reasons {
		seen[r] = true
		ch <- prometheus.MustNewConstMetric(descTerminations, prometheus.CounterValue, float64(terms[r]), r)
	}
	for r, n := range terms { // a reason added to the engine later still shows
		if !seen[r] {
			ch <- prometheus.MustNewConstMetric(descTerminations, prometheus.CounterValue, float64(n), r)
		}
	}

	ch <- prometheus.MustNewConstMetric(descWaste, prometheus.CounterValue, snap.Stats.WasteSeconds)
	ch <- prometheus.MustNewConstMetric(descWarmRatio, prometheus.GaugeValue, snap.Stats.WarmHitRatio())
	ch <- prometheus.MustNewConstMetric(descClaimStats, prometheus.CounterValue, float64(snap.Stats.ClaimsWarm), "warm")
	ch <- prometheus.MustNewConstMetric(descClaimStats, prometheus.CounterValue, float64(snap.Stats.ClaimsWaited), "waited")
	ch <- prometheus.MustNewConstMetric(descClaimStats, prometheus.CounterValue, float64(snap.Stats.ClaimsFailed), "failed")

	ch <- prometheus.MustNewConstMetric(descIdleSeconds, prometheus.CounterValue, snap.Cost.IdleSeconds)
	if snap.Cost.PricePerHour > 0 {
		ch <- prometheus.MustNewConstMetric(descIdleCost, prometheus.CounterValue, snap.Cost.IdleCost())
		ch <- prometheus.MustNewConstMetric(descCostPerHour, prometheus.GaugeValue, snap.Cost.PerHour())
	}
	on := 0.0
	if snap.Autosize.On {
		on = 1
	}
	ch <- prometheus.MustNewConstMetric(descAutosize, prometheus.GaugeValue, on)
	ch <- prometheus.MustNewConstMetric(descClaimRate, prometheus.GaugeValue, snap.Autosize.Rate)
}

// processHold is how long the process metrics of one scrape serve the next
// ones: reading them (/proc/self stat, limits, netstat and every open fd)
// was most of a scrape's cost, and a client that polls /metrics every
// 50 ms (a tool waiting for the pool to fill) paid it each time. A
// Prometheus server scraping every few seconds sees no difference.
const processHold = time.Second

// heldCollector collects c at most once per hold and replays what it
// collected meanwhile (its metrics are immutable values).
type heldCollector struct {
	c    prometheus.Collector
	hold time.Duration

	mu   sync.Mutex
	at   time.Time
	last []prometheus.Metric
}

func (h *heldCollector) Describe(ch chan<- *prometheus.Desc) { h.c.Describe(ch) }

func (h *heldCollector) Collect(ch chan<- prometheus.Metric) {
	h.mu.Lock()
	if h.last == nil || time.Since(h.at) >= h.hold {
		fresh := make(chan prometheus.Metric, 16)
		go func() {
			h.c.Collect(fresh)
			close(fresh)
		}()
		next := make([]prometheus.Metric, 0, len(h.last)) // the last one may still be replayed
		for m := range fresh {
			next = append(next, m)
		}
		h.last, h.at = next, time.Now()
	}
	last := h.last
	h.mu.Unlock()
	for _, m := range last {
		ch <- m
	}
}
