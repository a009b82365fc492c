// Package httpapi is sandboxpool's HTTP claim API (SPEC "HTTP API"): a
// seed-compatible GET /claim, a JSON API under /v1, /healthz and /metrics,
// served by the dashboard and `run` over a *pool.Controller. It also holds
// the JSON views that the CLI prints and a small typed client.
package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/metrics"
)

// MaxClaimTimeout caps the timeout a client may ask a claim to wait.
const MaxClaimTimeout = 5 * time.Minute

// MaxBodyBytes caps every request body.
const MaxBodyBytes = 64 << 10

// Options shape the API.
type Options struct {
	// Token, when set, is required as `Authorization: Bearer <token>` on
	// every endpoint but /healthz. It is compared in constant time and never logged.
	Token string
	// ReadOnly drops the endpoints that claim, resize, terminate or run a
	// pass: they answer 403 saying the API is read-only.
	ReadOnly bool
	// Logger gets one line per request (method, path, status, duration,
	// remote); nil discards them.
	Logger *slog.Logger
	// Metrics is served on /metrics; nil builds metrics.New(ctrl). Pass the
	// one you already made: each metrics.New adds an observer to ctrl.
	Metrics *metrics.Metrics
	// RetryAfter is the Retry-After of a 503 when no backoff is under way
	// (default 2s).
	RetryAfter time.Duration
	// Limits bound the connections Serve keeps open (zero: DefaultLimits).
	Limits Limits
}

// API is the http.Handler of the claim API.
type API struct {
	ctrl       *pool.Controller
	opts       Options
	log        *slog.Logger
	mux        *http.ServeMux
	tokenHash  [32]byte
	retryAfter time.Duration
	limits     Limits
	stats      *apiStats
	requests   *requestLog // the fast routes' line per request
}

// New returns the API of ctrl as an http.Handler.
func New(ctrl *pool.Controller, opts Options) *API {
	a := &API{ctrl: ctrl, opts: opts, log: opts.Logger, mux: http.NewServeMux(), retryAfter: opts.RetryAfter,
		limits: opts.Limits.orDefault(), stats: newAPIStats()}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.requests = newRequestLog(a.log, requestLogDelay)
	if a.retryAfter <= 0 {
		a.retryAfter = 2 * time.Second
	}
	if opts.Token != "" {
		a.tokenHash = sha256.Sum256([]byte(opts.Token))
	}
	m := opts.Metrics
	if m == nil {
		m = metrics.New(ctrl)
	}
	m.Registry().MustRegister(a.stats)

	a.mux.HandleFunc("GET /healthz", a.healthz)
	a.mux.Handle("GET /metrics", m.Handler())
	a.mux.HandleFunc("GET /v1/pool", a.getPool)
	write := map[string]http.HandlerFunc{
		"GET /claim":                a.seedClaim,
		"POST /v1/claims":           a.claim,
		"PUT /v1/pool/size":         a.resize,
		"DELETE /v1/sandboxes/{id}": a.terminate,
		"POST /v1/maintain":         a.maintain,
	}
	for pattern, h := range write {
		if opts.ReadOnly {
			h = readOnly
		}
		a.mux.HandleFunc(pattern, h)
	}
	return a
}

// Connections returns the API's open connections and how many of them are
// serving a request now.
func (a *API) Connections() (open, busy int) {
	return int(a.stats.open.Load()), int(a.stats.busy.Load())
}

// ServeHTTP authenticates, routes and logs one request.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusWriter{ResponseWriter: w}
	a.serve(rec, r)
	level := slog.LevelInfo
	if r.URL.Path == "/healthz" || r.URL.Path == "/metrics" {
		level = slog.LevelDebug
	}
	ctx := r.Context()
	if !a.log.Enabled(ctx, level) {
		return
	}
	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	// Never the headers: the Authorization header carries the token.
	// LogAttrs: the same line as Log's key-value pairs, without boxing
	// each value (one line per request).
	a.log.LogAttrs(ctx, level, "http request", slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", status), slog.Duration("duration", time.Since(start).Round(time.Microsecond)),
		slog.String("remote", r.RemoteAddr), slog.Int("bytes", rec.bytes))
}

