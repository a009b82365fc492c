package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/sandboxpool/sandboxpool/pool"
)

// fastAPI serves the API on fasthttp. The claim routes are served here
// directly: net/http's own work (reading the request, writing the answer,
// its background read of every request) was over a third of the
// controller's CPU per claim in bursts. Every other route goes through
// fasthttpadaptor to the API's http.Handler.
type fastAPI struct {
	a        *API
	base     context.Context // ends with ErrShuttingDown when the server stops
	adapted  fasthttp.RequestHandler
	stopping atomic.Bool // answers close their connection
}

func newFastAPI(a *API, base context.Context) *fastAPI {
	f := &fastAPI{a: a, base: base}
	f.adapted = fasthttpadaptor.NewFastHTTPHandler(http.HandlerFunc(f.serveAdapted))
	return f
}

// serveAdapted gives the adapted request a context of its own: the
// server's (cancelled with ErrShuttingDown) with the connection's Peer.
func (f *fastAPI) serveAdapted(w http.ResponseWriter, r *http.Request) {
	ctx := f.base
	if p, ok := r.Context().Value(peerKey{}).(Peer); ok {
		ctx = context.WithValue(ctx, peerKey{}, p)
	}
	f.a.ServeHTTP(w, r.WithContext(ctx))
}

var (
	pathClaims    = []byte("/v1/claims")
	pathSeedClaim = []byte("/claim")
)

// handle routes a request: the claim routes here, the rest adapted.
func (f *fastAPI) handle(ctx *fasthttp.RequestCtx) {
	gc, _ := ctx.Conn().(*guardConn)
	defer func() {
		if f.stopping.Load() {
			ctx.SetConnectionClose()
		}
	}()
	// The path as sent, not fasthttp's cleaned one: a path the mux would
	// redirect or refuse goes to the mux.
	path, rawQuery, _ := bytes.Cut(ctx.Request.Header.RequestURI(), []byte{'?'})
	var post bool
	switch {
	case ctx.IsPost() && bytes.Equal(path, pathClaims):
		post = true
	case ctx.IsGet() && bytes.Equal(path, pathSeedClaim):
	default:
		if gc != nil {
			ctx.SetUserValue(peerKey{}, gc.peer)
		}
		f.adapted(ctx)
		return
	}
	start := time.Now()
	var peer Peer
	if gc != nil {
		peer = gc.peer
	}
	remote := ctx.RemoteAddr().String()
	c, ok := f.claim(ctx, gc, peer, gc != nil, post, string(path), string(rawQuery), remote)
	// The claim's event and backfill, and the request's log line, once the
	// answer is sent (the connection's state hook runs them): the client
	// waits for none of them.
	done := answered{a: f.a, claimed: c, announce: ok, method: string(ctx.Method()), path: string(path),
		status: ctx.Response.StatusCode(), bytes: len(ctx.Response.Body()), start: start, remote: remote}
	if gc == nil {
		done.run()
		return
	}
	gc.after, gc.hasAfter = done, true
}

// claim serves POST /v1/claims (post) or GET /claim; ok when it claimed.
func (f *fastAPI) claim(ctx *fasthttp.RequestCtx, gc *guardConn, peer Peer, hasPeer, post bool, path, rawQuery, remote string) (pool.Claimed, bool) {
	a := f.a
	if status, msg := a.gate(peer, hasPeer, path, string(ctx.Request.Header.Peek("Authorization"))); status != 0 {
		if status == http.StatusUnauthorized {
			ctx.Response.Header.Set("WWW-Authenticate", wwwAuthenticate)
		}
		fastError(ctx, status, msg)
		return pool.Claimed{}, false
	}
	var body []byte
	if post {
		body = ctx.PostBody()
	} else if err := decodeOptionalBytes(ctx.PostBody(), &struct{}{}); err != nil {
		fastError(ctx, http.StatusBadRequest, fmt.Sprintf("GET %s takes no body: %v", path, err))
		return pool.Claimed{}, false
	}
	if a.opts.ReadOnly {
		fastError(ctx, http.StatusForbidden, readOnlyMessage)
		return pool.Claimed{}, false
	}
	ctx.Response.Header.Set("Cache-Control", "no-store")
	opts, err := a.claimOptions(post, rawQuery, body, remote)
	if err != nil {
		fastError(ctx, http.StatusBadRequest, err.Error())
		return pool.Claimed{}, false
	}
	cctx, cancel := context.WithCancelCause(f.base)
	defer cancel(nil)
	// The watch ends before the claim's outcome is read: a client seen gone
	// by then gets nothing (the claim is given back).
	w := watchClient(gc, cancel)
	c, ce := a.claimFor(cctx, opts, w.stop)
	if ce != nil {
		if ce.retryAfter > 0 {
			ctx.Response.Header.Set("Retry-After", strconv.Itoa(ce.retryAfter))
		}
		fastError(ctx, ce.status, ce.msg)
		return pool.Claimed{}, false
	}
	var b []byte
	if post {
		v := NewClaimView(c, time.Now())
		var plain bool
		if b, plain = v.appendJSON(make([]byte, 0, 256)); !plain {
			b = marshalAnswer(v)
		}
	} else {
		b = marshalAnswer(c.URL)
	}
	fastWrite(ctx, http.StatusOK, b)
	return c, true
}

