package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/later"
	"github.com/sandboxpool/sandboxpool/modalx"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/filestore"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/journal"
	"github.com/sandboxpool/sandboxpool/pool/local"
	"github.com/sandboxpool/sandboxpool/pool/metrics"
)

// opened is one pool's controller with what it holds.
type opened struct {
	ctrl    *pool.Controller
	backend pool.Backend
	closers []func()
	journal *journal.Journal // nil without a state dir
	follow  func()           // stops following the journal
}

// Close stops the controller (creations in flight terminate their
// sandboxes), then releases the backend and store.
func (p *opened) Close() {
	if p.follow != nil {
		p.follow()
	}
	p.ctrl.Close()
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
}

// openPool chooses the backend and store by name and builds the controller.
// A controller (run, dashboard, maintain) stores its timing for the pool;
// every other process takes the stored timing unless given its own.
func openPool(ctx context.Context, o *options, cfg pool.Config, logger *slog.Logger, controller bool) (*opened, error) {
	return openPoolAs(ctx, o, cfg, logger, controller, false)
}

// openPoolAs is openPool; an exclusive controller (run, demo: they refuse a
// pool maintained elsewhere) first makes sure no other controller holds the
// pool, and refuses before it stores its --size and timing: stored, they
// would retarget the running controller (it judges by the pool's timing).
func openPoolAs(ctx context.Context, o *options, cfg pool.Config, logger *slog.Logger, controller, exclusive bool) (*opened, error) {
	var (
		be      pool.Backend
		st      pool.Store
		closers []func()
	)
	switch o.backend {
	case "local":
		lb, err := local.New(local.Options{Pool: cfg.Pool, StateDir: o.stateDir, Cmd: o.cmd, Warmup: o.warmup, LogMax: int64(o.logMax), Prestart: controller, Prefault: controller})
		if err != nil {
			return nil, err
		}
		fs, err := filestore.Open(o.stateDir, cfg.Pool)
		if err != nil {
			return nil, err
		}
		be, st = lb, fs
		closers = append(closers, func() { _ = fs.Close() })
	case "modal":
		mb, ms, err := modalx.New(ctx, modalx.Options{Pool: cfg.Pool, App: o.modalApp, Image: o.image, Cmd: o.cmd, Port: o.port, Logger: logger, MustExist: o.mustExist})
		if err != nil {
			return nil, err
		}
		be, st = mb, ms
		closers = append(closers, func() { _ = ms.Close() }, func() { _ = mb.Close() })
	}
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	var holder pool.LeaseRecord // who maintains the pool, when this process would
	if leaser, ok := st.(pool.Leaser); ok && controller {
		// A claim's backfill hands the pool over, and a dead controller's
		// lease lapses (a restart after kill -9): Serve waits for either.
		if h, err := leaser.LeaseHolder(ctx); err == nil && h.Role != pool.RoleBackfill && !pool.HolderGone(h) {
			holder = h
		}
	}
	if exclusive && !holder.IsZero() {
		closeAll()
		return nil, heldError(cfg.Pool, holder)
	}
	stored, err := st.Load(ctx)
	if err != nil {
		closeAll()
		return nil, err
	}
	cfg, err = agreeOnTiming(ctx, o, cfg, st, stored, controller)
	if err == nil {
		err = agreeOnWorkload(ctx, o, cfg.Pool, be, st, stored, controller, holder, logger)
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	role := pool.RoleController
	if !controller {
		role = pool.RoleBackfill // only `claim` serves without being a controller command
	}
	ctrl, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st, Role: role, Command: commandLine(os.Args), Logger: logger})
	if err != nil {
		closeAll()
		return nil, err
	}
	p := &opened{ctrl: ctrl, backend: be, closers: closers}
	p.openJournal(o.stateDir, cfg.Pool)
	if controller && cfg.SizeSet && !cfg.Autosize {
		// --size given to run/dashboard/maintain sets the stored target
		// (with --autosize the target is the rule's: --size is ignored).
		if err := ctrl.Resize(ctx, cfg.Size); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// logs is the backend's log reader for the dashboard's l view, nil when
// the backend keeps no logs.
func (p *opened) logs() pool.LogReader {
	if lr, ok := p.backend.(pool.LogReader); ok {
		return lr
	}
	return nil
}

// openJournal makes every event of this process go to the pool's journal,
// which the other processes of the pool on this machine follow. Without it
// the pool works the same; viewers just see less.
func (p *opened) openJournal(dir, poolName string) {
	if dir == "" {
		return
	}
	ctrl := p.ctrl
	j, err := journal.Open(dir, poolName, journal.Options{Keep: func(e pool.Event) bool {
		if e.Remote {
			return false // seen in the store, caused elsewhere: its own process says it
		}
		switch e.Kind {
		case pool.EventStoreChanged, pool.EventMaintained, pool.EventWorkload, pool.EventStoreLost, pool.EventBackend:
			return false // every process sees these itself
		case pool.EventHealthFailed, pool.EventHealthRecovery, pool.EventError:
			// Viewers probe and read the store too: only the controller's
			// view of health and errors is the pool's.
			return ctrl.Role() == pool.RoleController
		}
		return true
	}})
	if err != nil {
		return
	}
	p.journal = j
	ctrl.Observe(j.Append)
	// Closers run after the controller closed: its last events are queued.
	p.closers = append([]func(){func() { _ = j.Close() }}, p.closers...)
}

// followJournal replays, as this controller's own events, what the other
// processes of the pool append to the journal (claims from the CLI or
// another dashboard, the controller's life for a viewer). Close stops it.
func (p *opened) followJournal() {
	if p.journal == nil || p.follow != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.journal.Follow(ctx, func(o journal.Origin, e pool.Event) {
			if e.Message != "" {
				e.Message += " · " + o.Label()
			}
			p.ctrl.Replay(e)
		})
	}()
	p.follow = func() { cancel(); <-done }
}