func (a *API) serve(w http.ResponseWriter, r *http.Request) {
	p, hasPeer := peerFrom(r.Context())
	if status, msg := a.gate(p, hasPeer, r.URL.Path, r.Header.Get("Authorization")); status != 0 {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", wwwAuthenticate)
		}
		writeError(w, status, msg)
		return
	}
	if _, pattern := a.mux.Handler(r); pattern == "" {
		// No route: the mux answers 404, or 405 with an Allow header. Keep
		// its status and headers, answer JSON like everything else.
		cw := &captureWriter{header: http.Header{}}
		a.mux.ServeHTTP(cw, r)
		switch cw.status {
		case http.StatusNotFound:
			writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
			return
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", cw.header.Get("Allow"))
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (allowed: %s)",
				r.Method, r.URL.Path, cw.header.Get("Allow")))
			return
		}
		// Anything else (a redirect to a cleaned path): pass it through.
		for k, v := range cw.header {
			w.Header()[k] = v
		}
		w.WriteHeader(cw.status)
		_, _ = w.Write(cw.body)
		return
	}
	if r.Body != http.NoBody { // none to bound (and decodeOptional knows NoBody)
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	}
	if !takesBody(r) {
		if err := decodeOptional(r.Body, &struct{}{}); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s %s takes no body: %v", r.Method, r.URL.Path, err))
			return
		}
	}
	a.mux.ServeHTTP(w, r)
}

// takesBody: the endpoints that read a JSON body; every other one accepts
// none (or an empty object).
func takesBody(r *http.Request) bool {
	return (r.Method == http.MethodPost && r.URL.Path == "/v1/claims") ||
		(r.Method == http.MethodPut && r.URL.Path == "/v1/pool/size")
}

// wwwAuthenticate is the challenge of a 401.
const wwwAuthenticate = `Bearer realm="sandboxpool"`

// gate refuses a request of a peer of another uid on an owner-only API
// (403) or without the token (401, on every path but /healthz): the status
// and message of the refusal, 0 to serve it.
func (a *API) gate(p Peer, hasPeer bool, path, authorization string) (int, string) {
	if hasPeer && p.OwnerOnly && p.UID != p.OwnerUID {
		a.stats.reject(RejectForbidden)
		who := "another user"
		if p.UID < 0 {
			who = "a user this server could not identify"
		}
		return http.StatusForbidden, fmt.Sprintf("this API answers only uid %d, the user running the controller; you are %s (start it with --token-file to share it)", p.OwnerUID, who)
	}
	if a.opts.Token != "" && path != "/healthz" && !a.authorized(authorization) {
		a.stats.reject(RejectUnauthorized)
		return http.StatusUnauthorized, "missing or wrong bearer token: send Authorization: Bearer <token>"
	}
	return 0, ""
}

// authorized compares the bearer token in constant time (over hashes, so
// that not even the length leaks).
func (a *API) authorized(authorization string) bool {
	scheme, tok, ok := strings.Cut(authorization, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(got[:], a.tokenHash[:]) == 1
}

// ---- handlers ----

// HealthzView is the body of /healthz.
type HealthzView struct {
	Status string `json:"status"`          // ok or error
	Error  string `json:"error,omitempty"` // what is wrong, while the pool has problems
}

// healthz answers from the controller's memory only (never the store or the
// backend): it stays fast however loaded or broken they are.
func (a *API) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if msg := problemsText(a.ctrl.Problems()); msg != "" {
		writeJSON(w, http.StatusServiceUnavailable, HealthzView{Status: "error", Error: msg})
		return
	}
	writeJSON(w, http.StatusOK, HealthzView{Status: "ok"})
}

