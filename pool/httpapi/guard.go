package httpapi

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/sandboxpool/sandboxpool/pool/metrics"
)

// Limits bound the connections the API holds open, so that no client, idle
// or slow, can take the file descriptors the store and backend need.
type Limits struct {
	// MaxConns caps open API connections (0: DefaultLimits).
	MaxConns int
	// MaxConnsPerClient caps one client's: per IP address, or per uid on an
	// owner-only loopback API (0: DefaultLimits).
	MaxConnsPerClient int
}

// DefaultLimits: 1024 connections, or a quarter of the process's file
// descriptor limit when that is lower (at least 32); a client may hold a
// quarter of them.
func DefaultLimits() Limits {
	n := 1024
	if fds := fdLimit(); fds > 0 {
		n = min(n, max(32, fds/4))
	}
	return Limits{MaxConns: n, MaxConnsPerClient: max(8, n/4)}
}

func (l Limits) orDefault() Limits {
	d := DefaultLimits()
	if l.MaxConns <= 0 {
		l.MaxConns = d.MaxConns
	}
	if l.MaxConnsPerClient <= 0 {
		l.MaxConnsPerClient = min(d.MaxConnsPerClient, l.MaxConns)
	}
	return l
}

// Reasons a connection or request is turned away, the "reason" label of
// sandboxpool_api_rejected_total.
const (
	RejectConnLimit    = "conn_limit"   // every connection slot is serving a request
	RejectClientLimit  = "client_limit" // every slot of this client is serving a request
	RejectForbidden    = "forbidden"    // loopback peer of another uid: 403
	RejectUnauthorized = "unauthorized" // missing or wrong token: 401
)

var rejectReasons = []string{RejectConnLimit, RejectClientLimit, RejectForbidden, RejectUnauthorized}

// apiStats counts what the bounds did; exported on /metrics.
type apiStats struct {
	rejected map[string]*atomic.Uint64 // fixed keys: read without a lock
	evicted  atomic.Uint64
	open     atomic.Int64
	busy     atomic.Int64 // open connections serving a request
	max      atomic.Int64
}

func newAPIStats() *apiStats {
	s := &apiStats{rejected: make(map[string]*atomic.Uint64, len(rejectReasons))}
	for _, r := range rejectReasons {
		s.rejected[r] = new(atomic.Uint64)
	}
	return s
}

func (s *apiStats) reject(reason string) { s.rejected[reason].Add(1) }

var (
	descRejected = prometheus.NewDesc(metrics.Namespace+"_api_rejected_total",
		"API connections or requests turned away by reason: conn_limit and client_limit (every slot busy with a request), forbidden (loopback peer of another uid), unauthorized (token).", []string{"reason"}, nil)
	descEvicted = prometheus.NewDesc(metrics.Namespace+"_api_idle_closed_total",
		"Idle API connections closed to make room for a new one at the connection limits.", nil, nil)
	descOpen = prometheus.NewDesc(metrics.Namespace+"_api_connections",
		"Open API connections by state: busy (serving a request) or idle.", []string{"state"}, nil)
	descMax = prometheus.NewDesc(metrics.Namespace+"_api_connections_max",
		"Cap on open API connections.", nil, nil)
)

func (s *apiStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRejected
	ch <- descEvicted
	ch <- descOpen
	ch <- descMax
}

func (s *apiStats) Collect(ch chan<- prometheus.Metric) {
	for _, r := range rejectReasons {
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(s.rejected[r].Load()), r)
	}
	ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(s.evicted.Load()))
	open, busy := s.open.Load(), s.busy.Load()
	ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(busy), "busy")
	ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(max(0, open-busy)), "idle")
	ch <- prometheus.MustNewConstMetric(descMax, prometheus.GaugeValue, float64(s.max.Load()))
}

// guard keeps the API's connections within its Limits. At a limit, a new
// connection takes the place of the one idle longest (never read a request,
// or between requests): idle connections cost a descriptor and do nothing,
// so thousands of them cannot lock anyone out. Only when every slot is
// serving a request is the newcomer refused (503, closed).
type guard struct {
	limits Limits
	stats  *apiStats

	mu       sync.Mutex // guards the fields below; never held across I/O
	open     map[*guardConn]struct{}
	perKey   map[string]int
	stopping bool // shutting down: connections close once idle
}

func newGuard(l Limits, stats *apiStats) *guard {
	stats.max.Store(int64(l.MaxConns))
	return &guard{limits: l, stats: stats, open: map[*guardConn]struct{}{}, perKey: map[string]int{}}
}

// guardConn is an admitted connection. Its fields after Conn are guarded by g.mu.
type guardConn struct {
	net.Conn
	g    *guard
	key  string // the client: an IP, or a uid
	peer Peer

	busy      bool      // serving a request
	idleSince time.Time // when it last became idle
	gone      bool      // released: no longer counted

	// after is what follows the answer of the request being served, run
	// by connState once it is sent; only the connection's goroutine
	// touches these two.
	after    answered
	hasAfter bool
}

// Close releases the slot at once, before the kernel closes the socket.
func (c *guardConn) Close() error {
	c.g.release(c)
	return c.Conn.Close()
}

