package httpapi

import (
	"math"
	"strconv"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/plainjson"
	"github.com/sandboxpool/sandboxpool/pool"
)

// The JSON shapes of SPEC "Command line": the HTTP API, `check --json` and
// `claim --json` all print these, built by the constructors below, so that
// the three can never drift apart.

// PoolView is the JSON of `GET /v1/pool` and `check --json`.
type PoolView struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend"`
	Target  int    `json:"target"`
	// Counts has a key for every state, zeros included.
	Counts    Counts        `json:"counts"`
	Sandboxes []SandboxView `json:"sandboxes"`
	// WarmHitRatio is the share of successful claims served at once (0 before any).
	WarmHitRatio float64 `json:"warm_hit_ratio"`
	// WasteSeconds is sandbox-seconds spent ready and never claimed.
	WasteSeconds float64 `json:"waste_seconds"`
	// Claims counts the claims behind the ratio: with none, 0 is no verdict.
	Claims ClaimCounts `json:"claims"`
	// Autosize is there while the target follows demand, or after a
	// manual resize turned that off (saying so).
	Autosize *AutosizeView `json:"autosize,omitempty"`
	// Cost is there with --price-per-hour.
	Cost *CostView `json:"cost,omitempty"`
	// Error says what is wrong with the pool now (GET /v1/pool; /healthz is
	// 503 meanwhile); absent when all is well.
	Error string `json:"error,omitempty"`
	// MaintainedBy is the controller lease's holder: who maintains the pool,
	// its command line (no secrets) and API; absent when nobody does.
	MaintainedBy *pool.LeaseRecord `json:"maintained_by,omitempty"`
	// Rollout is there while the controller replaces, a few at a time, the
	// pooled sandboxes that run a workload the pool no longer runs.
	Rollout *RolloutView `json:"rollout,omitempty"`
}

// ClaimCounts is how the claims this process has seen ended.
type ClaimCounts struct {
	Warm   int64 `json:"warm"`   // served at once from a ready sandbox
	Waited int64 `json:"waited"` // waited for a creation
	Failed int64 `json:"failed"` // none within the timeout
}

// RolloutView is a rolling replacement under way, as the controller's last
// pass saw it.
type RolloutView struct {
	// From is the old workload ("--cmd python3 app.py").
	From string `json:"from"`
	// Old is how many good pooled sandboxes still run it.
	Old int `json:"old"`
	// Replacing is how many of them have their replacement being made.
	Replacing int `json:"replacing"`
}

// AutosizeView is why the target is what it is (SPEC --autosize).
type AutosizeView struct {
	On                 bool    `json:"on"`
	ClaimsPerSecond    float64 `json:"claims_per_second"`
	TimeToReadySeconds float64 `json:"time_to_ready_seconds"`
	MinSize            int     `json:"min_size"`
	MaxSize            int     `json:"max_size"`
	WindowSeconds      float64 `json:"window_seconds"`
	// Off says why it is off ("target set to 5 by hand").
	Off string `json:"off,omitempty"`
}

// CostView is the pool's cost in the unit of --price-per-hour.
type CostView struct {
	PricePerHour       float64 `json:"price_per_hour"`
	Sandboxes          int     `json:"sandboxes"`
	CostPerHour        float64 `json:"cost_per_hour"`
	IdleSandboxSeconds float64 `json:"idle_sandbox_seconds"`
	IdleCost           float64 `json:"idle_cost"`
}

// Counts is the number of sandboxes in each state, in SPEC's order.
type Counts struct {
	Creating    int `json:"creating"`
	Warming     int `json:"warming"`
	Ready       int `json:"ready"`
	Unhealthy   int `json:"unhealthy"`
	Expiring    int `json:"expiring"`
	Claimed     int `json:"claimed"`
	Terminating int `json:"terminating"`
	Failed      int `json:"failed"`
}

// Of returns the count of one state.
func (c Counts) Of(s pool.State) int {
	switch s {
	case pool.StateCreating:
		return c.Creating
	case pool.StateWarming:
		return c.Warming
	case pool.StateReady:
		return c.Ready
	case pool.StateUnhealthy:
		return c.Unhealthy
	case pool.StateExpiring:
		return c.Expiring
	case pool.StateClaimed:
		return c.Claimed
	case pool.StateTerminating:
		return c.Terminating
	case pool.StateFailed:
		return c.Failed
	}
	return 0
}

// NewCounts copies a snapshot's counts.
func NewCounts(m map[pool.State]int) Counts {
	return Counts{
		Creating: m[pool.StateCreating], Warming: m[pool.StateWarming], Ready: m[pool.StateReady],
		Unhealthy: m[pool.StateUnhealthy], Expiring: m[pool.StateExpiring], Claimed: m[pool.StateClaimed],
		Terminating: m[pool.StateTerminating], Failed: m[pool.StateFailed],
	}
}

