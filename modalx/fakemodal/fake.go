// Package fakemodal is a fake Modal control plane for tests: a gRPC server on a
// loopback port implementing exactly the RPCs that modal-go v0.7.0 makes for
// what modalx uses (see modalx's package doc). Point the real SDK at it with
// MODAL_SERVER_URL=s.URL and MODAL_TOKEN_ID/MODAL_TOKEN_SECRET = s.TokenID/s.TokenSecret.
//
// It is faithful where the pool depends on it: each sandbox is a real HTTPS
// server on 127.0.0.1 (certificate signed by the fake's CA, see CACertFile and
// TLSConfig) that stops at its timeout or on terminate; queue gets are atomic;
// partitions expire after their TTL; SandboxList filters by app and tags.
package fakemodal

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	pb "github.com/modal-labs/libmodal/modal-go/proto/modal_proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Options configure a fake. The zero value is fine.
type Options struct {
	// Addr to listen on; default 127.0.0.1:0.
	Addr string
	// TokenID and TokenSecret accepted by AuthTokenGet; defaults "ak-fake", "as-fake-secret".
	TokenID, TokenSecret string
	// Dir receives the CA certificate file; default a new temp dir removed by Close.
	Dir string
	// ListPageSize is how many sandboxes one SandboxList answer holds (default 100).
	ListPageSize int
	// NextItemsBatch is how many items one QueueNextItems answer holds (default 100).
	NextItemsBatch int
	// Latency is added to every RPC (as SetLatency), so figures taken
	// against the fake look like a control plane that far away.
	Latency time.Duration
	// CreateDelay is how long SandboxCreate takes (as SetCreateDelay), like
	// Modal scheduling a container.
	CreateDelay time.Duration
}

// Server is a running fake control plane.
type Server struct {
	// URL is the value for MODAL_SERVER_URL (http:// means plaintext gRPC).
	URL string
	// TokenID and TokenSecret are the credentials the fake accepts.
	TokenID, TokenSecret string
	// CACertFile is a PEM file with the CA that signs every sandbox's
	// certificate: use it as SSL_CERT_FILE for a binary under test.
	CACertFile string

	opts   Options
	grpc   *grpc.Server
	lis    net.Listener
	ca     *certAuthority
	tmpDir string
	done   chan struct{}
	wg     sync.WaitGroup

	mu          sync.Mutex
	stopped     bool // Stop ran: the control plane is away until Restart
	incarnation string
	counts      map[string]int
	latency     time.Duration
	createDelay time.Duration
	failCreate  int
	createMsg   string
	imageFail   string
	rejectAuth  bool
	warmup      time.Duration
	held        chan struct{} // non-nil: creations wait until it is closed (HoldCreates)
	seq         int
	apps        map[string]string // name -> id
	images      map[string]*image // id -> image
	imageByTag  map[string]string // dockerfile -> id
	sandboxes   map[string]*sandbox
	lastCreate  time.Time
	queues      map[string]*queue // id -> queue
	queueNames  map[string]string // name -> id
}

// Start runs a fake on a loopback port.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.TokenID == "" {
		opts.TokenID = "ak-fake"
	}
	if opts.TokenSecret == "" {
		opts.TokenSecret = "as-fake-secret"
	}
	if opts.ListPageSize <= 0 {
		opts.ListPageSize = 100
	}
	if opts.NextItemsBatch <= 0 {
		opts.NextItemsBatch = 100
	}
	s := &Server{
		TokenID: opts.TokenID, TokenSecret: opts.TokenSecret, opts: opts,
		done: make(chan struct{}), counts: map[string]int{},
		apps: map[string]string{}, images: map[string]*image{}, imageByTag: map[string]string{},
		sandboxes: map[string]*sandbox{}, queues: map[string]*queue{}, queueNames: map[string]string{},
		latency: opts.Latency, createDelay: opts.CreateDelay, incarnation: newIncarnation(),
	}
	var err error
	if s.ca, err = newCA(); err != nil {
		return nil, err
	}
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "fakemodal-"); err != nil {
			return nil, err
		}
		s.tmpDir = dir
	}
	s.CACertFile = filepath.Join(dir, "fakemodal-ca.pem")
	if err := os.WriteFile(s.CACertFile, s.ca.certPEM, 0o644); err != nil {
		return nil, err
	}
	if s.lis, err = net.Listen("tcp", opts.Addr); err != nil {
		return nil, err
	}
	s.URL = "http://" + s.lis.Addr().String()
	s.serve()
	return s, nil
}