// problemsText is the problems on one line, "" when there are none.
func problemsText(ps []pool.Problem) string {
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		s := p.Kind + ": " + p.Message
		if p.Count > 1 {
			s += fmt.Sprintf(" (x%d)", p.Count)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func (a *API) getPool(w http.ResponseWriter, _ *http.Request) {
	v := NewPoolView(a.ctrl.Snapshot())
	v.Error = problemsText(a.ctrl.Problems())
	writeJSON(w, http.StatusOK, v)
}

// seedClaim is the seed's web function: GET /claim?check_health=false,
// answering the URL as a JSON string.
func (a *API) seedClaim(w http.ResponseWriter, r *http.Request) {
	c, ok := a.doClaim(w, r)
	if ok {
		writeJSON(w, http.StatusOK, c.URL)
		c.Announce()
	}
}

func (a *API) claim(w http.ResponseWriter, r *http.Request) {
	c, ok := a.doClaim(w, r)
	if ok {
		writeJSON(w, http.StatusOK, NewClaimView(c, time.Now()))
		c.Announce()
	}
}

// doClaim parses the claim parameters, claims for the request's lifetime
// and writes the error response itself when there is one.
func (a *API) doClaim(w http.ResponseWriter, r *http.Request) (pool.Claimed, bool) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead { // the mux lets HEAD into GET routes: a probe must not claim
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, "method HEAD not allowed on "+r.URL.Path+" (allowed: GET): it would claim a sandbox")
		return pool.Claimed{}, false
	}
	var body []byte
	if r.Method == http.MethodPost {
		var err error
		if body, err = readBody(r.Body); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%v (want nothing, or {\"check_health\":bool,\"timeout\":\"30s\"})", err))
			return pool.Claimed{}, false
		}
	}
	opts, err := a.claimOptions(r.Method == http.MethodPost, r.URL.RawQuery, body, r.RemoteAddr)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return pool.Claimed{}, false
	}
	// The request's context: a client that goes away stops waiting.
	c, ce := a.claimFor(r.Context(), opts, nil)
	if ce != nil {
		if ce.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(ce.retryAfter))
		}
		writeError(w, ce.status, ce.msg)
		return pool.Claimed{}, false
	}
	return c, true
}

// claimError is a claim's failure as an answer: its status, message and
// Retry-After in seconds (0: none).
type claimError struct {
	status     int
	msg        string
	retryAfter int
}

// claimFor claims with ctx, which ends when the client goes away (or the
// server shuts down, with ErrShuttingDown as its cause). settled, when
// set, runs as the claim returns, before ctx is looked at: whatever can
// still end ctx must have stopped by its return. The claim's event and
// backfill come after its answer: the caller calls Announce once it is
// written and flushed.
func (a *API) claimFor(ctx context.Context, opts pool.ClaimOptions, settled func()) (pool.Claimed, *claimError) {
	opts.AnnounceLater = true
	c, err := a.ctrl.Claim(ctx, opts)
	if settled != nil {
		settled()
	}
	switch {
	case err == nil && ctx.Err() != nil:
		// Claimed just as the client went away: nobody will get the URL, so
		// the sandbox must not stay claimed by nobody.
		c.Announce()
		a.giveUp(c)
		return pool.Claimed{}, &claimError{status: statusClientClosed, msg: "claim cancelled: the client went away"}
	case err == nil:
		return c, nil
	case errors.Is(err, pool.ErrTargetZero):
		return pool.Claimed{}, &claimError{http.StatusServiceUnavailable, err.Error() + " (PUT /v1/pool/size)", a.retryAfterSeconds()}
	case errors.Is(err, pool.ErrNoSandbox):
		return pool.Claimed{}, &claimError{http.StatusServiceUnavailable, err.Error(), a.retryAfterSeconds()}
	case errors.Is(context.Cause(ctx), ErrShuttingDown):
		return pool.Claimed{}, &claimError{http.StatusServiceUnavailable, "claim cancelled: " + ErrShuttingDown.Error(), a.retryAfterSeconds()}
	case ctx.Err() != nil:
		// The client went away: the status is for the log only.
		return pool.Claimed{}, &claimError{status: statusClientClosed, msg: "claim cancelled: the client went away"}
	}
	return pool.Claimed{}, &claimError{status: http.StatusInternalServerError, msg: err.Error()}
}