// admit counts c in, closing the longest-idle connection of its client or
// of all when at a limit. It returns a reason when c must be refused.
func (g *guard) admit(c *guardConn) string {
	var victim *guardConn
	g.mu.Lock()
	if g.perKey[c.key] >= g.limits.MaxConnsPerClient {
		victim = g.oldestIdleLocked(c.key)
		if victim == nil {
			g.mu.Unlock()
			return RejectClientLimit
		}
		g.releaseLocked(victim)
	}
	if victim == nil && len(g.open) >= g.limits.MaxConns {
		victim = g.oldestIdleLocked("")
		if victim == nil {
			g.mu.Unlock()
			return RejectConnLimit
		}
		g.releaseLocked(victim)
	}
	c.idleSince = time.Now()
	g.open[c] = struct{}{}
	g.perKey[c.key]++
	g.stats.open.Store(int64(len(g.open)))
	g.mu.Unlock()
	if victim != nil {
		g.stats.evicted.Add(1)
		_ = victim.Conn.Close() // its server goroutine sees the error and ends
	}
	return ""
}

// shutdown closes the idle connections now and every other one once it
// is idle (its answer sent).
func (g *guard) shutdown() {
	g.mu.Lock()
	g.stopping = true
	var idle []*guardConn
	for c := range g.open {
		if !c.busy {
			idle = append(idle, c)
		}
	}
	g.mu.Unlock()
	for _, c := range idle {
		_ = c.Close()
	}
}

// closeAll closes every open connection (a shutdown that ran out of time).
func (g *guard) closeAll() {
	g.mu.Lock()
	conns := make([]*guardConn, 0, len(g.open))
	for c := range g.open {
		conns = append(conns, c)
	}
	g.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// oldestIdleLocked is the connection idle longest, of key or of anyone ("").
func (g *guard) oldestIdleLocked(key string) *guardConn {
	var best *guardConn
	for c := range g.open {
		if c.busy || (key != "" && c.key != key) {
			continue
		}
		if best == nil || c.idleSince.Before(best.idleSince) {
			best = c
		}
	}
	return best
}

func (g *guard) release(c *guardConn) {
	g.mu.Lock()
	g.releaseLocked(c)
	g.mu.Unlock()
}

func (g *guard) releaseLocked(c *guardConn) {
	if c.gone {
		return
	}
	c.gone = true
	if c.busy {
		c.busy = false
		g.stats.busy.Add(-1)
	}
	delete(g.open, c)
	if g.perKey[c.key]--; g.perKey[c.key] <= 0 {
		delete(g.perKey, c.key)
	}
	g.stats.open.Store(int64(len(g.open)))
}

// connState is the server's ConnState hook: it tells busy from idle, and
// runs what follows an answer once it is sent (idle) or the connection ends.
func (g *guard) connState(nc net.Conn, s fasthttp.ConnState) {
	c, ok := nc.(*guardConn)
	if !ok {
		return
	}
	switch s {
	case fasthttp.StateActive:
		g.mu.Lock()
		if !c.busy && !c.gone {
			c.busy = true
			g.stats.busy.Add(1)
		}
		g.mu.Unlock()
	case fasthttp.StateIdle:
		g.mu.Lock()
		if c.busy {
			c.busy = false
			g.stats.busy.Add(-1)
		}
		c.idleSince = time.Now()
		stopping := g.stopping
		g.mu.Unlock()
		c.runAfter()
		if stopping {
			_ = c.Close()
		}
	case fasthttp.StateHijacked, fasthttp.StateClosed:
		g.release(c)
		c.runAfter()
	}
}

func (c *guardConn) runAfter() {
	if c.hasAfter {
		d := c.after
		c.after, c.hasAfter = answered{}, false
		d.run()
	}
}

// Peer is what the server knows of a connection's other end.
type Peer struct {
	// OwnerOnly: the API answers only OwnerUID (loopback without a token).
	OwnerOnly bool
	OwnerUID  int
	// UID is the peer's uid, -1 when it could not be learnt.
	UID int
}

type peerKey struct{}

// peerFrom returns the connection's Peer, set by Serve.
func peerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// guardListener admits connections through the guard. With ownerOnly it
// learns each one's uid at accept time.
type guardListener struct {
	net.Listener
	g         *guard
	ownerOnly bool
	ownerUID  int
}

func (l *guardListener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c := &guardConn{Conn: nc, g: l.g, peer: Peer{UID: -1}}
		if host, _, err := net.SplitHostPort(nc.RemoteAddr().String()); err == nil {
			c.key = host
		}
		if l.ownerOnly {
			c.peer.OwnerOnly, c.peer.OwnerUID = true, l.ownerUID
			if uid, err := peerUID(nc); err == nil {
				c.peer.UID = uid
				c.key = "uid " + strconv.Itoa(uid)
			}
		}
		if reason := l.g.admit(c); reason != "" {
			l.g.stats.reject(reason)
			refuse(nc, reason)
			continue
		}
		return c, nil
	}
}

// refuse answers a connection that gets no slot and closes it. The socket
// is new, so the short write goes to an empty buffer and never blocks.
func refuse(c net.Conn, reason string) {
	body := fmt.Sprintf(`{"error":"too many open API connections (%s): retry later"}`+"\n", reason)
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	_ = c.Close()
}
