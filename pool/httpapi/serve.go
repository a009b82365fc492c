package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// ErrShuttingDown is the cause given to requests still running when Serve's
// context ends: waiting claims stop at once and answer 503.
var ErrShuttingDown = errors.New("the server is shutting down")

// Server limits. A request, its headers and its body, must arrive within
// ReadTimeout of its first byte (on a new connection, of its accept), so
// that a connection that sends nothing or dribbles is soon closed (and at
// the connection limits, at once); a claim may then wait up to
// MaxClaimTimeout, and its answer must be written within WriteTimeout.
const (
	ReadTimeout  = 3 * time.Second
	WriteTimeout = 10 * time.Second
	IdleTimeout  = 30 * time.Second
	// MaxHeaderBytes bounds a request's line and headers (431 past it);
	// each connection waiting for a request holds a buffer of this size.
	MaxHeaderBytes = 16 << 10
	// ShutdownTimeout bounds a graceful shutdown; SPEC wants `run` gone within 2s.
	ShutdownTimeout = 1500 * time.Millisecond
)

// CheckListen refuses to serve the API beyond this machine without a token
// (SPEC: exit 2). An empty address disables the API and is fine.
func CheckListen(listen, token string) error {
	if listen == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want host:port such as 127.0.0.1:7780", listen)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("--listen %q: the port must be a number between 0 and 65535", listen)
	}
	if token != "" {
		return ValidateToken(token)
	}
	if isLoopback(host) {
		if !PeerUIDSupported {
			return fmt.Errorf("--listen %s without a token: this system cannot tell which local user connects, so set --token-file or SANDBOXPOOL_TOKEN", listen)
		}
		return nil
	}
	return fmt.Errorf("--listen %s is not a loopback address: set --token (or SANDBOXPOOL_TOKEN) to require a bearer token, or listen on 127.0.0.1", listen)
}

// MinTokenLen is the shortest bearer token accepted.
const MinTokenLen = 16

// ValidateToken accepts tokens of at least MinTokenLen characters with no
// whitespace. The error never contains the token.
func ValidateToken(token string) error {
	if strings.IndexFunc(token, unicode.IsSpace) >= 0 {
		return errors.New("--token: must not contain whitespace")
	}
	if n := utf8.RuneCountInString(token); n < MinTokenLen {
		return fmt.Errorf("--token: %d characters, must be at least %d (e.g. openssl rand -hex 16)", n, MinTokenLen)
	}
	return nil
}

// isLoopback is true only for hosts that cannot be reached from elsewhere:
// an empty host means every interface, and a name other than localhost
// may resolve to anything.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// newServer returns the fasthttp server of h with this package's limits;
// errors of the server itself go to logger at Warn.
func newServer(h fasthttp.RequestHandler, logger *slog.Logger) *fasthttp.Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &fasthttp.Server{
		Handler:                      h,
		ErrorHandler:                 fastErrorHandler,
		ReadTimeout:                  ReadTimeout,
		WriteTimeout:                 WriteTimeout,
		IdleTimeout:                  IdleTimeout,
		ReadBufferSize:               MaxHeaderBytes,
		MaxRequestBodySize:           MaxBodyBytes,
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		CloseOnShutdown:              true,
		Logger:                       warnLogger{logger},
	}
}

// warnLogger is fasthttp's Logger over slog, at Warn.
type warnLogger struct{ l *slog.Logger }

func (w warnLogger) Printf(format string, args ...any) { w.l.Warn(fmt.Sprintf(format, args...)) }

// Serve listens on listen and serves api until ctx ends. It returns the
// address it listens on (useful with port 0) once it accepts connections.
// Connections are kept within api's Limits; on a loopback address without
// a token, only the uid running this process is answered (others get 403).
// When ctx ends, requests in progress are cancelled with ErrShuttingDown
// (waiting claims answer 503 at once), the server shuts down gracefully
// within ShutdownTimeout, and errc then yields nil, or the error that
// stopped the server earlier. errc yields exactly one value, then closes.
// Check the address with CheckListen first.
func Serve(ctx context.Context, listen string, api *API) (addr string, errc <-chan error, err error) {
	ownerOnly := api.opts.Token == "" && isLoopbackListen(listen)
	if ownerOnly && !PeerUIDSupported {
		return "", nil, fmt.Errorf("--listen %s without a token: this system cannot tell which user connects, so set --token-file or SANDBOXPOOL_TOKEN", listen)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return "", nil, fmt.Errorf("--listen %s: %w", listen, err)
	}
	g := newGuard(api.limits, api.stats)
	gl := &guardListener{Listener: ln, g: g, ownerOnly: ownerOnly, ownerUID: os.Getuid()}
	base, cancelBase := context.WithCancelCause(context.WithoutCancel(ctx))
	f := newFastAPI(api, base)
	srv := newServer(f.handle, api.log)
	srv.ConnState = g.connState
	var conns sync.WaitGroup // one goroutine per connection

	out := make(chan error, 1)
	served := make(chan error, 1)
	go func() { served <- accept(gl, srv, &conns, api.log) }()
	go func() {
		defer close(out)
		var err error
		select {
		case err = <-served: // failed on its own
		case <-ctx.Done():
			_ = gl.Close()
			<-served
		}
		// Waiting claims answer 503 at once; answers from now on close
		// their connection, and idle connections close now.
		f.stopping.Store(true)
		cancelBase(ErrShuttingDown)
		g.shutdown()
		ended := make(chan struct{})
		go func() { conns.Wait(); close(ended) }()
		select {
		case <-ended:
		case <-time.After(ShutdownTimeout):
			g.closeAll() // handlers that did not end in time
		}
		api.requests.flush() // the last requests' lines, before Serve says it ended
		out <- err
	}()
	return ln.Addr().String(), out, nil
}

// accept serves each connection of l in a goroutine of its own until l is
// closed (nil) or fails for good. Running out of descriptors is waited
// out, as net/http does, so that the guard's evictions can make room.
func accept(l net.Listener, srv *fasthttp.Server, conns *sync.WaitGroup, logger *slog.Logger) error {
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && (ne.Timeout() || isTemporary(err)) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				logger.Warn("API: accept failed; retrying", "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		conns.Add(1)
		go func() {
			defer conns.Done()
			_ = srv.ServeConn(c) // closes c
		}()
	}
}

// isTemporary: out of descriptors or memory, or a connection aborted
// before it was accepted.
func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOBUFS) ||
		errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EAGAIN)
}

// isLoopbackListen is true when listen's host is a loopback address.
func isLoopbackListen(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	return err == nil && isLoopback(host)
}

// DescribeAddr says where an API bound at addr (as returned by Serve) can be
// reached, for the log: an unspecified IPv4 address also listens on IPv6.
func DescribeAddr(listen, addr string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return fmt.Sprintf("%s (every address, IPv4 0.0.0.0:%s and IPv6 [::]:%s)", addr, port0(addr, port), port0(addr, port))
	}
	return addr
}

// port0 is the bound port of addr, or port when addr has none.
func port0(addr, port string) string {
	if _, p, err := net.SplitHostPort(addr); err == nil {
		return p
	}
	return port
}