// statusClientClosed is logged when a claim ends because its client went
// away (nginx's 499); nobody reads the answer.
const statusClientClosed = 499

func (a *API) giveUp(c pool.Claimed) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := a.ctrl.Terminate(ctx, c.ID)
	a.log.Warn("claimed sandbox terminated: its client went away", "id", c.ID, "err", err)
}

func (a *API) retryAfterSeconds() int {
	d := a.retryAfter
	if until := a.ctrl.Snapshot().BackoffUntil; !until.IsZero() {
		d = max(d, time.Until(until))
	}
	return max(1, int((d+time.Second-1)/time.Second))
}

// claimOptions reads a claim's parameters from its raw query and, for
// POST /v1/claims (post), its body.
func (a *API) claimOptions(post bool, rawQuery string, body []byte, remote string) (pool.ClaimOptions, error) {
	o := pool.ClaimOptions{CheckHealth: true, By: "api " + remote,
		Timeout: min(a.ctrl.Config().ClaimTimeout, MaxClaimTimeout)}
	if rawQuery == "" && len(body) == 0 { // the usual claim: the defaults, nothing to parse
		return o, nil
	}
	// Not r.URL.Query(): it silently drops what it cannot parse (a bad
	// escape, a ';'), and a claim would then run with the defaults.
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return o, fmt.Errorf("query %q: %v", rawQuery, err)
	}
	for k := range q {
		if k != "check_health" && k != "timeout" {
			return o, fmt.Errorf("unknown parameter %q: allowed are check_health and timeout", k)
		}
	}
	if post { // POST /v1/claims may carry the parameters as JSON
		var req ClaimRequest
		if err := decodeOptionalBytes(body, &req); err != nil {
			return o, fmt.Errorf("%w (want nothing, or {\"check_health\":bool,\"timeout\":\"30s\"})", err)
		}
		if req.CheckHealth != nil {
			if _, ok := q["check_health"]; ok {
				return o, errors.New("check_health: given in both the query and the body")
			}
			q.Set("check_health", strconv.FormatBool(*req.CheckHealth))
		}
		if req.Timeout != nil {
			if _, ok := q["timeout"]; ok {
				return o, errors.New("timeout: given in both the query and the body")
			}
			q.Set("timeout", *req.Timeout)
		}
	}
	if v, ok := one(q, "check_health"); ok {
		b, err := parseBool(v)
		if err != nil {
			return o, fmt.Errorf("check_health=%q: want true or false", v)
		}
		o.CheckHealth = b
	}
	if v, ok := one(q, "timeout"); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > MaxClaimTimeout {
			return o, fmt.Errorf("timeout=%q: want a duration between 1ms and %s, such as 30s", v, MaxClaimTimeout)
		}
		o.Timeout = d
	}
	return o, nil
}

// one returns the last value of a query parameter.
func one(q map[string][]string, k string) (string, bool) {
	vs, ok := q[k]
	if !ok || len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// parseBool accepts what the seed's FastAPI endpoint accepted.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "1", "t", "true", "yes", "y", "on":
		return true, nil
	case "0", "f", "false", "no", "n", "off":
		return false, nil
	}
	return false, errors.New("not a bool")
}

// ClaimRequest is the optional body of POST /v1/claims: the query's
// parameters as JSON. Anything else in a body is a 400.
type ClaimRequest struct {
	CheckHealth *bool   `json:"check_health,omitempty"`
	Timeout     *string `json:"timeout,omitempty"`
}

// SizeRequest is the body of PUT /v1/pool/size.
type SizeRequest struct {
	Size *int `json:"size"`
}

func (a *API) resize(w http.ResponseWriter, r *http.Request) {
	var req SizeRequest
	if err := decodeStrict(r.Body, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Size == nil {
		writeError(w, http.StatusBadRequest, `body: want {"size":N}`)
		return
	}
	n, maxSize := *req.Size, a.ctrl.Config().MaxSize
	if a.ctrl.Config().ValidateSize(n) != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("size %d: must be between 0 and %d (--max-size)", n, maxSize))
		return
	}
	if err := a.ctrl.Resize(r.Context(), n); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, NewPoolView(a.ctrl.Snapshot()))
}

