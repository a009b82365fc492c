package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"
)

// Checker runs one health check of a sandbox URL, bounded by ctx.
type Checker func(ctx context.Context, url string) Health

// NewHTTPChecker checks health with a GET: any 2xx or 3xx is healthy
// (SPEC Behaviour 1). A nil client gets one that keeps connections warm and
// does not follow redirects, so a 3xx counts as it is.
func NewHTTPChecker(client *http.Client) Checker {
	if client == nil {
		client = NewHealthClient(nil)
	}
	return func(ctx context.Context, url string) Health {
		start := time.Now()
		h := Health{CheckedAt: start}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			h.Error = err.Error()
			return h
		}
		resp, err := client.Do(req)
		h.Latency = time.Since(start)
		if err != nil {
			h.Error = describeHealthError(ctx, err)
			return h
		}
		// Drain a little so the connection can be reused, but never read a big body.
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		resp.Body.Close()
		h.Status = resp.StatusCode
		h.OK = resp.StatusCode >= 200 && resp.StatusCode < 400
		if !h.OK {
			h.Error = fmt.Sprintf("%d", resp.StatusCode)
		}
		return h
	}
}

// NewHealthClient returns the HTTP client health checks use; transport may
// carry a TLS config (the Modal fake's certificate in tests).
func NewHealthClient(transport *http.Transport) *http.Client {
	if transport == nil {
		transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	transport.MaxIdleConnsPerHost = 2
	transport.DisableCompression = true
	return &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// describeHealthError turns a transport error into the short words the
// dashboard shows: timeout, refused, or the error itself.
func describeHealthError(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded || (errors.As(err, &ne) && ne.Timeout()):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	}
	return err.Error()
}