// serve starts a gRPC server on s.lis.
func (s *Server) serve() {
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(s.unaryInterceptor), grpc.ChainStreamInterceptor(s.streamInterceptor))
	pb.RegisterModalClientServer(g, &service{s: s})
	s.grpc = g
	lis := s.lis
	s.wg.Add(1)
	go func() { defer s.wg.Done(); _ = g.Serve(lis) }()
}

// Stop takes the control plane away, as an outage would: the port stops
// answering, RPCs fail as unreachable; the sandboxes keep running and
// serving (Modal's data plane does not depend on its API).
func (s *Server) Stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	g := s.grpc
	s.mu.Unlock()
	g.Stop() // closes the listener too
}

// Restart brings a stopped control plane back on the same address. With
// empty, it comes back without its queues (their ids are new), as a control
// plane that lost its in-memory state; apps, images, sandboxes and their
// tags are kept.
func (s *Server) Restart(empty bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		return fmt.Errorf("fakemodal: Restart without Stop")
	}
	lis, err := net.Listen("tcp", strings.TrimPrefix(s.URL, "http://"))
	if err != nil {
		return err
	}
	if empty {
		s.queues, s.queueNames = map[string]*queue{}, map[string]string{}
		s.incarnation = newIncarnation()
	}
	s.lis, s.stopped = lis, false
	s.serve()
	return nil
}

// newIncarnation makes ids of one run of the fake differ from another's,
// as Modal's ids never repeat.
func newIncarnation() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Close stops the gRPC server and every sandbox.
func (s *Server) Close() {
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	s.mu.Lock()
	g := s.grpc
	s.mu.Unlock()
	g.Stop()
	s.mu.Lock()
	sbs := make([]*sandbox, 0, len(s.sandboxes))
	for _, sb := range s.sandboxes {
		sbs = append(sbs, sb)
	}
	s.mu.Unlock()
	for _, sb := range sbs {
		sb.finish(pb.GenericResult_GENERIC_STATUS_TERMINATED)
	}
	s.wg.Wait()
	if s.tmpDir != "" {
		_ = os.RemoveAll(s.tmpDir)
	}
}

// Env returns the environment a process needs to use this fake.
func (s *Server) Env() []string {
	return []string{"MODAL_SERVER_URL=" + s.URL, "MODAL_TOKEN_ID=" + s.TokenID,
		"MODAL_TOKEN_SECRET=" + s.TokenSecret, "SSL_CERT_FILE=" + s.CACertFile}
}

// ---- knobs ----

// FailCreates makes the next n SandboxCreate calls fail like a quota refusal
// (ResourceExhausted with msg; a default message when msg is empty).
func (s *Server) FailCreates(n int, msg string) {
	if msg == "" {
		msg = "Workspace has reached its limit of concurrent sandboxes (quota exceeded)"
	}
	s.mu.Lock()
	s.failCreate, s.createMsg = n, msg
	s.mu.Unlock()
}

// FailImageBuilds makes every image build fail with msg ("" restores success).
func (s *Server) FailImageBuilds(msg string) { s.mu.Lock(); s.imageFail = msg; s.mu.Unlock() }

// RejectTokens makes AuthTokenGet refuse every token (like a revoked token).
func (s *Server) RejectTokens(on bool) { s.mu.Lock(); s.rejectAuth = on; s.mu.Unlock() }

// SetLatency delays every RPC by d.
func (s *Server) SetLatency(d time.Duration) { s.mu.Lock(); s.latency = d; s.mu.Unlock() }

// SetCreateDelay makes every SandboxCreate take d (Modal scheduling a container).
func (s *Server) SetCreateDelay(d time.Duration) { s.mu.Lock(); s.createDelay = d; s.mu.Unlock() }

// SetWarmup makes new sandboxes answer 503 for d after creation (like a
// container still starting).
func (s *Server) SetWarmup(d time.Duration) { s.mu.Lock(); s.warmup = d; s.mu.Unlock() }