// TerminateView is the answer of DELETE /v1/sandboxes/{id}.
type TerminateView struct {
	ID         string `json:"id"`
	Terminated bool   `json:"terminated"`
}

func (a *API) terminate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == "" || len(id) > 256 {
		writeError(w, http.StatusBadRequest, "sandbox id: want 1 to 256 characters")
		return
	}
	err := a.ctrl.Terminate(r.Context(), id)
	switch {
	case errors.Is(err, pool.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, http.StatusOK, TerminateView{ID: id, Terminated: true})
	}
}

func (a *API) maintain(w http.ResponseWriter, r *http.Request) {
	if err := a.ctrl.Maintain(r.Context()); err != nil {
		writeError(w, http.StatusInternalServerError, "maintenance pass: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, NewPoolView(a.ctrl.Snapshot()))
}

const readOnlyMessage = "the API is read-only (--readonly): claims, resizes, terminations and maintenance are disabled"

func readOnly(w http.ResponseWriter, _ *http.Request) {
	writeError(w, http.StatusForbidden, readOnlyMessage)
}

// ---- JSON ----

// ErrorView is the body of every error answer.
type ErrorView struct {
	Error string `json:"error"`
}

// Header values every JSON answer carries, shared: net/http only reads
// them, and a handler that changes one replaces the slice (Header.Set).
var (
	headerJSON    = []string{"application/json"}
	headerNosniff = []string{"nosniff"}
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	var b []byte
	var err error
	if cv, ok := v.(ClaimView); ok {
		b, ok = cv.appendJSON(make([]byte, 0, 256))
		if !ok {
			b, err = json.Marshal(v)
		}
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode the answer"}`)
	}
	b = append(b, '\n')
	// The canonical keys set directly: Header.Set canonicalises each key and
	// allocates each value's slice, on every answer.
	h := w.Header()
	h["Content-Type"] = headerJSON
	h["X-Content-Type-Options"] = headerNosniff
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(status)
	_, _ = w.Write(b)
	// Sent now, whole (its length is known): not after the request's log
	// line and what else runs before the handler returns (a claim's event
	// and backfill).
	_ = http.NewResponseController(w).Flush()
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorView{Error: msg})
}

// decodeOptional is decodeStrict for a body that may also be absent or blank.
func decodeOptional(body io.Reader, v any) error {
	if body == http.NoBody {
		return nil // what net/http gives a request without one (io.ReadAll would allocate 512 bytes to learn it)
	}
	b, err := readBody(body)
	if err != nil {
		return err
	}
	return decodeOptionalBytes(b, v)
}

// readBody reads a body bounded by http.MaxBytesReader.
func readBody(body io.Reader) ([]byte, error) {
	if body == http.NoBody {
		return nil, nil
	}
	b, err := io.ReadAll(body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fmt.Errorf("body: larger than %d bytes", tooBig.Limit)
		}
		return nil, fmt.Errorf("body: %w", err)
	}
	return b, nil
}

// decodeOptionalBytes is decodeStrict for a body that may also be empty or blank.
func decodeOptionalBytes(b []byte, v any) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	return decodeStrict(bytes.NewReader(b), v)
}

// decodeStrict decodes exactly one JSON value with no unknown field and
// nothing after it.
func decodeStrict(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			return fmt.Errorf("body: larger than %d bytes", tooBig.Limit)
		case errors.Is(err, io.EOF):
			return errors.New("body: empty, want JSON")
		}
		return fmt.Errorf("body: %w", err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return errors.New("body: unexpected data after the JSON value")
	}
	return nil
}

// ---- response writers ----

// statusWriter records the status and size for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// captureWriter holds the mux's own answer to a request no route matches.
type captureWriter struct {
	header http.Header
	status int
	body   []byte
}

func (w *captureWriter) Header() http.Header { return w.header }
func (w *captureWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *captureWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.body = append(w.body, b...)
	return len(b), nil
}
