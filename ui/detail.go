package ui

import (
	"strings"

	"github.com/charmbracelet/bubbles/viewport"

	"github.com/sandboxpool/sandboxpool/pool"
)

// detailView is enter: one sandbox in full (whole id and URL), its
// timeline and its last health checks, scrollable.
type detailView struct {
	id   string
	last pool.Sandbox // as last seen, once it left the pool
	vp   viewport.Model
}

// refreshDetail rebuilds the detail view of the selected sandbox (cheap:
// one sandbox). A sandbox that left the pool stays shown as last seen.
func (m *Model) refreshDetail() {
	d := &m.detail
	sb, found := pool.Sandbox{}, false
	for i := range m.snap.Sandboxes {
		if m.snap.Sandboxes[i].ID == d.id {
			sb, found = m.snap.Sandboxes[i], true
			break
		}
	}
	if found {
		d.last = sb
	} else if d.last.ID == d.id {
		sb = d.last
	} else {
		sb = pool.Sandbox{ID: d.id}
	}
	d.vp.SetContent(m.detailContent(sb, found))
}

func (m *Model) detailContent(sb pool.Sandbox, live bool) string {
	st, now, w := m.st, m.now, max(m.width, 1)
	var b strings.Builder
	line := func(l string) {
		b.WriteString(truncate(l, w)) // never wider than the screen: cut with …
		b.WriteByte('\n')
	}
	field := func(name, value string) { line("  " + st.Faint.wrap(fit(name, 10)) + value) }
	title := "  " + st.Title.wrap("sandbox "+sb.ID)
	if !live {
		title += st.Warning.wrap("  gone from the pool")
	}
	line(title)
	line("")
	field("id", sb.ID)
	field("state", strings.TrimRight(st.stateCell(sb.State, m.frame).painted, " "))
	field("url", orDash(sb.URL))
	if !sb.CreatedAt.IsZero() {
		field("created", clockTime(sb.CreatedAt)+st.Faint.wrap("  "+fmtAge(now.Sub(sb.CreatedAt))+" ago"))
	} else {
		field("created", "–")
	}
	if !sb.ExpiresAt.IsZero() {
		left := sb.TimeLeft(now)
		field("expires", clockTime(sb.ExpiresAt)+st.barP[barColour(left, m.cfg.UseDuration)].wrap("  in "+fmtClock(left)))
	} else {
		field("expires", "–")
	}
	if sb.ClaimedBy != "" {
		field("claimed", "by "+sb.ClaimedBy+" at "+clockTime(sb.ClaimedAt))
	}
	if sb.Err != "" {
		field("error", st.Danger.wrap(oneLine(sb.Err)))
	}

	line("")
	line("  " + st.Title.wrap("timeline"))
	marks := m.hist.timeline(sb.ID)
	if len(marks) == 0 {
		line("  " + st.Faint.wrap("nothing seen since the dashboard started"))
	}
	for _, mk := range marks {
		what := mk.what
		if mk.bad {
			what = st.Danger.wrap(what)
		}
		switch {
		case mk.from == "":
		case strings.HasPrefix(mk.what, "claimed by"):
			what += st.Faint.wrap(" · " + mk.from)
		default:
			what += st.Faint.wrap(" by " + mk.from)
		}
		line("  " + st.Faint.wrap(clockTime(mk.at)) + "  " + what)
	}

	line("")
	line("  " + st.Title.wrap("health checks"))
	hs := m.health[sb.ID]
	if len(hs) == 0 {
		line("  " + st.Faint.wrap("none yet"))
	}
	for i := len(hs) - 1; i >= 0; i-- { // newest first
		h := hs[i]
		p := st.Healthy
		if !h.OK {
			p = st.Danger
		}
		line("  " + st.Faint.wrap(clockTime(h.CheckedAt)) + "  " + p.wrap(healthText(h)))
	}
	return strings.TrimRight(b.String(), "\n")
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