// errClientGone is a waiting claim's cause when its client closed the connection.
var errClientGone = errors.New("the client went away")

// answered is what follows a request's answer: the claim's announcement
// and the request's log line.
type answered struct {
	a        *API
	claimed  pool.Claimed
	announce bool
	method   string
	path     string
	status   int
	bytes    int
	start    time.Time
	remote   string
}

func (d answered) run() {
	if d.announce {
		d.claimed.Announce()
	}
	// Its duration ends once the answer is sent.
	now := time.Now()
	d.a.requests.add(requestLine{at: now, method: d.method, path: d.path, status: d.status,
		duration: now.Sub(d.start).Round(time.Microsecond), remote: d.remote, bytes: d.bytes})
}

// marshalAnswer is writeJSON's encoding of v.
func marshalAnswer(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte(`{"error":"encode the answer"}`)
	}
	return b
}

func fastError(ctx *fasthttp.RequestCtx, status int, msg string) {
	fastWrite(ctx, status, marshalAnswer(ErrorView{Error: msg}))
}

// fastWrite sets the answer as writeJSON does: JSON, nosniff, a length.
func fastWrite(ctx *fasthttp.RequestCtx, status int, b []byte) {
	b = append(b, '\n')
	ctx.Response.Header.SetContentType("application/json")
	ctx.Response.Header.Set("X-Content-Type-Options", "nosniff")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
}

// drainMax and drainTime bound what drainBody reads; drainPause is how long
// it waits for more.
const (
	drainMax   = 4 << 20
	drainTime  = time.Second
	drainPause = 100 * time.Millisecond
)

// drainBody reads and drops what is left of a body too large to serve (n
// bytes said, some of them read already), up to drainMax, for at most
// drainTime and until the client pauses: the answer then reaches the
// client. A connection closed with data unread is reset, and a client
// still writing the body never read its 400 (net/http reads up to 256 KiB
// of it likewise).
func drainBody(c net.Conn, n int64) {
	if c == nil || n <= 0 {
		return
	}
	n = min(n, drainMax)
	end := time.Now().Add(drainTime)
	buf := make([]byte, 32<<10)
	for n > 0 {
		dl := time.Now().Add(drainPause)
		if dl.After(end) {
			dl = end
		}
		_ = c.SetReadDeadline(dl)
		m, err := c.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(m)
		if err != nil {
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
}

// fastErrorHandler answers a request fasthttp could not read, in JSON.
func fastErrorHandler(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		drainBody(ctx.Conn(), int64(ctx.Request.Header.ContentLength()))
		fastError(ctx, http.StatusBadRequest, fmt.Sprintf("body: larger than %d bytes", MaxBodyBytes))
	case errors.As(err, &small):
		fastError(ctx, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request headers: larger than %d bytes", MaxHeaderBytes))
	default:
		var te interface{ Timeout() bool }
		if errors.As(err, &te) && te.Timeout() {
			fastError(ctx, http.StatusRequestTimeout, "request: not read in time")
			return
		}
		fastError(ctx, http.StatusBadRequest, "malformed HTTP request")
	}
}
