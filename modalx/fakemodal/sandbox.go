package fakemodal

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	pb "github.com/modal-labs/libmodal/modal-go/proto/modal_proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type image struct {
	id     string
	failed string // exception when the build failed
}

// sandbox is one fake sandbox: a real HTTPS server until it finishes.
type sandbox struct {
	id, appID, imageID string
	created            time.Time
	createdAt          float64 // unique, strictly increasing (List pages by it)
	timeout            time.Duration
	cmd                []string
	ports              []uint32
	tags               map[string]string

	srv       *http.Server
	port      int
	warmUntil time.Time

	mu       sync.Mutex
	logs     sandboxLogs       // under mu
	result   *pb.GenericResult // nil while running
	finished chan struct{}
	timer    *time.Timer
	httpStop sync.Once
}

func (sb *sandbox) stopHTTP() {
	sb.httpStop.Do(func() {
		// Close (not Shutdown): a terminated container drops its connections.
		_ = sb.srv.Close()
	})
}

// finish ends the sandbox once with st (TIMEOUT at its timeout, TERMINATED on terminate).
func (sb *sandbox) finish(st pb.GenericResult_GenericStatus) {
	sb.mu.Lock()
	if sb.result != nil {
		sb.mu.Unlock()
		return
	}
	code := int32(0)
	if st == pb.GenericResult_GENERIC_STATUS_TERMINATED {
		code = 137
	}
	sb.result = pb.GenericResult_builder{Status: st, Exitcode: code}.Build()
	if sb.timer != nil {
		sb.timer.Stop()
	}
	close(sb.finished)
	sb.mu.Unlock()
	sb.stopHTTP()
}

func (sb *sandbox) running() bool {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.result == nil
}

// SandboxInfo is what tests can read about a fake sandbox.
type SandboxInfo struct {
	ID, AppID string
	Tags      map[string]string
	Running   bool
	Port      int // the HTTPS port on 127.0.0.1
	Timeout   time.Duration
	Command   []string
	Created   time.Time
}

