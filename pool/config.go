package pool

import (
	"fmt"
	"math"
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
	// Autosize makes the target follow demand between MinSize and MaxSize,
	// falling no faster than AutosizeWindow (pool/autosize.go).
	Autosize       bool
	MinSize        int
	AutosizeWindow time.Duration
	// PricePerHour is one sandbox's hourly price; 0 shows no money.
	PricePerHour float64
}

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

// Validate checks every field; the error names the field (as its flag) and the allowed range.
func (c Config) Validate() error {
	if err := ValidatePoolName(c.Pool); err != nil {
		return err
	}
	if c.MaxSize < 0 {
		return fmt.Errorf("--max-size %d: must be 0 or more", c.MaxSize)
	}
	if err := c.ValidateSize(c.Size); err != nil {
		return err
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"--ttl", c.TTL}, {"--use-duration", c.UseDuration}, {"--health-timeout", c.HealthTimeout},
		{"--health-every", c.HealthEvery}, {"--maintain-every", c.MaintainEvery}, {"--timeout", c.ClaimTimeout},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s %s: must be a positive duration such as 30s or 5m", d.flag, d.v)
		}
	}
	if c.HealthFresh < 0 {
		return fmt.Errorf("--health-fresh %s: must be 0 or a positive duration", c.HealthFresh)
	}
	if c.UseDuration >= c.TTL {
		return fmt.Errorf("--use-duration %s: must be less than --ttl %s", c.UseDuration, c.TTL)
	}
	if c.MaxCreating < 1 || c.MaxCreating > 1000 {
		return fmt.Errorf("--max-creating %d: must be between 1 and 1000", c.MaxCreating)
	}
	if c.MinSize < 0 || c.Autosize && c.MinSize > c.MaxSize {
		return fmt.Errorf("--min-size %d: must be between 0 and --max-size %d", c.MinSize, c.MaxSize)
	}
	if c.AutosizeWindow <= 0 {
		return fmt.Errorf("--autosize-window %s: must be a positive duration such as 30s or 5m", c.AutosizeWindow)
	}
	if c.PricePerHour < 0 || math.IsNaN(c.PricePerHour) || math.IsInf(c.PricePerHour, 0) {
		return fmt.Errorf("--price-per-hour %v: must be a price of 0 or more, such as 0.05", c.PricePerHour)
	}
	if c.CreateTries < 1 {
		return fmt.Errorf("create tries %d: must be 1 or more", c.CreateTries)
	}
	return nil
}

// ValidateSize checks a target against the configured cap.
func (c Config) ValidateSize(n int) error {
	if n < 0 || n > c.MaxSize {
		return fmt.Errorf("--size %d: must be between 0 and --max-size %d", n, c.MaxSize)
	}
	return nil
}

// ValidatePoolName allows names that are safe as a file name, a queue name and a tag.
func ValidatePoolName(name string) error {
	if name == "" || len(name) > 48 {
		return fmt.Errorf("--pool %q: must be 1 to 48 characters of a-z, A-Z, 0-9, '-' or '_'", name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
		if !ok {
			return fmt.Errorf("--pool %q: must be 1 to 48 characters of a-z, A-Z, 0-9, '-' or '_'", name)
		}
	}
	return nil
}
