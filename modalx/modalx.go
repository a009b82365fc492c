package modalx

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	modal "github.com/modal-labs/libmodal/modal-go"
	pb "github.com/modal-labs/libmodal/modal-go/proto/modal_proto"
	"github.com/pelletier/go-toml/v2"
	"github.com/sandboxpool/sandboxpool/pool"
	"google.golang.org/grpc"
)

// Defaults, as SPEC "Backends: modal" says.
const (
	DefaultApp   = "example-sandbox-pool-sandboxes"
	DefaultImage = "python:3.11-slim"
	DefaultCmd   = "python -m http.server {port}"
	DefaultPort  = 8080
	// DefaultLeaseHeartbeat is how often the controller lease is renewed; it
	// goes stale (and may be taken over) after 3 missed heartbeats.
	DefaultLeaseHeartbeat = 5 * time.Second
	// LeaseHeartbeatEnv overrides DefaultLeaseHeartbeat (a Go duration).
	LeaseHeartbeatEnv = "SANDBOXPOOL_MODAL_LEASE_HEARTBEAT"
	// DefaultLossSettle: a claim whose bid won just before Modal cleared the
	// queue writes its tags a few round trips later (bid, claim record, tags);
	// a rebuild in between reads the sandbox as nobody's. Three seconds
	// outlast those round trips at 250 ms each.
	DefaultLossSettle = 3 * time.Second
)

// Tags set on every sandbox: the pool (what List filters by) and enough to
// rebuild the store's references if the Queue is lost.
const (
	TagPool      = "sandboxpool"
	TagURL       = "sandboxpool-url"
	TagCreatedAt = "sandboxpool-created-at"
	TagExpiresAt = "sandboxpool-expires-at"
	TagClaimedBy = "sandboxpool-claimed-by"
	TagClaimedAt = "sandboxpool-claimed-at"
	// TagReserved marks a sandbox the lease holder reserved (reserve.go):
	// a queue rebuilt from tags keeps it out of the claimers' reach.
	TagReserved = "sandboxpool-reserved"
	// TagWorkload is a key of the workload it runs (workloadKey): a
	// controller of another workload replaces it (pool's rollout).
	TagWorkload = "sandboxpool-workload"
)

// Options configure the Modal backend and store of one pool.
type Options struct {
	Pool  string // required: tag value and queue name sandboxpool-<Pool>
	App   string // Modal App, created if missing (DefaultApp)
	Image string // registry image (DefaultImage)
	// Cmd is the sandbox's command line; {port} is replaced by Port. It is
	// split on spaces, or run by `sh -c` when it holds shell syntax. (DefaultCmd)
	Cmd  string
	Port int // container port exposed as an encrypted tunnel (DefaultPort)
	// Environment is the Modal environment ("" = the profile's).
	Environment string
	// LeaseHeartbeat is the controller lease renewal interval (DefaultLeaseHeartbeat).
	LeaseHeartbeat time.Duration
	// LossSettle is how long after a rebuild of a lost queue the sandboxes
	// whose tags said nobody's are pooled (DefaultLossSettle).
	LossSettle time.Duration
	// TunnelTimeout bounds the wait for a new sandbox's tunnel (default 60s).
	TunnelTimeout time.Duration
	// Logger receives the SDK's logs; nil discards them (they would garble a TUI).
	Logger *slog.Logger
	// Clock is every time read and wait of the package; nil: the real one.
	Clock clockwork.Clock
	// MustExist (read-only commands such as check): the App and the pool's
	// Queue are looked up, never created; New fails with ErrPoolNotFound
	// when either is missing, having created nothing.
	MustExist bool
}

// ErrPoolNotFound is New's error, with Options.MustExist, for a pool never made.
var ErrPoolNotFound = errors.New("pool does not exist")

// core is what a pool's Backend and Store share: one SDK client, the App,
// and what List learnt from tags.
type core struct {
	opts   Options
	client *modal.Client
	app    *modal.App

	// life ends when the last user releases the client: background work
	// (tags) stops with it.
	life     context.Context
	lifeStop context.CancelFunc

	mu      sync.Mutex
	users   int
	known   map[string]tagged         // by sandbox id, from tags read or written
	handles map[string]*modal.Sandbox // SDK handles of Create and List: no lookup RPC per use
	fresh   map[string]bool           // created here and not yet put in the store

	conn *grpc.ClientConn     // the SDK's connection (nil if not seen)
	raw  pb.ModalClientClient // nil if the SDK's connection was not seen
	list listCache
	logs map[string]*sandboxLog // what ReadLog read, by sandbox

	// Claim tags written in the background (reserve.go).
	tagQueue   []tagged
	tagDone    map[string]bool
	tagRunning bool
	closing    bool
	tagWG      sync.WaitGroup

	clk      clockwork.Clock  // every time read and wait of the package (Options.Clock)
	leaseNow func() time.Time // the lease's clock alone, when a test moves it; nil: clk

	// What Create starts (guarded by workMu): the options' until the
	// pool's stored workload is used (UseWorkload); image is imageOf
	// built, reused by every Create. buildMu: one build at a time, never
	// held with workMu.
	workMu  sync.Mutex
	work    workload
	cmd     []string
	image   *modal.Image
	imageOf string
	buildMu sync.Mutex
}