// SandboxView is one sandbox in a PoolView. Times are RFC 3339 in UTC,
// to the second; created_at and expires_at are null when not known yet
// (a sandbox still being created has no expiry).
type SandboxView struct {
	ID          string     `json:"id"`
	URL         string     `json:"url"`
	State       pool.State `json:"state"`
	CreatedAt   *time.Time `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	SecondsLeft int64      `json:"seconds_left"`
	Health      HealthView `json:"health"`
}

// HealthView is the last health check of a sandbox; checked_at is null
// when it was never checked.
type HealthView struct {
	OK        bool       `json:"ok"`
	Status    int        `json:"status"`
	LatencyMS float64    `json:"latency_ms"`
	CheckedAt *time.Time `json:"checked_at"`
	Error     string     `json:"error"`
}

// ClaimView is the JSON of a claim: `POST /v1/claims` and `claim --json`.
type ClaimView struct {
	ID          string    `json:"id"`
	URL         string    `json:"url"`
	ExpiresAt   time.Time `json:"expires_at"`
	SecondsLeft int64     `json:"seconds_left"`
}

// appendJSON appends what json.Marshal writes for v, without reflection
// (one a claim), when its strings and expiry are ones JSON writes as they
// are (plainjson); ok is false otherwise.
func (v ClaimView) appendJSON(b []byte) (_ []byte, ok bool) {
	if !plainjson.Plain(v.ID, true) || !plainjson.Plain(v.URL, true) || !plainjson.Time(v.ExpiresAt) {
		return b, false
	}
	b = append(b, `{"id":`...)
	b = plainjson.AppendString(b, v.ID)
	b = append(b, `,"url":`...)
	b = plainjson.AppendString(b, v.URL)
	b = append(b, `,"expires_at":`...)
	b = plainjson.AppendTime(b, v.ExpiresAt)
	b = append(b, `,"seconds_left":`...)
	b = strconv.AppendInt(b, v.SecondsLeft, 10)
	return append(b, '}'), true
}

// NewPoolView builds the pool JSON from a snapshot; seconds_left is counted
// from the snapshot's instant.
func NewPoolView(s pool.Snapshot) PoolView {
	v := PoolView{
		Pool: s.Pool, Backend: s.Backend, Target: s.Target,
		Counts:       NewCounts(s.Counts),
		Sandboxes:    make([]SandboxView, 0, len(s.Sandboxes)),
		WarmHitRatio: round(s.Stats.WarmHitRatio(), 4),
		WasteSeconds: round(s.Stats.WasteSeconds, 1),
		Claims:       ClaimCounts{Warm: s.Stats.ClaimsWarm, Waited: s.Stats.ClaimsWaited, Failed: s.Stats.ClaimsFailed},
	}
	for _, sb := range s.Sandboxes {
		v.Sandboxes = append(v.Sandboxes, NewSandboxView(sb, s.Now))
	}
	if a := s.Autosize; a.On || a.Off != "" {
		v.Autosize = &AutosizeView{On: a.On, ClaimsPerSecond: round(a.Rate, 2), TimeToReadySeconds: round(a.TimeToReady.Seconds(), 2),
			MinSize: a.Min, MaxSize: a.Max, WindowSeconds: a.Window.Seconds(), Off: a.Off}
	}
	if !s.Lease.IsZero() {
		l := s.Lease
		v.MaintainedBy = &l
	}
	if r := s.Rollout; r.From != "" {
		v.Rollout = &RolloutView{From: r.From, Old: r.Old, Replacing: r.Replacing}
	}
	if c := s.Cost; c.PricePerHour > 0 {
		v.Cost = &CostView{PricePerHour: c.PricePerHour, Sandboxes: c.Sandboxes, CostPerHour: round(c.PerHour(), 4),
			IdleSandboxSeconds: round(c.IdleSeconds, 1), IdleCost: round(c.IdleCost(), 4)}
	}
	return v
}

// NewSandboxView builds one sandbox's JSON as of now.
func NewSandboxView(sb pool.Sandbox, now time.Time) SandboxView {
	v := SandboxView{
		ID: sb.ID, URL: sb.URL, State: sb.State,
		CreatedAt: timePtr(sb.CreatedAt), ExpiresAt: timePtr(sb.ExpiresAt),
		Health: HealthView{
			OK: sb.Health.OK, Status: sb.Health.Status, Error: sb.Health.Error,
			LatencyMS: round(float64(sb.Health.Latency)/float64(time.Millisecond), 2),
			CheckedAt: timePtr(sb.Health.CheckedAt),
		},
	}
	if !sb.ExpiresAt.IsZero() {
		v.SecondsLeft = secondsLeft(sb.ExpiresAt, now)
	}
	if v.Health.Error == "" && sb.Err != "" {
		v.Health.Error = sb.Err // why a creation failed
	}
	return v
}

// NewClaimView builds the claim JSON as of now.
func NewClaimView(c pool.Claimed, now time.Time) ClaimView {
	return ClaimView{
		ID: c.ID, URL: c.URL,
		ExpiresAt:   rfc3339(c.ExpiresAt),
		SecondsLeft: secondsLeft(c.ExpiresAt, now),
	}
}

// secondsLeft is whole seconds until expiry, rounded down, never negative.
func secondsLeft(expires, now time.Time) int64 {
	if d := expires.Sub(now); d > 0 {
		return int64(d / time.Second)
	}
	return 0
}

// rfc3339 is t in UTC to the second, rounded down (an expiry shown is never
// later than the real one).
func rfc3339(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := rfc3339(t)
	return &u
}

func round(x float64, places int) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	p := math.Pow10(places)
	return math.Round(x*p) / p
}
