package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/sandboxpool/sandboxpool/internal/gcfloor"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/local"
	"github.com/sandboxpool/sandboxpool/ui"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newRootCommand() *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:           "sandboxpool",
		Short:         "Keep a pool of warm sandboxes healthy and ready, and hand them out",
		Long:          "sandboxpool keeps a pool of warm sandboxes (local processes or Modal Sandboxes) at its target,\nshows it live in a terminal dashboard, and hands sandboxes out from the keyboard, an HTTP API\nor the command line. Every flag can also come from SANDBOXPOOL_<FLAG> (upper case, - as _).",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
	}
	root.SetFlagErrorFunc(flagErrorFunc)
	o.register(root.PersistentFlags())
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		o.tokenOnCmdLine = cmd.Flags().Changed("token") // before the env marks it changed
		if err := applyEnv(cmd.Flags()); err != nil {
			return usageError{err}
		}
		// applyEnv marks what the env set as changed too.
		o.ttlSet, o.useSet = cmd.Flags().Changed("ttl"), cmd.Flags().Changed("use-duration")
		o.noteWorkloadFlags(cmd.Flags())
		if err := o.resolveToken(); err != nil {
			return err
		}
		return nil
	}
	dashboard := func(cmd *cobra.Command, _ []string) error { return runDashboard(cmd, o) }
	root.RunE = dashboard
	dash := &cobra.Command{Use: "dashboard", Short: "The live dashboard (the default)", Args: cobra.NoArgs, RunE: dashboard}
	for _, c := range []*cobra.Command{root, dash} {
		c.Flags().BoolVar(&o.readonly, "readonly", false, "watch without touching: no claim, resize, terminate or refill, from keys or API")
		c.Flags().BoolVar(&o.cleanup, "cleanup", false, "terminate every sandbox of the pool on quit")
	}
	root.AddCommand(dash, runCommand(o), maintainCommand(o), checkCommand(o), claimCommand(o),
		terminateCommand(o), demoCommand(o), versionCommand())
	return root
}

// sizeSet reports whether --size came from the command line or the env.
func sizeSet(cmd *cobra.Command) bool {
	_, env := os.LookupEnv("SANDBOXPOOL_SIZE")
	return cmd.Flags().Changed("size") || env
}

func newLogger(o *options, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, usagef("--log-level %q: must be debug, info, warn or error", o.logLevel)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})), nil
}

func runDashboard(cmd *cobra.Command, o *options) error {
	cfg, err := o.config(sizeSet(cmd))
	if err != nil {
		return err
	}
	// Logs would garble the screen: the dashboard shows events itself.
	logger := slog.New(slog.DiscardHandler)
	// Subscribe before the controller starts: the first creations happen
	// before the screen is up, and their events belong on it.
	eng := &earlyEvents{}
	s, err := startControllerWith(cmd.Context(), o, cfg, logger, true, eng.subscribe)
	if err != nil {
		eng.cancelUnused()
		return err
	}
	uerr := ui.Run(cmd.Context(), eng, ui.Options{ReadOnly: o.readonly, APIAddr: s.apiAddr, APIStatus: s.APIStatus, Logs: s.logs(),
		// TERM=dumb or no terminal: the pool's state and events as plain lines.
		Plain: os.Getenv("TERM") == "dumb" || !isTerminal(os.Stdout)})
	eng.cancelUnused()
	s.stop(o.cleanup, logger)
	return uerr
}

// earlyEvents is the controller for the dashboard, whose first Subscribe
// gets a subscription taken before the controller started.
type earlyEvents struct {
	*pool.Controller
	mu     sync.Mutex
	ch     <-chan pool.Event
	cancel func()
}

func (e *earlyEvents) subscribe(c *pool.Controller) {
	e.Controller = c
	e.ch, e.cancel = c.Subscribe(512)
}

func (e *earlyEvents) Subscribe(buffer int) (<-chan pool.Event, func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ch != nil {
		ch, cancel := e.ch, e.cancel
		e.ch, e.cancel = nil, nil
		return ch, cancel
	}
	return e.Controller.Subscribe(buffer)
}

// cancelUnused drops the early subscription if the dashboard never took it.
func (e *earlyEvents) cancelUnused() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cancel != nil {
		e.cancel()
		e.ch, e.cancel = nil, nil
	}
}

func runCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "The controller without a screen: maintains the pool and serves the API, logs to stderr",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&o.cleanup, "cleanup", false, "terminate every sandbox of the pool on stop")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := o.config(sizeSet(cmd))
		if err != nil {
			return err
		}
		logger, err := newLogger(o, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		access := newLaterWriter(cmd.ErrOrStderr(), accessLogDelay)
		defer access.Flush()
		if o.accessLog, err = newLogger(o, access); err != nil {
			return err
		}
		// Bursts of claims allocate a few MiB over a live heap of a few:
		// GC cycles at least runGCFloor apart, not every ~4 MiB.
		defer gcfloor.Start(runGCFloor)()
		s, err := startControllerWith(cmd.Context(), o, cfg, logger, false, func(c *pool.Controller) { _ = logEvents(c, o, cmd.ErrOrStderr()) })
		if err != nil {
			return err
		}
		logger.Info("controller started", "backend", o.backend, "pool", cfg.Pool, "target", s.ctrl.Target(), "api", apiURL(s.apiAddr))
		select {
		case <-cmd.Context().Done():
		case <-s.done:
			// Serve ended on its own (a lease refused late): stop reads
			// done again, so it must be closed, not a value taken here.
			err = s.serveError(cfg.Pool)
		}
		logger.Info("stopping; sandboxes keep running unless --cleanup")
		s.stop(o.cleanup, logger)
		return err
	}
	return cmd
}

// accessLogDelay is how long run holds the API's request lines: a burst's
// lines go out in one write, at most this late.
const accessLogDelay = 10 * time.Millisecond

// runGCFloor is the heap `run` may grow to before a GC cycle while its live
// heap is small (internal/gcfloor).
const runGCFloor = 16 << 20

func apiURL(addr string) string {
	if addr == "" {
		return "off"
	}
	return "http://" + addr
}

func maintainCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "maintain",
		Short: "One maintenance pass; waits until the pool is at target (exit 0) or creations fail (exit 1)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(sizeSet(cmd))
			if err != nil {
				return err
			}
			p, err := openPool(cmd.Context(), o, cfg, slog.New(slog.DiscardHandler), true)
			if err != nil {
				return err
			}
			defer p.Close()
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			// As a controller when the pool has none; else the holder fills it and this waits.
			served := make(chan error, 1)
			go func() { served <- p.ctrl.Serve(ctx, true) }()
			out := cmd.OutOrStdout()
			tty := isTerminal(out)
			last := ""
			err = p.ctrl.WaitAtTarget(ctx, func(s pool.Snapshot) {
				line := fmt.Sprintf("ready %d of %d, creating %d, warming %d, failed %d",
					s.Counts[pool.StateReady], s.Target, s.Counts[pool.StateCreating], s.Counts[pool.StateWarming], s.Counts[pool.StateFailed])
				if line == last {
					return
				}
				last = line
				if tty {
					fmt.Fprintf(out, "\r\033[K%s", line)
				} else {
					fmt.Fprintln(out, line)
				}
			})
			if tty {
				fmt.Fprintln(out)
			}
			cancel()
			<-served
			if err != nil {
				return fmt.Errorf("pool %q not at target: %w", cfg.Pool, err)
			}
			fmt.Fprintf(out, "pool %q is at target: %d ready\n", cfg.Pool, p.ctrl.Target())
			return nil
		},
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}

func checkCommand(o *options) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "The pool now: each sandbox with its state, time left and health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(false)
			if err != nil {
				return err
			}
			var (
				view     httpapi.PoolView
				counters string
			)
			if o.api != "" {
				view, err = apiClient(o).Pool(cmd.Context())
			} else {
				view, counters, err = checkStore(cmd.Context(), o, cfg)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), view)
			}
			printPool(cmd.OutOrStdout(), view, counters)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the pool as JSON")
	cmd.Flags().StringVar(&o.api, "api", "", "ask a running controller's API (URL) instead of the store")
	return cmd
}