// tagged is one sandbox as its tags describe it.
type tagged struct {
	ref       pool.Ref
	claimedBy string
	claimedAt time.Time
	reserved  bool // by a lease holder, not claimed yet
}

// New connects to Modal (credentials exactly as the SDK reads them:
// MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, ~/.modal.toml, MODAL_SERVER_URL), looks
// up or creates the App and the pool's Queue, and returns the pool's Backend
// and Store. They share one client: each one's Close releases its share and
// the client closes with the last.
func New(ctx context.Context, opts Options) (*Backend, *Store, error) {
	if opts.Pool == "" {
		return nil, nil, errors.New("modal: a pool name is required")
	}
	if opts.App == "" {
		opts.App = DefaultApp
	}
	if opts.Image == "" {
		opts.Image = DefaultImage
	}
	if opts.Port == 0 {
		opts.Port = DefaultPort
	}
	if opts.Port < 1 || opts.Port > 65535 {
		return nil, nil, fmt.Errorf("modal: port %d is not in 1..65535", opts.Port)
	}
	if opts.Cmd == "" {
		opts.Cmd = DefaultCmd
	}
	if opts.LeaseHeartbeat <= 0 {
		opts.LeaseHeartbeat = DefaultLeaseHeartbeat
		// A knob for trials and tests of outages, where waiting out 3
		// beats of 5s is long; not a flag: nobody should need it otherwise.
		if d, err := time.ParseDuration(os.Getenv(LeaseHeartbeatEnv)); err == nil && d > 0 {
			opts.LeaseHeartbeat = d
		}
	}
	if opts.TunnelTimeout <= 0 {
		opts.TunnelTimeout = 60 * time.Second
	}
	if opts.LossSettle <= 0 {
		opts.LossSettle = DefaultLossSettle
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	c := &core{opts: opts, clk: opts.Clock, work: workload{Image: opts.Image, Cmd: opts.Cmd, Port: opts.Port}, cmd: splitCmd(opts.Cmd, opts.Port), known: map[string]tagged{}, users: 2,
		handles: map[string]*modal.Sandbox{}, tagDone: map[string]bool{}, fresh: map[string]bool{}}
	c.life, c.lifeStop = context.WithCancel(context.Background())
	if !haveCredentials() {
		// Said before the SDK tries (it would leave a connection open).
		c.lifeStop()
		return nil, nil, wrap("connecting to Modal", errors.New("missing token_id or token_secret"))
	}
	client, conn, err := newClient(ctx, opts.Logger)
	if err != nil {
		c.lifeStop()
		return nil, nil, wrap("connecting to Modal", err)
	}
	c.client = client
	if conn != nil {
		// The SDK's own connection, with its interceptors (headers, auth
		// token, retries): for the calls it does not offer (incremental.go).
		c.raw = pb.NewModalClientClient(conn)
		c.conn = conn
	}
	notFound := func(what string) error {
		return fmt.Errorf("pool %q does not exist on Modal (%s); nothing was created: %w", opts.Pool, what, ErrPoolNotFound)
	}
	c.app, err = client.Apps.FromName(ctx, opts.App, &modal.AppFromNameParams{Environment: opts.Environment, CreateIfMissing: !opts.MustExist})
	if err != nil {
		c.lifeStop()
		client.Close()
		if opts.MustExist && isNotFound(err) {
			return nil, nil, notFound(fmt.Sprintf("no app %q", opts.App))
		}
		return nil, nil, wrap(fmt.Sprintf("looking up Modal app %q", opts.App), err)
	}
	q, err := client.Queues.FromName(ctx, QueueName(opts.Pool), &modal.QueueFromNameParams{Environment: opts.Environment, CreateIfMissing: !opts.MustExist})
	if err != nil {
		c.lifeStop()
		client.Close()
		if opts.MustExist && isNotFound(err) {
			return nil, nil, notFound(fmt.Sprintf("no queue %q in app %q", QueueName(opts.Pool), opts.App))
		}
		return nil, nil, wrap(fmt.Sprintf("opening Modal queue %q", QueueName(opts.Pool)), err)
	}
	return &Backend{c: c}, &Store{c: c, q: q, pcs: map[string]*partCache{}}, nil
}

// QueueName is the Modal Queue holding a pool's references.
func QueueName(pool string) string { return "sandboxpool-" + pool }

// newClient creates the SDK client. NewClientWithOptions takes no context and
// fetches an auth token at once, so it runs aside and ctx bounds the wait; a
// client that arrives late is closed. When it fails it leaves its gRPC
// connection open (modal-go v0.7.0), so an interceptor notes the connection
// and it is closed here.
func newClient(ctx context.Context, logger *slog.Logger) (*modal.Client, *grpc.ClientConn, error) {
	type res struct {
		c   *modal.Client
		err error
	}
	var connMu sync.Mutex
	var conn *grpc.ClientConn
	noteConn := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		connMu.Lock()
		if conn == nil {
			conn = cc
		}
		connMu.Unlock()
		return invoke(ctx, method, req, reply, cc, opts...)
	}
	ch := make(chan res, 1)
	go func() {
		c, err := modal.NewClientWithOptions(&modal.ClientParams{Logger: logger,
			GRPCUnaryInterceptors: []grpc.UnaryClientInterceptor{countCalls, noteConn}})
		if err != nil {
			connMu.Lock()
			if conn != nil {
				_ = conn.Close()
			}
			connMu.Unlock()
		}
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		connMu.Lock()
		defer connMu.Unlock()
		return r.c, conn, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, nil, ctx.Err()
	}
}

