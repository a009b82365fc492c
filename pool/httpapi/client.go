package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Client talks to a running sandboxpool API (`claim --api URL`, `check --api URL`).
type Client struct {
	// BaseURL is where the API is, such as http://127.0.0.1:7780; a bare
	// host:port gets http://.
	BaseURL string
	// Token, when set, is sent as a bearer token.
	Token string
	// HTTP defaults to http.DefaultClient. Do not give it a Timeout shorter
	// than the claims you make: a claim waits on the server.
	HTTP *http.Client
}

// APIError is an error answer of the API. It matches pool.ErrNoSandbox
// (503) and pool.ErrNotFound (404) with errors.Is.
type APIError struct {
	Status  int
	Message string
	// RetryAfter is the server's Retry-After on a 503, 0 when absent.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	return fmt.Sprintf("sandboxpool API: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Unwrap maps statuses to the engine's errors.
func (e *APIError) Unwrap() error {
	switch e.Status {
	case http.StatusServiceUnavailable:
		return pool.ErrNoSandbox
	case http.StatusNotFound:
		return pool.ErrNotFound
	}
	return nil
}

// Claim claims one sandbox; timeout 0 means the server's default.
func (c *Client) Claim(ctx context.Context, checkHealth bool, timeout time.Duration) (ClaimView, error) {
	q := url.Values{}
	if !checkHealth {
		q.Set("check_health", "false")
	}
	if timeout > 0 {
		q.Set("timeout", timeout.String())
	}
	var v ClaimView
	err := c.do(ctx, http.MethodPost, "/v1/claims", q, nil, &v)
	return v, err
}

// Pool returns the pool as the server sees it.
func (c *Client) Pool(ctx context.Context) (PoolView, error) {
	var v PoolView
	err := c.do(ctx, http.MethodGet, "/v1/pool", nil, nil, &v)
	return v, err
}

// Resize sets the target and returns the pool after it.
func (c *Client) Resize(ctx context.Context, n int) (PoolView, error) {
	var v PoolView
	err := c.do(ctx, http.MethodPut, "/v1/pool/size", nil, SizeRequest{Size: &n}, &v)
	return v, err
}

// Terminate terminates one sandbox of the pool.
func (c *Client) Terminate(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sandboxes/"+url.PathEscape(id), nil, nil, &TerminateView{})
}

// Maintain runs a maintenance pass now and returns the pool after it.
func (c *Client) Maintain(ctx context.Context) (PoolView, error) {
	var v PoolView
	err := c.do(ctx, http.MethodPost, "/v1/maintain", nil, nil, &v)
	return v, err
}

func (c *Client) base() string {
	b := strings.TrimRight(c.BaseURL, "/")
	if !strings.Contains(b, "://") {
		b = "http://" + b
	}
	return b
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	u := c.base() + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("sandboxpool API %s: %w", c.BaseURL, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("sandboxpool API %s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("sandboxpool API %s %s: read the answer: %w", method, u, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &APIError{Status: resp.StatusCode}
		var ev ErrorView
		if json.Unmarshal(data, &ev) == nil && ev.Error != "" {
			e.Message = ev.Error
		} else {
			e.Message = strings.TrimSpace(string(data))
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			e.RetryAfter = time.Duration(s) * time.Second
		}
		return e
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("sandboxpool API %s %s: decode the answer: %w", method, u, err)
	}
	return nil
}