// checkStore reads the pool from its store; counters says why the warm-hit
// ratio and waste are unknown ("" when they are the running controller's).
// This process, just opened, has seen no claim: its own figures (0%) are
// never the pool's, so without a controller to ask they are unknown.
func checkStore(ctx context.Context, o *options, cfg pool.Config) (view httpapi.PoolView, counters string, _ error) {
	if err := mustExist(o, cfg.Pool); err != nil {
		return httpapi.PoolView{}, "", err
	}
	ro := *o
	ro.mustExist = true // Modal: looked up, never created
	ro.noCreate = true
	p, err := openPool(ctx, &ro, cfg, slog.New(slog.DiscardHandler), false)
	if err != nil {
		return httpapi.PoolView{}, "", err
	}
	defer p.Close()
	snap, err := p.ctrl.Refresh(ctx, true)
	if err != nil {
		return httpapi.PoolView{}, "", err
	}
	view = httpapi.NewPoolView(snap)
	counters = "no controller runs to count claims"
	if holder, err := p.ctrl.LeaseHolder(ctx); err == nil && !holder.IsZero() {
		view.MaintainedBy = &holder
		if counters = "its controller is gone (killed or crashed)"; !pool.HolderGone(holder) {
			counters = controllerCounters(ctx, o, holder, &view)
		}
	}
	return view, counters, nil
}

