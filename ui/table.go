package ui

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// table is a small id-keyed list of sandboxes: the selection is a sandbox
// id, not a row number, so it follows its sandbox across refreshes (the
// trap of bubbles' table). It knows nothing of drawing.
type table struct {
	rows   []pool.Sandbox // after the filter, in pool order
	sel    string         // selected sandbox id; "" with no rows
	cur    int            // index of sel in rows
	off    int            // first visible row
	height int            // visible rows
}

// setRows replaces the rows and keeps the selection on the same sandbox;
// when it left, the row that took its place is selected.
func (t *table) setRows(rows []pool.Sandbox) {
	t.rows = rows
	if len(rows) == 0 {
		t.sel, t.cur, t.off = "", 0, 0
		return
	}
	found := false
	if t.sel != "" {
		for i := range rows {
			if rows[i].ID == t.sel {
				t.cur, found = i, true
				break
			}
		}
	}
	if !found {
		t.cur = min(max(t.cur, 0), len(rows)-1)
		t.sel = rows[t.cur].ID
	}
	t.scroll()
}

func (t *table) setHeight(h int) {
	t.height = max(h, 1)
	t.scroll()
}

// move moves the selection by d rows, clamped.
func (t *table) move(d int) {
	if len(t.rows) == 0 {
		return
	}
	t.cur = min(max(t.cur+d, 0), len(t.rows)-1)
	t.sel = t.rows[t.cur].ID
	t.scroll()
}

// scroll keeps the selected row visible.
func (t *table) scroll() {
	h := max(t.height, 1)
	if t.cur < t.off {
		t.off = t.cur
	}
	if t.cur >= t.off+h {
		t.off = t.cur - h + 1
	}
	t.off = min(max(t.off, 0), max(len(t.rows)-h, 0))
}

func (t *table) selected() (pool.Sandbox, bool) {
	if len(t.rows) == 0 || t.cur >= len(t.rows) {
		return pool.Sandbox{}, false
	}
	return t.rows[t.cur], true
}

// visible returns the range of rows on screen.
func (t *table) visible() (from, to int) {
	return t.off, min(t.off+max(t.height, 1), len(t.rows))
}

// filterRows keeps the sandboxes whose id, state or URL contains q (case
// insensitive); an empty q keeps all.
func filterRows(all []pool.Sandbox, q string) []pool.Sandbox {
	q = strings.ToLower(strings.TrimSpace(q))
	if q == "" {
		return all
	}
	out := make([]pool.Sandbox, 0, len(all))
	for _, sb := range all {
		if containsFold(sb.ID, q) || containsFold(string(sb.State), q) || containsFold(sb.URL, q) {
			out = append(out, sb)
		}
	}
	return out
}

func containsFold(s, lowerQ string) bool {
	return strings.Contains(strings.ToLower(s), lowerQ)
}

// sortOrder is the table's order; o cycles it.
type sortOrder int

const (
	sortPool    sortOrder = iota // as the pool holds them: the next claimed first
	sortAge                      // oldest first
	sortTTL                      // least time left first
	sortState                    // by state, in display order
	sortLatency                  // failing, then slowest health check first
	sortOrders
)

func (o sortOrder) next() sortOrder { return (o + 1) % sortOrders }

func (o sortOrder) String() string {
	return [...]string{"pool order", "age", "ttl", "state", "health latency"}[o]
}

// sortRows orders rows (a copy: rows may be the snapshot's own slice);
// ties keep pool order.
func sortRows(rows []pool.Sandbox, o sortOrder) []pool.Sandbox {
	if o == sortPool || len(rows) < 2 {
		return rows
	}
	out := slices.Clone(rows)
	zeroLast := func(a, b time.Time) int {
		switch {
		case a.IsZero() && b.IsZero():
			return 0
		case a.IsZero():
			return 1
		case b.IsZero():
			return -1
		}
		return a.Compare(b)
	}
	var cmp func(a, b pool.Sandbox) int
	switch o {
	case sortAge:
		cmp = func(a, b pool.Sandbox) int { return zeroLast(a.CreatedAt, b.CreatedAt) }
	case sortTTL:
		cmp = func(a, b pool.Sandbox) int { return zeroLast(a.ExpiresAt, b.ExpiresAt) }
	case sortState:
		cmp = func(a, b pool.Sandbox) int { return stateRank(a.State) - stateRank(b.State) }
	case sortLatency:
		cmp = func(a, b pool.Sandbox) int { return latencyRank(b.Health) - latencyRank(a.Health) }
	}
	slices.SortStableFunc(out, cmp)
	return out
}

func stateRank(s pool.State) int {
	if i := slices.Index(pool.States, s); i >= 0 {
		return i
	}
	return len(pool.States)
}

// latencyRank grows with how badly a sandbox answers: never checked lowest,
// then by latency, a failed check highest.
func latencyRank(h pool.Health) int {
	switch {
	case !h.Checked():
		return -1
	case !h.OK:
		return math.MaxInt32
	}
	return int(min(h.Latency/time.Microsecond, math.MaxInt32-1))
}
