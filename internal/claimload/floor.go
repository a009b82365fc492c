package claimload

import (
	"context"
	"io"
	"net"
	"net/http"
	"time"
)

// Floor measures the physical floor under a claim: n keep-alive HTTP GET
// round trips on loopback to an empty handler in this process.
func Floor(ctx context.Context, n int) (Result, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Result{}, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	c := NewClient("http://"+ln.Addr().String(), 1)
	var res Result
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+"/", nil)
		if err != nil {
			return res, err
		}
		t := time.Now()
		resp, err := c.HTTP.Do(req)
		res.Claims++
		if err != nil {
			res.Errors++
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		res.Latency = append(res.Latency, time.Since(t))
	}
	res.Elapsed = time.Since(start)
	return res, nil
}