// controllerCounters takes the warm-hit ratio and waste from the running
// controller's API: it has seen every claimer of the pool since it started,
// while this process, just opened, has seen none (it would say 0%). It
// returns why they are unknown when the controller cannot be asked (no
// API, another host, a claim's backfill, no answer within a second) or
// answers with an error (a token it was not given: 401), "" once they are
// the controller's.
func controllerCounters(ctx context.Context, o *options, holder pool.LeaseRecord, view *httpapi.PoolView) string {
	host, _ := os.Hostname()
	switch {
	case holder.Role == pool.RoleBackfill:
		return "no controller runs to count claims (a claim's backfill holds the pool for a moment)"
	case holder.Host != "" && holder.Host != host:
		return fmt.Sprintf("the controller runs on %s (ask its API with --api)", holder.Host)
	case holder.API == "":
		return "the controller serves no API to ask (it runs with --listen '')"
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c := apiClient(o)
	c.BaseURL = "http://" + holder.API
	live, err := c.Pool(ctx)
	var ae *httpapi.APIError
	switch {
	case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
		return fmt.Sprintf("the controller's API at %s wants its token (--token-file or SANDBOXPOOL_TOKEN)", holder.API)
	case errors.As(err, &ae):
		return fmt.Sprintf("the controller's API at %s answered %d %s", holder.API, ae.Status, ae.Message)
	case err != nil:
		return fmt.Sprintf("the controller's API at %s did not answer (%s)", holder.API, oneLine(err.Error()))
	case live.Pool != view.Pool:
		return fmt.Sprintf("the API at %s serves pool %q, not this one", holder.API, live.Pool)
	}
	view.WarmHitRatio, view.WasteSeconds, view.Claims = live.WarmHitRatio, live.WasteSeconds, live.Claims
	view.Rollout = live.Rollout   // only the controller's passes roll the pool
	view.Autosize = live.Autosize // only the controller sizes the pool
	if live.Cost != nil {         // what the pool costs at the controller's price
		view.Cost = live.Cost
	}
	return ""
}

// mustExist makes a command that only reads or removes (check, terminate)
// say so when the pool was never made (a typo in --pool) instead of creating
// it: nothing is opened, started or written. A local pool is its store file
// (filestore: DIR/POOL.json) or, when the store was lost, its agent's files
// (its sandboxes may still run); a Modal pool's app and queue are looked up
// by the backend itself (modalx.Options.MustExist).
func mustExist(o *options, name string) error {
	if o.backend != "local" {
		return nil
	}
	_, err := os.Stat(filepath.Join(o.stateDir, name+".json"))
	if err == nil || !errors.Is(err, fs.ErrNotExist) || local.AgentRan(o.stateDir, name) {
		return nil // there, or unreadable: opening it says why
	}
	var names []string
	if matches, _ := filepath.Glob(filepath.Join(o.stateDir, "*.json")); len(matches) > 0 {
		for _, m := range matches {
			names = append(names, strings.TrimSuffix(filepath.Base(m), ".json"))
		}
	}
	known := "no pools there"
	if len(names) > 0 {
		known = "pools there: " + strings.Join(names, ", ")
	}
	return fmt.Errorf("pool %q does not exist in %s (%s); nothing was created", name, o.stateDir, known)
}

func apiClient(o *options) *httpapi.Client {
	base := o.api
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &httpapi.Client{BaseURL: strings.TrimRight(base, "/"), Token: o.token}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

// printPool prints the pool as check does; counters, when set, says why
// the warm-hit ratio and waste are unknown.
func printPool(w io.Writer, v httpapi.PoolView, counters string) {
	c := v.Counts
	fmt.Fprintf(w, "pool %s (%s): target %d, ready %d, creating %d, warming %d, unhealthy %d, expiring %d, claimed %d\n",
		v.Pool, v.Backend, v.Target, c.Ready, c.Creating, c.Warming, c.Unhealthy, c.Expiring, c.Claimed)
	if counters != "" {
		fmt.Fprintf(w, "warm-hit ratio and waste unknown: %s\n", counters)
	} else {
		ratio := fmt.Sprintf("%.0f%%", v.WarmHitRatio*100)
		switch n := v.Claims.Warm + v.Claims.Waited; {
		case n == 1:
			ratio += " of 1 claim"
		case n > 1:
			ratio += fmt.Sprintf(" of %d claims", n)
		case v.WarmHitRatio == 0: // 0 of none is no verdict
			ratio = fmt.Sprintf("-: no claim served yet (%d failed)", v.Claims.Failed)
		} // else a controller from before "claims" was in the JSON
		fmt.Fprintf(w, "warm-hit ratio %s, waste %.0f sandbox-seconds ready and never claimed\n", ratio, v.WasteSeconds)
	}
	if m := v.MaintainedBy; m != nil && pool.HolderGone(*m) {
		fmt.Fprintf(w, "maintained by %s, which is gone (killed or crashed): its lease lapses within seconds; a controller started now takes the pool over then\n", m)
	} else if m != nil {
		fmt.Fprintf(w, "maintained by %s\n", m)
	} else {
		fmt.Fprintln(w, "no controller maintains it (start one with sandboxpool run or the dashboard)")
	}
	if a := v.Autosize; a != nil && a.On {
		fmt.Fprintf(w, "autosize on: target %d (auto: %.1f claims/s x %.1f s), between %d and %d, falls no faster than %s\n",
			v.Target, a.ClaimsPerSecond, a.TimeToReadySeconds, a.MinSize, a.MaxSize, time.Duration(a.WindowSeconds*float64(time.Second)))
	} else if a != nil {
		fmt.Fprintf(w, "autosize off: %s\n", a.Off)
	}
	if r := v.Rollout; r != nil {
		fmt.Fprintf(w, "rolling replacement: %d pooled sandboxes still run the old workload (%s), %d of them being replaced\n",
			r.Old, r.From, r.Replacing)
	}
	if c := v.Cost; c != nil {
		fmt.Fprintf(w, "cost %.4g per hour (%d sandboxes at %.4g), idle %.4g (%.0f sandbox-seconds unclaimed)\n",
			c.CostPerHour, c.Sandboxes, c.PricePerHour, c.IdleCost, c.IdleSandboxSeconds)
	}
	if len(v.Sandboxes) == 0 {
		fmt.Fprintln(w, "no sandboxes")
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tLEFT\tHEALTH\tURL")
	for _, s := range v.Sandboxes {
		health := "-"
		if s.Health.CheckedAt != nil {
			if s.Health.OK {
				health = fmt.Sprintf("ok %d %.1fms", s.Health.Status, s.Health.LatencyMS)
			} else {
				health = s.Health.Error
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%ds\t%s\t%s\n", s.ID, s.State, s.SecondsLeft, health, s.URL)
	}
	tw.Flush()
}

func claimCommand(o *options) *cobra.Command {
	var (
		asJSON  bool
		noCheck bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "claim",
		Short: "Claim one good sandbox and print its URL (starts the backfill itself when no controller runs)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return usagef("--timeout %s: must be a positive duration such as 30s", timeout)
			}
			cfg, err := o.config(false)
			if err != nil {
				return err
			}
			answer := func(view httpapi.ClaimView) error {
				out := cmd.OutOrStdout()
				if asJSON {
					err = writeJSON(out, view)
				} else {
					_, err = fmt.Fprintln(out, view.URL)
				}
				if f, ok := out.(*os.File); ok && err == nil {
					// The answer is whole: a reader of the output (a
					// pipe, a script) has it now, before any backfill.
					err = f.Close()
				}
				return err
			}
			if o.api != "" {
				view, err := apiClient(o).Claim(cmd.Context(), !noCheck, timeout)
				if err != nil {
					return err
				}
				return answer(view)
			}
			return claimFromStore(cmd.Context(), o, cfg, !noCheck, timeout, answer)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the claim as JSON")
	cmd.Flags().BoolVar(&noCheck, "no-health-check", false, "hand out without checking the sandbox answers")
	cmd.Flags().DurationVar(&timeout, "timeout", pool.DefaultConfig().ClaimTimeout, "how long to wait for a good sandbox")
	cmd.Flags().StringVar(&o.api, "api", "", "claim through a running controller's API (URL) instead of the store")
	return cmd
}

// claimFromStore claims straight from the store and answers at once. When
// no controller holds the pool, this process then takes the lease for the
// moment and backfills itself, waiting for its creations so that none is
// left half made; the answer never waits for that.
func claimFromStore(ctx context.Context, o *options, cfg pool.Config, check bool, timeout time.Duration, answer func(httpapi.ClaimView) error) error {
	p, err := openPool(ctx, o, cfg, slog.New(slog.DiscardHandler), false)
	if err != nil {
		return err
	}
	defer p.Close()
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	// Serving from the start: a claim on an empty pool that no controller
	// maintains waits for this process's own creations.
	go func() { served <- p.ctrl.Serve(sctx, true) }()
	defer func() { cancel(); <-served }()
	got, err := p.ctrl.Claim(ctx, pool.ClaimOptions{CheckHealth: check, Timeout: timeout, By: "cli"})
	if errors.Is(err, pool.ErrTargetZero) {
		return fmt.Errorf("%w (sandboxpool maintain --size N, or the controller's PUT /v1/pool/size)", err)
	}
	if err != nil {
		return err
	}
	if err := answer(httpapi.NewClaimView(got, time.Now())); err != nil {
		return err
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Duration(pool.DefaultConfig().CreateTries)*cfg.HealthTimeout+30*time.Second)
	defer wcancel()
	go func() { // Serve ended (the store failed it): nothing left to wait for
		select {
		case err := <-served:
			served <- err // for the deferred receive
			wcancel()
		case <-wctx.Done():
		}
	}()
	_ = p.ctrl.WaitAtTarget(wctx, func(s pool.Snapshot) {
		if backfillDone(s) {
			wcancel()
		}
	})
	return nil
}

// backfillDone says whether a claim's process has no backfill left to do:
// a controller maintains the pool and this process's creations are over.
// Until Serve knows whether it holds the lease (no role yet, the lease
// free, or held by another claim's backfill, which this one takes over
// when it frees up) the backfill is this process's: the claim may have
// answered before the lease was asked for (a Modal lease is round trips).
func backfillDone(s pool.Snapshot) bool {
	if s.Role != pool.RoleViewer || s.Lease.IsZero() || s.Lease.Role == pool.RoleBackfill {
		return false
	}
	return s.Counts[pool.StateCreating]+s.Counts[pool.StateWarming] == 0
}

func terminateCommand(o *options) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "terminate ID... | --all",
		Short: "Terminate sandboxes by id, or tear the pool down with --all (target 0, every sandbox, claimed ones too)",
		RunE: func(cmd *cobra.Command, ids []string) error {
			if all == (len(ids) > 0) {
				return usagef("terminate: give sandbox ids or --all, not both or neither")
			}
			cfg, err := o.config(false)
			if err != nil {
				return err
			}
			if err := mustExist(o, cfg.Pool); err != nil {
				return err
			}
			o.noCreate = true
			p, err := openPool(cmd.Context(), o, cfg, slog.New(slog.DiscardHandler), false)
			if err != nil {
				return err
			}
			defer p.Close()
			out := cmd.OutOrStdout()
			if all {
				n, err := p.ctrl.TerminateAll(cmd.Context())
				if err != nil {
					return err
				}
				// Nothing of a torn-down pool keeps running: the local agent goes too.
				if a, ok := p.backend.(interface{ Shutdown(context.Context) error }); ok {
					if err := a.Shutdown(cmd.Context()); err != nil {
						return err
					}
				}
				fmt.Fprintf(out, "terminated %d sandboxes; pool %q target set to 0\n", n, cfg.Pool)
				return nil
			}
			var errs []error
			for _, id := range ids {
				if err := p.ctrl.Terminate(cmd.Context(), id); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(out, "terminated %s\n", id)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "tear the pool down: every sandbox it started, and target 0")
	return cmd
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "sandboxpool %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}