// Sandboxes lists every sandbox the fake knows, running or finished, oldest first.
func (s *Server) Sandboxes() []SandboxInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []SandboxInfo{}
	for _, sb := range s.sandboxes {
		tags := map[string]string{}
		for k, v := range sb.tags {
			tags[k] = v
		}
		out = append(out, SandboxInfo{ID: sb.id, AppID: sb.appID, Tags: tags, Running: sb.running(),
			Port: sb.port, Timeout: sb.timeout, Command: sb.cmd, Created: sb.created})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// Terminate ends a sandbox as if Modal killed it.
func (s *Server) Terminate(id string) {
	s.mu.Lock()
	sb := s.sandboxes[id]
	s.mu.Unlock()
	if sb != nil {
		sb.finish(pb.GenericResult_GENERIC_STATUS_TERMINATED)
	}
}

func (v *service) ImageGetOrCreate(ctx context.Context, r *pb.ImageGetOrCreateRequest) (*pb.ImageGetOrCreateResponse, error) {
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.appExists(r.GetAppId()) {
		return nil, status.Errorf(codes.NotFound, "App %s not found", r.GetAppId())
	}
	key := strings.Join(r.GetImage().GetDockerfileCommands(), "\n")
	if id, ok := s.imageByTag[key]; ok && s.images[id].failed == "" {
		ok := pb.GenericResult_builder{Status: pb.GenericResult_GENERIC_STATUS_SUCCESS}.Build()
		return pb.ImageGetOrCreateResponse_builder{ImageId: id, Result: ok}.Build(), nil
	}
	// A new image: no result yet, so the SDK joins the build stream.
	id := s.newIDLocked("im")
	img := &image{id: id}
	if s.imageFail != "" {
		img.failed = s.imageFail
	}
	s.images[id] = img
	s.imageByTag[key] = id
	return pb.ImageGetOrCreateResponse_builder{ImageId: id}.Build(), nil
}

func (v *service) ImageJoinStreaming(r *pb.ImageJoinStreamingRequest, stream pb.ModalClient_ImageJoinStreamingServer) error {
	s := v.s
	s.mu.Lock()
	img := s.images[r.GetImageId()]
	s.mu.Unlock()
	if img == nil {
		return status.Errorf(codes.NotFound, "Image %s not found", r.GetImageId())
	}
	// A log line first, as a real build streams progress before its result.
	if err := stream.Send(pb.ImageJoinStreamingResponse_builder{EntryId: "1-0",
		TaskLogs: []*pb.TaskLogs{pb.TaskLogs_builder{Data: "building " + img.id + "\n"}.Build()}}.Build()); err != nil {
		return err
	}
	res := pb.GenericResult_builder{Status: pb.GenericResult_GENERIC_STATUS_SUCCESS}.Build()
	if img.failed != "" {
		res = pb.GenericResult_builder{Status: pb.GenericResult_GENERIC_STATUS_FAILURE, Exception: img.failed}.Build()
	}
	return stream.Send(pb.ImageJoinStreamingResponse_builder{EntryId: "2-0", Result: res, Eof: true}.Build())
}

func (v *service) SandboxCreate(ctx context.Context, r *pb.SandboxCreateRequest) (*pb.SandboxCreateResponse, error) {
	s := v.s
	def := r.GetDefinition()
	s.mu.Lock()
	delay, held := s.createDelay, s.held
	s.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	s.mu.Lock()
	if !s.appExists(r.GetAppId()) {
		s.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "App %s not found", r.GetAppId())
	}
	if img := s.images[def.GetImageId()]; img == nil || img.failed != "" {
		s.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "Image %s is not built", def.GetImageId())
	}
	if s.failCreate > 0 {
		s.failCreate--
		msg := s.createMsg
		s.mu.Unlock()
		return nil, status.Error(codes.ResourceExhausted, msg)
	}
	id := s.newIDLocked("sb")
	now := time.Now()
	if !now.After(s.lastCreate) {
		now = s.lastCreate.Add(time.Microsecond)
	}
	s.lastCreate = now
	timeout := time.Duration(def.GetTimeoutSecs()) * time.Second
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	sb := &sandbox{id: id, appID: r.GetAppId(), imageID: def.GetImageId(), created: now,
		createdAt: float64(now.UnixNano()) / 1e9, timeout: timeout, cmd: def.GetEntrypointArgs(),
		tags: map[string]string{}, finished: make(chan struct{}), warmUntil: now.Add(s.warmup)}
	for _, p := range def.GetOpenPorts().GetPorts() {
		sb.ports = append(sb.ports, p.GetPort())
	}
	// Listening before the sandbox is known: nobody reads it half made.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.mu.Unlock()
		return nil, status.Errorf(codes.Internal, "listen: %v", err)
	}
	sb.port = lis.Addr().(*net.TCPAddr).Port
	sb.srv = &http.Server{Handler: sb.handler(), ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{s.ca.leaf}}}
	sb.logf(pb.FileDescriptor_FILE_DESCRIPTOR_STDOUT, "Serving HTTP on 0.0.0.0 port %d (http://0.0.0.0:%d/) ...\n", firstPort(sb.ports), firstPort(sb.ports))
	s.sandboxes[id] = sb
	s.mu.Unlock()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); _ = sb.srv.ServeTLS(lis, "", "") }()
	sb.mu.Lock()
	sb.timer = time.AfterFunc(timeout, func() { sb.finish(pb.GenericResult_GENERIC_STATUS_TIMEOUT) })
	sb.mu.Unlock()
	return pb.SandboxCreateResponse_builder{SandboxId: id}.Build(), nil
}

// handler answers like `python -m http.server`: a directory listing.
func (sb *sandbox) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if time.Now().Before(sb.warmUntil) {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			sb.logRequest(r, http.StatusServiceUnavailable)
			return
		}
		sb.logRequest(r, http.StatusOK)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Sandbox-Id", sb.id)
		fmt.Fprintf(w, "<!DOCTYPE HTML>\n<html><head><title>Directory listing for %s</title></head>\n<body><h1>Directory listing for %s</h1><hr><ul><li><a href=\"app/\">app/</a></li></ul><hr>sandbox %s</body></html>\n", r.URL.Path, r.URL.Path, sb.id)
	})
}

func (s *Server) sandbox(id string) (*sandbox, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.sandboxes[id]
	if sb == nil {
		return nil, status.Errorf(codes.NotFound, "Sandbox with id: '%s' not found", id)
	}
	return sb, nil
}

