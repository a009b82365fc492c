package ui

import (
	"strings"

	"github.com/sandboxpool/sandboxpool/pool"
)

// refreshDetail rebuilds the detail view of the selected sandbox (cheap:
// one sandbox). A sandbox that left the pool stays shown as last seen.
func (m *Model) refreshDetail() {
	sb, found := pool.Sandbox{}, false
	for i := range m.snap.Sandboxes {
		if m.snap.Sandboxes[i].ID == m.detailID {
			sb, found = m.snap.Sandboxes[i], true
			break
		}
	}
	if found {
		m.detailLast = sb
	} else if m.detailLast.ID == m.detailID {
		sb = m.detailLast
	} else {
		sb = pool.Sandbox{ID: m.detailID}
	}
	m.detail.SetContent(m.detailContent(sb, found))
}

func (m *Model) detailContent(sb pool.Sandbox, live bool) string {
	st, now := m.st, m.now
	var b strings.Builder
	field := func(name, value string) {
		b.WriteString("  ")
		st.Faint.write(&b, fit(name, 10))
		b.WriteString(value)
		b.WriteByte('\n')
	}
	b.WriteString("  ")
	st.Title.write(&b, "sandbox "+pool.ShortID(sb.ID))
	if !live {
		st.Warning.write(&b, "  gone from the pool")
	}
	b.WriteString("\n\n")
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

	b.WriteString("\n  ")
	st.Title.write(&b, "health checks")
	b.WriteByte('\n')
	hs := m.health[sb.ID]
	if len(hs) == 0 {
		b.WriteString("  " + st.Faint.wrap("none yet") + "\n")
	}
	for i := len(hs) - 1; i >= 0; i-- { // newest first
		h := hs[i]
		p := st.Healthy
		if !h.OK {
			p = st.Danger
		}
		b.WriteString("  " + st.Faint.wrap(clockTime(h.CheckedAt)) + "  " + p.wrap(healthText(h)) + "\n")
	}

	b.WriteString("\n  ")
	st.Title.write(&b, "events")
	b.WriteByte('\n')
	n := 0
	for i := len(m.log) - 1; i >= 0; i-- { // newest first
		l := m.log[i]
		if l.id == "" || l.id != sb.ID {
			continue
		}
		b.WriteString("  " + st.Faint.wrap(clockTime(l.at)) + "  " + l.text + "\n")
		n++
	}
	if n == 0 {
		b.WriteString("  " + st.Faint.wrap("none seen since the dashboard started") + "\n")
	}
	return strings.TrimRight(b.String(), "\n")
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
