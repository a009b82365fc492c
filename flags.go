package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// options holds every flag of SPEC's table; defaults come from pool.DefaultConfig.
type options struct {
	backend       string
	pool          string
	size          int
	maxSize       int
	ttl           time.Duration
	useDuration   time.Duration
	healthTimeout time.Duration
	healthEvery   time.Duration
	healthFresh   time.Duration
	maintainEvery time.Duration
	maxCreating   int
	autosize      bool
	minSize       int
	autoWindow    time.Duration
	pricePerHour  float64
	stateDir      string
	listen        string
	token         string
	tokenFile     string
	// tokenOnCmdLine: --token was given as a flag, visible in ps.
	tokenOnCmdLine bool
	cmd            string
	warmup         time.Duration
	logMax         byteSize
	port           int
	image          string
	modalApp       string
	cleanup        bool
	readonly       bool
	api            string
	logLevel       string
	// ttlSet and useSet say --ttl and --use-duration were given (flag or env).
	ttlSet, useSet bool
	// workloadFlags are the flags given (flag or env) that say what a
	// sandbox runs: --cmd, --warmup; on Modal --image, --cmd, --port.
	workloadFlags []string
	// noCreate: the command never creates sandboxes (check, terminate), so
	// its workload flags do not matter.
	noCreate bool
	// mustExist: a read-only command (check) creates nothing of a pool never
	// made (on Modal: no app, no queue).
	mustExist bool
	// accessLog, when set, gets the API's lines (one per request) instead
	// of the command's logger: run's writes them a burst at a time.
	accessLog *slog.Logger
}

// noteWorkloadFlags records which flags that say what a sandbox runs were
// given, on the command line or in the env (fs after applyEnv).
func (o *options) noteWorkloadFlags(fs *pflag.FlagSet) {
	names := []string{"cmd", "warmup"}
	if o.backend == "modal" {
		names = []string{"image", "cmd", "port"}
	}
	o.workloadFlags = nil
	for _, n := range names {
		if fs.Changed(n) {
			o.workloadFlags = append(o.workloadFlags, "--"+n)
		}
	}
}

func (o *options) register(fs *pflag.FlagSet) {
	d := pool.DefaultConfig()
	fs.StringVar(&o.backend, "backend", "local", "where sandboxes run: local or modal")
	fs.StringVar(&o.pool, "pool", d.Pool, "pool name: store file, queue name, tag")
	fs.IntVar(&o.size, "size", d.Size, "target number of ready sandboxes, 0..--max-size (sets the stored target for run, dashboard, maintain)")
	fs.IntVar(&o.maxSize, "max-size", d.MaxSize, "cap on the target")
	fs.DurationVar(&o.ttl, "ttl", d.TTL, "sandbox lifetime (each new sandbox's is up to 10% shorter, so that a pool's sandboxes do not all expire at once)")
	fs.DurationVar(&o.useDuration, "use-duration", d.UseDuration, "time a claimer needs; must be < --ttl")
	fs.DurationVar(&o.healthTimeout, "health-timeout", d.HealthTimeout, "one health check, and the first-start wait")
	fs.DurationVar(&o.healthEvery, "health-every", d.HealthEvery, "background health probe interval")
	fs.DurationVar(&o.healthFresh, "health-fresh", d.HealthFresh, "a claim skips its own probe when the last OK probe is younger; 0 always probes")
	fs.DurationVar(&o.maintainEvery, "maintain-every", d.MaintainEvery, "maintenance interval")
	fs.IntVar(&o.maxCreating, "max-creating", d.MaxCreating, "parallel creations")
	fs.BoolVar(&o.autosize, "autosize", false, "the target follows demand (claim rate x time-to-ready p95, with headroom) between --min-size and --max-size; a manual resize turns it off")
	fs.IntVar(&o.minSize, "min-size", d.MinSize, "floor of an autosized target")
	fs.DurationVar(&o.autoWindow, "autosize-window", d.AutosizeWindow, "an autosized target falls no faster than this (it rises at once)")
	fs.Float64Var(&o.pricePerHour, "price-per-hour", 0, "a sandbox's hourly price: idle cost and cost per hour shown in money (default unset)")
	fs.StringVar(&o.stateDir, "state-dir", defaultStateDir(), "directory of the local store files")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7780", "HTTP API address of dashboard and run; empty disables")
	fs.StringVar(&o.token, "token", "", "bearer token for the API (16+ characters, no whitespace); required unless listening on loopback only; prefer --token-file or SANDBOXPOOL_TOKEN, a flag shows in ps")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the API's bearer token (one line)")
	fs.StringVar(&o.cmd, "cmd", "", "sandbox command ({port} replaced, PORT set); local default: the built-in directory server, modal default: python -m http.server 8080")
	fs.DurationVar(&o.warmup, "warmup", 0, "local: the built-in server waits this long before listening")
	o.logMax = local.DefaultLogMax
	fs.Var(&o.logMax, "log-max", "local: cap on each sandbox's log, the last part kept (the pool's logs together: 64x that)")
	fs.IntVar(&o.port, "port", 8080, "modal: the sandbox port exposed as an encrypted tunnel")
	fs.StringVar(&o.image, "image", "python:3.11-slim", "modal: registry image")
	fs.StringVar(&o.modalApp, "modal-app", "example-sandbox-pool-sandboxes", "modal: the App that holds the sandboxes")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level of run: debug, info, warn or error")
}