func (v *service) SandboxGetTunnels(ctx context.Context, r *pb.SandboxGetTunnelsRequest) (*pb.SandboxGetTunnelsResponse, error) {
	sb, err := v.s.sandbox(r.GetSandboxId())
	if err != nil {
		return nil, err
	}
	if !sb.running() {
		return nil, status.Errorf(codes.FailedPrecondition, "Sandbox %s has already finished", sb.id)
	}
	// Every encrypted port is tunnelled to the sandbox's one HTTPS server.
	var ts []*pb.TunnelData
	for _, p := range sb.ports {
		ts = append(ts, pb.TunnelData_builder{Host: "127.0.0.1", Port: uint32(sb.port), ContainerPort: p}.Build())
	}
	return pb.SandboxGetTunnelsResponse_builder{Tunnels: ts}.Build(), nil
}

func (v *service) SandboxTagsSet(ctx context.Context, r *pb.SandboxTagsSetRequest) (*emptyResp, error) {
	sb, err := v.s.sandbox(r.GetSandboxId())
	if err != nil {
		return nil, err
	}
	tags := map[string]string{}
	for _, t := range r.GetTags() {
		tags[t.GetTagName()] = t.GetTagValue()
	}
	v.s.mu.Lock()
	sb.tags = tags // SandboxTagsSet replaces the whole set
	v.s.mu.Unlock()
	return &emptyResp{}, nil
}

func (v *service) SandboxTagsGet(ctx context.Context, r *pb.SandboxTagsGetRequest) (*pb.SandboxTagsGetResponse, error) {
	sb, err := v.s.sandbox(r.GetSandboxId())
	if err != nil {
		return nil, err
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	return pb.SandboxTagsGetResponse_builder{Tags: tagList(sb.tags)}.Build(), nil
}

func tagList(m map[string]string) []*pb.SandboxTag {
	out := make([]*pb.SandboxTag, 0, len(m))
	for k, v := range m {
		out = append(out, pb.SandboxTag_builder{TagName: k, TagValue: v}.Build())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetTagName() < out[j].GetTagName() })
	return out
}

func (v *service) SandboxList(ctx context.Context, r *pb.SandboxListRequest) (*pb.SandboxListResponse, error) {
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	var match []*sandbox
	for _, sb := range s.sandboxes {
		if r.GetAppId() != "" && sb.appID != r.GetAppId() {
			continue
		}
		if !r.GetIncludeFinished() && !sb.running() {
			continue
		}
		if b := r.GetBeforeTimestamp(); b != 0 && sb.createdAt >= b {
			continue
		}
		ok := true
		for _, t := range r.GetTags() {
			if val, has := sb.tags[t.GetTagName()]; !has || val != t.GetTagValue() {
				ok = false
				break
			}
		}
		if ok {
			match = append(match, sb)
		}
	}
	// Newest first, one page: the SDK asks again with BeforeTimestamp.
	sort.Slice(match, func(i, j int) bool { return match[i].createdAt > match[j].createdAt })
	if len(match) > s.opts.ListPageSize {
		match = match[:s.opts.ListPageSize]
	}
	infos := make([]*pb.SandboxInfo, 0, len(match))
	for _, sb := range match {
		infos = append(infos, pb.SandboxInfo_builder{Id: sb.id, CreatedAt: sb.createdAt, AppId: sb.appID,
			Tags: tagList(sb.tags), ImageId: sb.imageID, TimeoutSecs: uint32(sb.timeout / time.Second)}.Build())
	}
	return pb.SandboxListResponse_builder{Sandboxes: infos}.Build(), nil
}

func (v *service) SandboxWait(ctx context.Context, r *pb.SandboxWaitRequest) (*pb.SandboxWaitResponse, error) {
	sb, err := v.s.sandbox(r.GetSandboxId())
	if err != nil {
		return nil, err
	}
	if t := time.Duration(float64(r.GetTimeout()) * float64(time.Second)); t > 0 {
		timer := time.NewTimer(t)
		defer timer.Stop()
		select {
		case <-sb.finished:
		case <-timer.C:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-v.s.done:
		}
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return pb.SandboxWaitResponse_builder{Result: sb.result}.Build(), nil
}

func (v *service) SandboxTerminate(ctx context.Context, r *pb.SandboxTerminateRequest) (*pb.SandboxTerminateResponse, error) {
	sb, err := v.s.sandbox(r.GetSandboxId())
	if err != nil {
		return nil, err
	}
	sb.mu.Lock()
	existing := sb.result
	sb.mu.Unlock()
	sb.finish(pb.GenericResult_GENERIC_STATUS_TERMINATED)
	return pb.SandboxTerminateResponse_builder{ExistingResult: existing}.Build(), nil
}

func firstPort(ps []uint32) uint32 {
	if len(ps) == 0 {
		return 8000
	}
	return ps[0]
}