// HoldCreates makes every sandbox creation wait, from now until release
// is called, as a control plane that has not got round to it yet.
func (s *Server) HoldCreates() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.held = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.held == ch {
				s.held = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
}

// KillServer stops a sandbox's HTTPS server while Modal still lists it as running.
func (s *Server) KillServer(id string) bool {
	s.mu.Lock()
	sb := s.sandboxes[id]
	s.mu.Unlock()
	if sb == nil {
		return false
	}
	sb.stopHTTP()
	return true
}

// Counts returns the number of RPCs served, by method name (e.g. "QueueGet").
func (s *Server) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// ResetCounts zeroes the RPC counters.
func (s *Server) ResetCounts() { s.mu.Lock(); s.counts = map[string]int{}; s.mu.Unlock() }

// TotalRPCs sums Counts.
func (s *Server) TotalRPCs() int {
	n := 0
	for _, v := range s.Counts() {
		n += v
	}
	return n
}

// FormatCounts renders counts as "Method=n ..." sorted by name.
func FormatCounts(c map[string]int) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, c[k])
	}
	return b.String()
}

// ---- interceptors: counting, latency, auth ----

func (s *Server) before(ctx context.Context, fullMethod string, unary bool) error {
	method := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	s.mu.Lock()
	s.counts[method]++
	lat, reject := s.latency, s.rejectAuth
	s.mu.Unlock()
	if lat > 0 {
		select {
		case <-time.After(lat):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	get := func(k string) string {
		if v := md.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	// Like Modal: the token pair authenticates AuthTokenGet; every other RPC
	// unary RPC also needs the short-lived auth token it returned (the SDK sends
	// none on streams).
	if reject || get("x-modal-token-id") != s.TokenID || get("x-modal-token-secret") != s.TokenSecret {
		return status.Error(codes.Unauthenticated, "Token ID or secret is invalid. Please check your Modal token credentials.")
	}
	if unary && method != "AuthTokenGet" && get("x-modal-auth-token") == "" {
		return status.Error(codes.Unauthenticated, "missing auth token")
	}
	return nil
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := s.before(ctx, info.FullMethod, true); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := s.before(ss.Context(), info.FullMethod, false); err != nil {
		return err
	}
	return h(srv, ss)
}

// jwt returns an unsigned JWT whose exp claim the SDK reads.
func jwt(exp time.Time) string {
	enc := base64.RawURLEncoding
	h := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	p, _ := json.Marshal(map[string]any{"exp": exp.Unix(), "sub": "fake"})
	return h + "." + enc.EncodeToString(p) + "." + enc.EncodeToString([]byte("sig"))
}

func (s *Server) newID(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newIDLocked(prefix)
}

func (s *Server) newIDLocked(prefix string) string {
	s.seq++
	// The number first, as Modal ids differ early: short ids stay distinct.
	return fmt.Sprintf("%s-%06d%sfakefake", prefix, s.seq, s.incarnation)
}

type service struct {
	pb.UnimplementedModalClientServer
	s *Server
}

func (v *service) AuthTokenGet(ctx context.Context, _ *pb.AuthTokenGetRequest) (*pb.AuthTokenGetResponse, error) {
	return pb.AuthTokenGetResponse_builder{Token: jwt(time.Now().Add(time.Hour))}.Build(), nil
}

func (v *service) AppGetOrCreate(ctx context.Context, r *pb.AppGetOrCreateRequest) (*pb.AppGetOrCreateResponse, error) {
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	key := r.GetEnvironmentName() + "/" + r.GetAppName()
	id, ok := s.apps[key]
	if !ok {
		if r.GetObjectCreationType() != pb.ObjectCreationType_OBJECT_CREATION_TYPE_CREATE_IF_MISSING {
			return nil, status.Errorf(codes.NotFound, "App '%s' not found", r.GetAppName())
		}
		id = s.newIDLocked("ap")
		s.apps[key] = id
	}
	return pb.AppGetOrCreateResponse_builder{AppId: id}.Build(), nil
}

func (s *Server) appExists(id string) bool {
	for _, v := range s.apps {
		if v == id {
			return true
		}
	}
	return false
}