// applyEnv fills every flag not given on the command line from
// SANDBOXPOOL_<FLAG> (a flag beats the env). A bad value names the variable.
func applyEnv(fs *pflag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" {
			return
		}
		name := "SANDBOXPOOL_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %s", name, v, allowedFor(f)))
		}
	})
	return errors.Join(errs...)
}

// allowedFor says what a flag accepts, for one-line errors.
func allowedFor(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "duration":
		return "must be a duration such as 30s, 5m or 1h"
	case "int":
		return "must be a whole number"
	case "bool":
		return "must be true or false"
	case "float64":
		return "must be a number such as 0.05"
	case "size":
		return "must be a size such as 10MB, 512KB or 1GB"
	}
	return "bad value"
}

// flagErrorFunc turns pflag's parse errors into one line naming the flag.
// The flag and the value come from pflag's typed error, not from its message,
// which already quotes the value (so a value with a quote or a backslash in
// it would be cut short or quoted twice).
func flagErrorFunc(cmd *cobra.Command, err error) error {
	var bad *pflag.InvalidValueError
	if errors.As(err, &bad) && bad.GetFlag() != nil {
		return usagef("--%s %q: %s", bad.GetFlag().Name, bad.GetValue(), allowedFor(bad.GetFlag()))
	}
	return usageError{err}
}

func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "flag needs an argument", "accepts ", "requires at least", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "sandboxpool")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "sandboxpool")
	}
	return filepath.Join(os.TempDir(), "sandboxpool")
}

// resolveToken reads --token-file and checks the token (SPEC: at least 16
// characters, no whitespace); the token itself never appears in an error.
func (o *options) resolveToken() error {
	if o.tokenFile != "" {
		if o.token != "" {
			return usagef("--token-file %s: give the token once, either --token-file or --token/SANDBOXPOOL_TOKEN", o.tokenFile)
		}
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return usagef("--token-file %s: %v", o.tokenFile, errors.Unwrap(err))
		}
		tok := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if err := httpapi.ValidateToken(tok); err != nil {
			return usagef("--token-file %s: %s", o.tokenFile, strings.TrimPrefix(err.Error(), "--token: "))
		}
		o.token = tok
		return nil
	}
	if o.token == "" {
		return nil
	}
	if err := httpapi.ValidateToken(o.token); err != nil {
		if !o.tokenOnCmdLine {
			return usagef("SANDBOXPOOL_TOKEN: %s", strings.TrimPrefix(err.Error(), "--token: "))
		}
		return usageError{err}
	}
	return nil
}

// config validates the flags into the engine's Config.
func (o *options) config(sizeSet bool) (pool.Config, error) {
	c := pool.DefaultConfig()
	c.Pool, c.Size, c.SizeSet, c.MaxSize = o.pool, o.size, sizeSet, o.maxSize
	c.TTL, c.UseDuration = o.ttl, o.useDuration
	c.HealthTimeout, c.HealthEvery, c.MaintainEvery = o.healthTimeout, o.healthEvery, o.maintainEvery
	c.MaxCreating = o.maxCreating
	c.TTLJitter = pool.DefaultTTLJitter
	c.Autosize, c.MinSize, c.AutosizeWindow, c.PricePerHour = o.autosize, o.minSize, o.autoWindow, o.pricePerHour
	c.HealthFresh = o.healthFresh
	if o.backend != "local" && o.backend != "modal" {
		return c, usagef("--backend %q: must be local or modal", o.backend)
	}
	if o.warmup < 0 {
		return c, usagef("--warmup %s: must be 0 or a positive duration", o.warmup)
	}
	if o.port < 1 || o.port > 65535 {
		return c, usagef("--port %d: must be between 1 and 65535", o.port)
	}
	if err := c.Validate(); err != nil {
		return c, usageError{flagError(err)}
	}
	return c, nil
}

// flagError says an engine's *pool.FieldError with the flags that set the
// fields ("use_duration" is --use-duration); other errors pass unchanged.
func flagError(err error) error {
	var fe *pool.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	return errors.New(fe.Render(func(field string) string {
		if field == "claim_timeout" {
			return "--timeout"
		}
		return "--" + strings.ReplaceAll(field, "_", "-")
	}))
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// byteSize is a flag of bytes written as 10MB, 512KB, 1GB (powers of 1024;
// KiB, MiB and GiB too) or a plain number.
type byteSize int64

func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range []struct {
		s string
		v int64
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return strconv.FormatInt(n/u.v, 10) + u.s
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(s string) error {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		s string
		v int64
	}{{"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(t, u.s); ok {
			t, mult = strings.TrimSpace(rest), u.v
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 1 || n > (1<<62)/mult {
		return fmt.Errorf("bad size %q", s)
	}
	*b = byteSize(n * mult)
	return nil
}

func (b *byteSize) Type() string { return "size" }
