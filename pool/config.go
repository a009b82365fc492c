package pool

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Config is the pool's tuning, with SPEC's defaults from DefaultConfig.
type Config struct {
	Pool          string
	Size          int // target; used when the store has none or SizeSet
	SizeSet       bool
	MaxSize       int
	TTL           time.Duration
	UseDuration   time.Duration
	HealthTimeout time.Duration
	HealthEvery   time.Duration
	// HealthFresh: a claim skips its own probe of a sandbox whose last
	// successful probe is younger (HikariCP's aliveBypassWindowMs); 0 always probes.
	HealthFresh   time.Duration
	MaintainEvery time.Duration
	MaxCreating   int
	// ClaimTimeout bounds how long a claim waits for a good sandbox.
	ClaimTimeout time.Duration
	// CreateTries is how often one creation is tried before it counts as failed.
	CreateTries int
	// TTLJitter is the largest fraction by which one sandbox's ttl is
	// shortened to spread the expiries of a fill (SpreadExpiry; HikariCP
	// varies maxLifetime so). 0 (the default, for exact tests) never
	// shortens; the command line uses DefaultTTLJitter.
	TTLJitter float64
	// Autosize makes the target follow demand between MinSize and MaxSize,
	// falling no faster than AutosizeWindow (pool/autosize.go).
	Autosize       bool
	MinSize        int
	AutosizeWindow time.Duration
	// PricePerHour is one sandbox's hourly price; 0 shows no money.
	PricePerHour float64
}

// DefaultTTLJitter is the ttl spread of the command line: up to 10%, so
// that even a short ttl leaves room to place a small pool's expiries more
// than a rotation's lead apart (2 s at a ttl of 20 s).
const DefaultTTLJitter = 0.1

// DefaultConfig returns SPEC's defaults.
func DefaultConfig() Config {
	return Config{
		Pool:           "default",
		Size:           3,
		MaxSize:        100,
		TTL:            5 * time.Minute,
		UseDuration:    2 * time.Minute,
		HealthTimeout:  10 * time.Second,
		HealthEvery:    5 * time.Second,
		HealthFresh:    500 * time.Millisecond,
		MaintainEvery:  30 * time.Second,
		MaxCreating:    20,
		ClaimTimeout:   60 * time.Second,
		CreateTries:    3,
		MinSize:        1,
		AutosizeWindow: 5 * time.Minute,
	}
}

// FieldError is a Config field with a value it cannot take. Field names it
// as the engine knows it ("size", "use_duration"); Rule says what is
// allowed, naming any other field in braces ("must be less than {ttl} 5m0s"),
// so that the command line can say the same with its flags.
type FieldError struct {
	Field string
	Value any
	Rule  string
}

func (e *FieldError) Error() string { return e.Render(func(f string) string { return f }) }

// Render writes the error with each field named by name (e.g. its flag).
func (e *FieldError) Render(name func(field string) string) string {
	rule := e.Rule
	for {
		i := strings.IndexByte(rule, '{')
		j := strings.IndexByte(rule, '}')
		if i < 0 || j < i {
			break
		}
		rule = rule[:i] + name(rule[i+1:j]) + rule[j+1:]
	}
	v := fmt.Sprint(e.Value)
	if s, ok := e.Value.(string); ok {
		v = strconv.Quote(s)
	}
	return name(e.Field) + " " + v + ": " + rule
}

func fieldErr(field string, v any, rule string, args ...any) *FieldError {
	return &FieldError{Field: field, Value: v, Rule: fmt.Sprintf(rule, args...)}
}

// Validate checks every field; a *FieldError names the field and what it allows.
func (c Config) Validate() error {
	if err := ValidatePoolName(c.Pool); err != nil {
		return err
	}
	if c.MaxSize < 0 {
		return fieldErr("max_size", c.MaxSize, "must be 0 or more")
	}
	if err := c.ValidateSize(c.Size); err != nil {
		return err
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"ttl", c.TTL}, {"use_duration", c.UseDuration}, {"health_timeout", c.HealthTimeout},
		{"health_every", c.HealthEvery}, {"maintain_every", c.MaintainEvery}, {"claim_timeout", c.ClaimTimeout},
	} {
		if d.v <= 0 {
			return fieldErr(d.field, d.v, "must be a positive duration such as 30s or 5m")
		}
	}
	if c.HealthFresh < 0 {
		return fieldErr("health_fresh", c.HealthFresh, "must be 0 or a positive duration")
	}
	if c.UseDuration >= c.TTL {
		return fieldErr("use_duration", c.UseDuration, "must be less than {ttl} %s", c.TTL)
	}
	if c.MaxCreating < 1 || c.MaxCreating > 1000 {
		return fieldErr("max_creating", c.MaxCreating, "must be between 1 and 1000")
	}
	if c.MinSize < 0 || c.Autosize && c.MinSize > c.MaxSize {
		return fieldErr("min_size", c.MinSize, "must be between 0 and {max_size} %d", c.MaxSize)
	}
	if c.AutosizeWindow <= 0 {
		return fieldErr("autosize_window", c.AutosizeWindow, "must be a positive duration such as 30s or 5m")
	}
	if c.PricePerHour < 0 || math.IsNaN(c.PricePerHour) || math.IsInf(c.PricePerHour, 0) {
		return fieldErr("price_per_hour", c.PricePerHour, "must be a price of 0 or more, such as 0.05")
	}
	if c.TTLJitter < 0 || c.TTLJitter > 0.1 || math.IsNaN(c.TTLJitter) {
		return fieldErr("ttl_jitter", c.TTLJitter, "must be between 0 and 0.1")
	}
	if c.CreateTries < 1 {
		return fieldErr("create_tries", c.CreateTries, "must be 1 or more")
	}
	return nil
}

// ValidateSize checks a target against the configured cap.
func (c Config) ValidateSize(n int) error {
	if n < 0 || n > c.MaxSize {
		return fieldErr("size", n, "must be between 0 and {max_size} %d", c.MaxSize)
	}
	return nil
}

// ValidatePoolName allows names that are safe as a file name, a queue name and a tag.
func ValidatePoolName(name string) error {
	if name == "" || len(name) > 48 {
		return fieldErr("pool", name, "must be 1 to 48 characters of a-z, A-Z, 0-9, '-' or '_'")
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
		if !ok {
			return fieldErr("pool", name, "must be 1 to 48 characters of a-z, A-Z, 0-9, '-' or '_'")
		}
	}
	return nil
}