// commandLine is this process's command line for the lease record (who
// maintains the pool), without secrets: a --token value is never shown.
func commandLine(args []string) string {
	out := []string{"sandboxpool"}
	hide := false
	for _, a := range args[1:] {
		switch {
		case hide:
			a, hide = "***", false
		case a == "--token":
			hide = true
		case strings.HasPrefix(a, "--token="):
			a = "--token=***"
		}
		if a == "" || strings.ContainsAny(a, " \t\n'\"") {
			a = strconv.Quote(a)
		}
		out = append(out, a)
	}
	line := strings.Join(out, " ")
	if r := []rune(line); len(r) > 200 {
		line = string(r[:199]) + "…"
	}
	return line
}

func isAddrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }

// agreeOnTiming makes every process of a pool judge "good" alike: what
// --ttl and --use-duration say when given, else what the pool stored.
func agreeOnTiming(ctx context.Context, o *options, cfg pool.Config, st pool.Store, stored pool.Stored, controller bool) (pool.Config, error) {
	if stored.TTL > 0 {
		if !o.ttlSet {
			cfg.TTL = stored.TTL
		}
		if !o.useSet {
			cfg.UseDuration = stored.UseDuration
		}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usageError{fmt.Errorf("%w (the pool stores ttl %s, use-duration %s)", flagError(err), stored.TTL, stored.UseDuration)}
	}
	if controller && (stored.TTL != cfg.TTL || stored.UseDuration != cfg.UseDuration) {
		if err := st.SetTiming(ctx, cfg.TTL, cfg.UseDuration); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// agreeOnWorkload makes every process that creates sandboxes for a pool
// create the same ones (SPEC: one pool, one --cmd): the pool's stored
// workload, whatever this process's flags. A controller command (run,
// dashboard, maintain) that nobody else maintains the pool for stores its
// own when it was given one (--cmd, --warmup; on Modal --image, --cmd,
// --port), or when the pool has none stored yet. Given one that differs
// while another controller maintains the pool, or to a claim (which may
// backfill), the process is refused: it would not get what it asked for.
// holder is the controller that maintains the pool (zero: none, or this
// process is no controller command).
func agreeOnWorkload(ctx context.Context, o *options, poolName string, be pool.Backend, st pool.Store, stored pool.Stored, controller bool, holder pool.LeaseRecord, logger *slog.Logger) error {
	wb, ok := be.(pool.WorkloadBackend)
	if !ok {
		return nil
	}
	own, given := wb.Workload(), len(o.workloadFlags) > 0
	switch {
	case stored.Workload == own:
		return nil
	case controller && holder.IsZero() && (given || stored.Workload == ""):
		if err := st.SetWorkload(ctx, own); err != nil {
			return err
		}
		if stored.Workload != "" {
			logger.Warn("the pool's workload changes: new sandboxes run "+wb.DescribeWorkload(own)+
				"; the pooled ones made before, which run "+wb.DescribeWorkload(stored.Workload)+", are replaced a few at a time, each once its replacement is ready (claimed ones run on)",
				"was", wb.DescribeWorkload(stored.Workload))
		}
		return nil
	case stored.Workload == "":
		return nil // none stored (a pool of an earlier build): this process's own
	case given && !o.noCreate && !o.readonly:
		flags := strings.Join(o.workloadFlags, ", ")
		by, change := "as stored by its controller", "give "+flags+" to run or the dashboard"
		if !holder.IsZero() {
			by, change = "maintained by "+holder.String(), "stop that controller first"
		}
		return usagef("%s given: pool %q runs %s (%s), not %s; leave %s out to use the pool's, or %s to change it",
			flags, poolName, wb.DescribeWorkload(stored.Workload), by, wb.DescribeWorkload(own), flags, change)
	}
	if err := wb.UseWorkload(stored.Workload); err != nil {
		return fmt.Errorf("pool %q: %w", poolName, err)
	}
	return nil
}

// serving is a controller with its loops and API running.
type serving struct {
	*opened
	// apiAddr is the API as it was once startController returned: the
	// bound address, or why it is off. APIStatus is the live one.
	apiAddr string
	apiDone chan struct{} // closed when the API has stopped (nil: no API)
	done    chan struct{} // closed when Serve returned
	served  error         // Serve's result, once done is closed
	cancel  context.CancelFunc

	apiMu     sync.Mutex
	apiStatus string // guarded by apiMu
}

// apiRetryEvery is how often a dashboard whose API port was in use tries
// to bind it again (the process holding it may quit, or a viewer take over).
const apiRetryEvery = time.Second

// APIStatus is the API now, for the dashboard's header: the address it
// listens on, "" when disabled, or "off (why; retrying)" until it binds.
func (s *serving) APIStatus() string {
	s.apiMu.Lock()
	defer s.apiMu.Unlock()
	return s.apiStatus
}

func (s *serving) setAPIStatus(v string) {
	s.apiMu.Lock()
	s.apiStatus = v
	s.apiMu.Unlock()
}

// startController runs the controller loops and the HTTP API, as `run` and
// the dashboard do. With allowViewer, a pool maintained elsewhere is watched.
func startController(ctx context.Context, o *options, cfg pool.Config, logger *slog.Logger, allowViewer bool) (*serving, error) {
	return startControllerWith(ctx, o, cfg, logger, allowViewer, nil)
}

// startControllerWith calls observe on the controller before anything runs,
// so that no event is missed.
func startControllerWith(ctx context.Context, o *options, cfg pool.Config, logger *slog.Logger, allowViewer bool, observe func(*pool.Controller)) (*serving, error) {
	if err := httpapi.CheckListen(o.listen, o.token); err != nil {
		return nil, usageError{err}
	}
	if o.readonly { // read-only changes nothing: --size is not the pool's target
		cfg.Size, cfg.SizeSet = min(pool.DefaultConfig().Size, cfg.MaxSize), false
	}
	p, err := openPoolAs(ctx, o, cfg, logger, !o.readonly, !allowViewer) // read-only stores nothing
	if err != nil {
		return nil, err
	}
	if observe != nil {
		observe(p.ctrl)
	}
	p.followJournal()
	ctx, cancel := context.WithCancel(ctx)
	s := &serving{opened: p, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.done)
		if o.readonly {
			// Read-only never maintains: it watches, whoever holds the lease.
			s.served = p.ctrl.Watch(ctx)
			return
		}
		s.served = p.ctrl.Serve(ctx, allowViewer)
	}()
	// A refused lease shows at once; give it a moment before serving the API.
	select {
	case <-s.done:
		cancel()
		p.Close()
		return nil, s.serveError(cfg.Pool)
	case <-time.After(150 * time.Millisecond):
	}
	if o.listen != "" {
		m := metrics.New(p.ctrl)
		apiLog := logger
		if o.accessLog != nil {
			apiLog = o.accessLog
		}
		api := httpapi.New(p.ctrl, httpapi.Options{Token: o.token, ReadOnly: o.readonly, Logger: apiLog, Metrics: m})
		addr, errc, err := httpapi.Serve(ctx, o.listen, api)
		if err != nil && allowViewer && isAddrInUse(err) {
			// A second dashboard on a pool: the first one serves the API
			// until it quits; then this one binds it.
			s.apiAddr = fmt.Sprintf("off (%s in use; retrying every %s)", o.listen, apiRetryEvery)
			s.setAPIStatus(s.apiAddr)
			logger.Warn("API off until its address is free", "listen", o.listen, "err", err, "retry", apiRetryEvery)
			s.apiDone = make(chan struct{})
			go s.bindLater(ctx, o, api, logger)
			return s, nil
		}
		if err != nil {
			cancel()
			<-s.done
			p.Close()
			var oe *net.OpError
			if errors.As(err, &oe) {
				return nil, fmt.Errorf("%w (is another sandboxpool serving there? use --listen to pick another address, or --listen '' to disable the API)", err)
			}
			return nil, err
		}
		s.apiAddr = addr
		s.setAPIStatus(addr)
		p.ctrl.SetAPI(addr)
		logAPI(logger, o, addr)
		s.apiDone = make(chan struct{})
		go func() {
			defer close(s.apiDone)
			s.apiStopped(<-errc, logger)
		}()
	}
	return s, nil
}

// bindLater tries to bind the API every apiRetryEvery until it does (then
// serves it until ctx ends) or ctx ends. Only a port in use is waited out.
func (s *serving) bindLater(ctx context.Context, o *options, api *httpapi.API, logger *slog.Logger) {
	defer close(s.apiDone)
	t := time.NewTicker(apiRetryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		addr, errc, err := httpapi.Serve(ctx, o.listen, api)
		if err != nil {
			if isAddrInUse(err) {
				continue
			}
			s.setAPIStatus("off (" + oneLine(err.Error()) + ")")
			logger.Error("API off: cannot listen", "listen", o.listen, "err", err)
			return
		}
		s.setAPIStatus(addr)
		s.ctrl.SetAPI(addr)
		logger.Info("API address free now: serving it", "listen", o.listen)
		logAPI(logger, o, addr)
		s.apiStopped(<-errc, logger)
		return
	}
}

// apiStopped records why a bound API stopped: nil when asked to.
func (s *serving) apiStopped(err error, logger *slog.Logger) {
	if err == nil {
		return
	}
	s.ctrl.SetAPI("")
	s.setAPIStatus("off (" + oneLine(err.Error()) + ")")
	logger.Error("API stopped", "err", err)
}

// logAPI says where the API listens, as bound, and who it answers.
func logAPI(logger *slog.Logger, o *options, addr string) {
	access := "bearer token"
	if o.token == "" {
		access = fmt.Sprintf("uid %d only (the user running this; others get 403)", os.Getuid())
	}
	logger.Info("API listening", "address", httpapi.DescribeAddr(o.listen, addr), "access", access)
	if o.tokenOnCmdLine {
		logger.Warn("--token on the command line is visible to every local user (ps); use --token-file or SANDBOXPOOL_TOKEN")
	}
}

// serveError says why Serve returned on its own (once done is closed): a
// refused lease names the holder, whenever it came (on Modal the lease takes
// a few round trips, often longer than the moment startController waits).
func (s *serving) serveError(poolName string) error {
	err := s.served
	var held *pool.LeaseHeldError
	if errors.As(err, &held) {
		return heldError(poolName, held.Holder)
	}
	if err == nil {
		err = errors.New("controller stopped")
	}
	return err
}

// heldError is a controller's refusal of a pool that holder maintains.
func heldError(poolName string, holder pool.LeaseRecord) error {
	return fmt.Errorf("pool %q is already maintained by %s; stop it first, or use the dashboard to watch it", poolName, cmp.Or(holder.String(), "another process (its lease record is not written yet)"))
}

// stop ends the loops and the API and closes the pool within about 2 s,
// terminating every sandbox first with cleanup.
func (s *serving) stop(cleanup bool, logger *slog.Logger) {
	s.cancel()
	if s.apiDone != nil {
		<-s.apiDone
	}
	<-s.done
	if cleanup {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		n, err := s.ctrl.Cleanup(ctx)
		cancel()
		if err != nil {
			logger.Error("cleanup", "err", err)
		} else {
			logger.Info("terminated every sandbox of the pool", "count", n)
		}
	}
	s.Close()
}

// runLogs says whether run's log has a line for e (at its level): every
// event but a pass's end and a store poll's change; a creation's start is
// debug.
func runLogs(e pool.Event) bool {
	return e.Kind == pool.EventCreating || !e.Routine()
}

// logEvents writes the controller's events to w at o's log level, as `run`
// shows them: each batch of events (a burst's, gathered by the controller)
// in one write, not a write each.
func logEvents(ctrl *pool.Controller, o *options, w io.Writer) error {
	lines := &batchWriter{w: w}
	logger, err := newLogger(o, lines)
	if err != nil {
		return err
	}
	level := func(e pool.Event) slog.Level {
		switch e.Kind {
		case pool.EventError, pool.EventCreateFailed, pool.EventBackoff, pool.EventStoreLost, pool.EventBackend:
			return slog.LevelWarn
		case pool.EventCreating, pool.EventHealthRecovery:
			return slog.LevelDebug
		}
		return slog.LevelInfo
	}
	// What the logger would drop is turned down before it is queued.
	keep := func(e pool.Event) bool {
		return runLogs(e) && logger.Enabled(context.Background(), level(e))
	}
	ctrl.ObserveAsyncBatch(keep, func(e pool.Event) { // a slow log never slows a claim
		// LogAttrs: the line Log's key-value pairs wrote, without boxing them.
		if e.SandboxID == "" {
			logger.LogAttrs(context.Background(), level(e), e.Message, slog.String("event", string(e.Kind)))
			return
		}
		logger.LogAttrs(context.Background(), level(e), e.Message, slog.String("event", string(e.Kind)), slog.String("sandbox", e.SandboxID))
	}, lines.flush)
	return nil
}

// laterWriter holds what is written for up to its delay, then writes it at
// once: the API's lines of a burst's requests, formatted together after
// their answers (httpapi's requestLog), go out in one write, not a write
// each. Flush writes what is held at once (before the process ends).
type laterWriter struct {
	w     io.Writer
	mu    sync.Mutex // guards buf and later
	buf   []byte
	later *later.Flush // writes what buf holds
}

// laterMax is what laterWriter holds at most: more is written at once.
const laterMax = 64 << 10

func newLaterWriter(w io.Writer, delay time.Duration) *laterWriter {
	l := &laterWriter{w: w}
	l.later = later.New(delay, l.Flush)
	return l
}

func (l *laterWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) >= laterMax {
		l.flushLocked()
	} else {
		l.later.Arm()
	}
	return len(p), nil
}

// Flush writes what is held now.
func (l *laterWriter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *laterWriter) flushLocked() {
	l.later.Ran()
	if len(l.buf) == 0 {
		return
	}
	_, _ = l.w.Write(l.buf)
	if cap(l.buf) > laterMax {
		l.buf = nil // a rare flood does not keep its memory
	} else {
		l.buf = l.buf[:0]
	}
}

// batchWriter holds what is written until flush, which writes it at once.
type batchWriter struct {
	w   io.Writer
	mu  sync.Mutex
	buf []byte
}

func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.buf = append(b.buf, p...)
	b.mu.Unlock()
	return len(p), nil
}

func (b *batchWriter) flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) > 0 {
		_, _ = b.w.Write(b.buf)
		if cap(b.buf) > 64<<10 {
			b.buf = nil // a rare flood does not keep its memory
		} else {
			b.buf = b.buf[:0]
		}
	}
}