// haveCredentials resolves the token pair as the SDK does: environment first,
// then the MODAL_PROFILE (or active) profile of MODAL_CONFIG_PATH or ~/.modal.toml.
func haveCredentials() bool {
	id, secret := os.Getenv("MODAL_TOKEN_ID"), os.Getenv("MODAL_TOKEN_SECRET")
	if id != "" && secret != "" {
		return true
	}
	path := os.Getenv("MODAL_CONFIG_PATH")
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return false
		}
		path = filepath.Join(home, ".modal.toml")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	type profile struct {
		TokenID     string `toml:"token_id"`
		TokenSecret string `toml:"token_secret"`
		Active      bool   `toml:"active"`
	}
	var cfg map[string]profile
	if toml.Unmarshal(data, &cfg) != nil {
		return true // let the SDK report the broken file
	}
	name := os.Getenv("MODAL_PROFILE")
	if name == "" {
		for n, p := range cfg {
			if p.Active {
				name = n
				break
			}
		}
	}
	p := cfg[name]
	return cmp.Or(id, p.TokenID) != "" && cmp.Or(secret, p.TokenSecret) != ""
}

// release drops one user of the client and closes it with the last.
func (c *core) release() {
	c.mu.Lock()
	c.users--
	last := c.users == 0
	c.mu.Unlock()
	if last {
		c.flushTags(5 * time.Second)
		c.client.Close()
	}
}

// splitCmd turns the command line into argv: plain words are split on
// spaces, anything with shell syntax runs under sh -c.
func splitCmd(cmd string, port int) []string {
	cmd = strings.ReplaceAll(cmd, "{port}", fmt.Sprint(port))
	if strings.ContainsAny(cmd, "\"'$&|;<>()*?`\\") {
		return []string{"sh", "-c", cmd}
	}
	return strings.Fields(cmd)
}

// ---- RPCs counted by caller ----

// callCounter counts the RPCs made under one context: what a claim costs on
// its critical path, apart from the background work it starts (figures).
type callCounter struct {
	mu sync.Mutex
	n  map[string]int
}

type counterKey struct{}

func withCallCounter(ctx context.Context) (context.Context, *callCounter) {
	cc := &callCounter{n: map[string]int{}}
	return context.WithValue(ctx, counterKey{}, cc), cc
}

func (cc *callCounter) counts() map[string]int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	out := make(map[string]int, len(cc.n))
	for k, v := range cc.n {
		out[k] = v
	}
	return out
}

func countCalls(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if c, ok := ctx.Value(counterKey{}).(*callCounter); ok {
		c.mu.Lock()
		c.n[method[strings.LastIndex(method, "/")+1:]]++
		c.mu.Unlock()
	}
	return invoke(ctx, method, req, reply, cc, opts...)
}

