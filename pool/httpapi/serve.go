package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrShuttingDown is the cause given to requests still running when Serve's
// context ends: waiting claims stop at once and answer 503.
var ErrShuttingDown = errors.New("the server is shutting down")

// Server timeouts. WriteTimeout covers the longest claim a client may ask
// for; the header and idle timeouts are short so that a connection that
// sends nothing is soon closed (and at the connection limits, at once).
const (
	ReadHeaderTimeout = 3 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = MaxClaimTimeout + 30*time.Second
	IdleTimeout       = 30 * time.Second
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
	srv := NewServer(api, api.log)
	srv.ConnState = g.connState
	base, cancelBase := context.WithCancelCause(context.WithoutCancel(ctx))
	srv.BaseContext = func(net.Listener) context.Context { return base }
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if gc, ok := c.(*guardConn); ok {
			return context.WithValue(ctx, peerKey{}, gc.peer)
		}
		return ctx
	}

	out := make(chan error, 1)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(gl) }()
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
