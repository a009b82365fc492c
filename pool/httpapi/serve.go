package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// ErrShuttingDown is the cause given to requests still running when Serve's
// context ends: waiting claims stop at once and answer 503.
var ErrShuttingDown = errors.New("the server is shutting down")

// Server timeouts. WriteTimeout covers the longest claim a client may ask for.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = MaxClaimTimeout + 30*time.Second
	IdleTimeout       = 2 * time.Minute
	MaxHeaderBytes    = 64 << 10
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
	if token != "" || isLoopback(host) {
		return nil
	}
	return fmt.Errorf("--listen %s is not a loopback address: set --token (or SANDBOXPOOL_TOKEN) to require a bearer token, or listen on 127.0.0.1", listen)
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

// NewServer returns an *http.Server for h with this package's timeouts and
// limits; errors of the server itself go to logger at Warn.
func NewServer(h http.Handler, logger *slog.Logger) *http.Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// Serve listens on listen and serves h until ctx ends. It returns the
// address it listens on (useful with port 0) once it accepts connections.
// When ctx ends, requests in progress are cancelled with ErrShuttingDown
// (waiting claims answer 503 at once), the server shuts down gracefully
// within ShutdownTimeout, and errc then yields nil, or the error that
// stopped the server earlier. errc yields exactly one value, then closes.
// Check the address with CheckListen first.
func Serve(ctx context.Context, listen string, h http.Handler, logger *slog.Logger) (addr string, errc <-chan error, err error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return "", nil, fmt.Errorf("--listen %s: %w", listen, err)
	}
	srv := NewServer(h, logger)
	base, cancelBase := context.WithCancelCause(context.WithoutCancel(ctx))
	srv.BaseContext = func(net.Listener) context.Context { return base }

	out := make(chan error, 1)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	go func() {
		defer close(out)
		var err error
		select {
		case err = <-served: // failed on its own
			cancelBase(ErrShuttingDown)
		case <-ctx.Done():
			cancelBase(ErrShuttingDown)
			sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
			if serr := srv.Shutdown(sctx); serr != nil {
				_ = srv.Close() // handlers that did not end in time
			}
			cancel()
			err = <-served
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		out <- err
	}()
	return ln.Addr().String(), out, nil
}