// listTagged lists this pool's running sandboxes with what their tags say.
func (c *core) listTagged(ctx context.Context) ([]tagged, error) {
	infos, err := c.listInfos(ctx)
	if err != nil {
		return nil, wrap("listing sandboxes", err)
	}
	out := make([]tagged, 0, len(infos))
	seen := map[string]bool{}
	for _, info := range infos {
		t, ok := c.describe(ctx, info)
		if ok && !seen[t.ref.ID] {
			seen[t.ref.ID] = true
			out = append(out, t)
		}
	}
	c.mu.Lock()
	for id := range c.known { // forget what no longer runs
		if !seen[id] && !c.fresh[id] {
			delete(c.known, id)
			delete(c.handles, id)
			delete(c.tagDone, id)
			delete(c.logs, id)
		}
	}
	c.mu.Unlock()
	sortTagged(out)
	return out, nil
}

// describe reads a listed sandbox: from the captured tags, else from what
// this process knows, else with one SandboxTagsGet (and the tunnel when the
// URL tag is missing).
func (c *core) describe(ctx context.Context, info *pb.SandboxInfo) (tagged, bool) {
	id := info.GetId()
	var tags map[string]string
	if len(info.GetTags()) > 0 {
		tags = map[string]string{}
		for _, t := range info.GetTags() {
			tags[t.GetTagName()] = t.GetTagValue()
		}
	}
	if tags == nil {
		c.mu.Lock()
		t, ok := c.known[id]
		c.mu.Unlock()
		if ok {
			return t, true
		}
		sb, err := c.handle(ctx, id)
		if err != nil {
			return tagged{}, false
		}
		if tags, err = sb.GetTags(ctx); err != nil {
			return tagged{}, false
		}
	}
	t := fromTags(id, tags)
	if t.claimedBy == "" {
		// Claimed here, its tags still on their way.
		if k, ok := c.lookup(id); ok && k.claimedBy != "" {
			t.claimedBy, t.claimedAt = k.claimedBy, k.claimedAt
		}
	}
	if t.ref.CreatedAt.IsZero() && info.GetCreatedAt() > 0 {
		t.ref.CreatedAt = time.Unix(0, int64(info.GetCreatedAt()*1e9))
	}
	if t.ref.ExpiresAt.IsZero() && !t.ref.CreatedAt.IsZero() && info.GetTimeoutSecs() > 0 {
		t.ref.ExpiresAt = t.ref.CreatedAt.Add(time.Duration(info.GetTimeoutSecs()) * time.Second)
	}
	if t.ref.URL == "" {
		if sb, err := c.handle(ctx, id); err == nil {
			w, _ := c.current()
			if tun, err := sb.Tunnels(ctx, 5*time.Second); err == nil && tun[w.Port] != nil {
				t.ref.URL = tun[w.Port].URL()
			}
		}
	}
	c.remember(t)
	return t, true
}

func (c *core) remember(t tagged) {
	c.mu.Lock()
	c.known[t.ref.ID] = t
	c.mu.Unlock()
}

// takeFresh reports (once) whether this process created the sandbox and has
// not put it in the store yet.
func (c *core) takeFresh(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.fresh[id]
	delete(c.fresh, id)
	return f
}

func (c *core) lookup(id string) (tagged, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.known[id]
	return t, ok
}

func tagsFor(pool string, ref pool.Ref, claimedBy string, claimedAt time.Time) map[string]string {
	m := map[string]string{TagPool: pool, TagURL: ref.URL,
		TagCreatedAt: ref.CreatedAt.UTC().Format(time.RFC3339Nano), TagExpiresAt: ref.ExpiresAt.UTC().Format(time.RFC3339Nano)}
	if claimedBy != "" {
		m[TagClaimedBy] = claimedBy
		m[TagClaimedAt] = claimedAt.UTC().Format(time.RFC3339Nano)
	}
	if ref.Workload != "" {
		m[TagWorkload] = ref.Workload
	}
	return m
}

func fromTags(id string, m map[string]string) tagged {
	parse := func(k string) time.Time { t, _ := time.Parse(time.RFC3339Nano, m[k]); return t }
	return tagged{ref: pool.Ref{ID: id, URL: m[TagURL], CreatedAt: parse(TagCreatedAt), ExpiresAt: parse(TagExpiresAt), Workload: m[TagWorkload]},
		claimedBy: m[TagClaimedBy], claimedAt: parse(TagClaimedAt), reserved: m[TagReserved] != "" && m[TagClaimedBy] == ""}
}
