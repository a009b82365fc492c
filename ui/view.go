package ui

import (
	"strconv"
	"strings"

	"github.com/charmbracelet/bubbles/help"

	"github.com/sandboxpool/sandboxpool/pool"
)

// The screen, top to bottom:
//
//	header      backend/pool, target, API address, read-only tag, who maintains
//	counts      counts per state; sort order; backoff; next maintenance countdown
//	sparks      ready, claims/min and claim p50 over the last 10 minutes
//	action      prompt, confirmation, filter being typed, claim banner
//	body        table and the last events; or the detail, log or help view
//	status      the last error, or a note
//	footer      one line of key help
const chromeLines = 6 // every line but the body

// relayout recomputes what depends on the size and on the rows: column
// widths, how many rows and events fit, the help line. Never per frame.
func (m *Model) relayout() {
	w, h := m.width, m.height
	lay := &m.lay
	// Ids whole where they fit: the id column takes what the fixed columns
	// and a minimal URL leave, and fit cuts the rest with "…".
	idW := 6
	for i := range m.snap.Sandboxes {
		idW = max(idW, width(m.snap.Sandboxes[i].ID))
	}
	rest := 2 + 1 + stateW + 1 + ttlW + 1 + healthW
	lay.idW = max(min(idW, w-rest), min(idW, 8))
	fixed := rest + lay.idW
	lay.showAge = true
	lay.urlW = w - fixed - 1 - ageW - 1
	if lay.urlW < minURLW {
		lay.showAge = false
		lay.urlW = w - fixed - 1
	}
	if lay.urlW < minURLW {
		lay.urlW = 0
	}

	lay.bodyH = max(h-chromeLines, 1)
	lay.eventsN = min(max((h-7)/4, 2), 8)
	tableH := lay.bodyH - 1 - (lay.eventsN + 1)
	if tableH < 3 {
		lay.eventsN = 0
		tableH = lay.bodyH - 1
	}
	m.tbl.setHeight(tableH)
	m.detail.vp.Width, m.detail.vp.Height = w, lay.bodyH
	m.logv.vp.Width, m.logv.vp.Height = w, max(lay.bodyH-1, 1)
	m.filterIn.Width = max(w-30, 10)
	m.filterIn.SetCursor(m.filterIn.Position()) // rescroll to the new width

	mark := func(o sortOrder, name string) string {
		if m.order == o {
			return name + "↓"
		}
		return name
	}
	var b strings.Builder
	b.WriteString("  ")
	b.WriteString(fit("ID", lay.idW))
	b.WriteString(" " + fit(mark(sortState, "STATE"), stateW) + " " + fit(mark(sortTTL, "TTL"), ttlW) + " " + fit(mark(sortLatency, "HEALTH"), healthW))
	if lay.showAge {
		b.WriteString(" " + fitLeft(mark(sortAge, "AGE"), ageW))
	}
	if lay.urlW > 0 {
		b.WriteString(" " + fit("URL", lay.urlW))
	}
	lay.urlNote = ""
	if lay.urlW == 0 {
		// Too narrow for URLs: say where they went, here or under the table.
		if w-width(b.String()) >= len(" URL: enter") {
			b.WriteString(" URL: enter")
		} else {
			lay.urlNote = " URLs: enter ─"
		}
	}
	lay.colHeader = m.st.ColHeader.wrap(b.String())
	m.updateFooter()
}

func (m *Model) updateFooter() {
	if m.width <= 0 {
		return
	}
	m.lay.footer = fitHelp(m.help, m.modeHelp().ShortHelp(), m.width)
}

// modeHelp is the key map of the current mode, for the help line.
func (m *Model) modeHelp() help.KeyMap {
	switch m.mode {
	case modeFilter:
		return modeKeys{filterKeys.Keep, filterKeys.Clear}
	case modePrompt:
		if m.prompt.kind == promptConfirm {
			return modeKeys{confirmKeys.Yes, confirmKeys.Other}
		}
		return modeKeys{promptKeys.Set, promptKeys.Cancel}
	case modeDetail:
		return modeKeys{detailKeys.Scroll, detailKeys.Log, detailKeys.Copy, detailKeys.Back, detailKeys.Quit}
	case modeLog:
		return modeKeys{logKeys.Scroll, logKeys.Follow, logKeys.Copy, logKeys.Back, logKeys.Quit}
	case modeHelp:
		return modeKeys{helpKeys.Close, helpKeys.Quit}
	}
	return m.keys
}

// View draws the screen. It is cheap: styles are precomputed and only the
// visible rows are formatted.
func (m Model) View() string {
	if m.width <= 0 || m.height <= 0 {
		// No size yet, or a 0x0 terminal: one line, which every terminal shows.
		return "sandboxpool " + m.snap.Backend + "/" + m.cfg.Pool + ": " + m.plainSummary()
	}
	if m.width < minWidth {
		return m.narrowView()
	}
	var s screen
	s.init(m.width, m.height)
	m.viewHeader(&s)
	m.viewAction(&s)
	switch m.mode {
	case modeHelp:
		m.viewHelp(&s)
	case modeDetail:
		s.lines(m.detail.vp.View(), m.lay.bodyH)
	case modeLog:
		m.viewLog(&s)
	default:
		m.viewTable(&s)
		m.viewEvents(&s)
	}
	s.fill(m.height - 2)
	m.viewStatus(&s)
	s.line(m.lay.footer)
	return s.String()
}

// screen collects at most h lines.
type screen struct {
	b    strings.Builder
	n, h int
	w    int
}

func (s *screen) init(w, h int) {
	s.w, s.h = w, h
	s.b.Grow(w * h * 2)
}

func (s *screen) line(l string) {
	if s.n >= s.h {
		return
	}
	if s.n > 0 {
		s.b.WriteByte('\n')
	}
	s.b.WriteString(l)
	s.n++
}

// lines adds a block, cut or padded to exactly n lines.
func (s *screen) lines(block string, n int) {
	i := 0
	for l := range strings.SplitSeq(block, "\n") {
		if i == n {
			break
		}
		s.line(l)
		i++
	}
	for ; i < n; i++ {
		s.line("")
	}
}

// fill pads with empty lines up to n lines in all.
func (s *screen) fill(n int) {
	for s.n < n {
		s.line("")
	}
}

func (s *screen) String() string { return s.b.String() }

// spread puts left and right on one line of w cells, right-aligned when
// they fit, else cut.
func spread(left, right string, w int) string {
	lw, rw := width(left), width(right)
	if right == "" {
		return truncate(left, w)
	}
	if lw+2+rw <= w {
		return left + spaces(w-lw-rw) + right
	}
	return truncate(left+"  "+right, w)
}

func (m *Model) viewHeader(s *screen) {
	st := m.st
	sep := st.Faint.wrap(" · ")
	var l strings.Builder
	backend, name := m.snap.Backend, m.snap.Pool
	if name == "" {
		name = m.cfg.Pool
	}
	if backend == "" {
		backend = "…"
	}
	l.WriteString(backend + "/" + name)
	l.WriteString(sep)
	l.WriteString("target ")
	target := strconv.Itoa(m.snap.Target)
	if m.hasWant && m.want != m.snap.Target {
		target += "→" + strconv.Itoa(m.want)
	}
	st.Accent.write(&l, target)
	if a := m.snap.Autosize.Explain(); a != "" {
		st.Faint.write(&l, " ("+a+")")
	}
	l.WriteString(sep)
	api := m.opts.APIAddr
	if m.opts.APIStatus != nil {
		api = m.opts.APIStatus()
	}
	if api == "" {
		st.Faint.write(&l, "api off")
	} else {
		l.WriteString("api " + api)
	}
	var tags []string
	if m.opts.ReadOnly {
		tags = append(tags, st.Tag.wrap("read-only"))
	}
	maint := m.maintainer()
	if maint != "" {
		tags = append(tags, st.Tag.wrap(maint))
	}
	left, right := l.String(), strings.Join(tags, sep)
	// "maintained here" is the usual case: it goes first when space is short.
	if m.snap.Role != "viewer" && maint != "" && width(left)+width(" · sandboxpool")+2+width(right) > s.w {
		right = strings.Join(tags[:len(tags)-1], sep)
	}
	// The tags matter more than the program's name: it goes next.
	if titled := st.Title.wrap("sandboxpool") + sep + left; width(titled)+2+width(right) <= s.w || right == "" {
		left = titled
	}
	s.line(spread(left, right, s.w))

	var c strings.Builder
	first := true
	for _, state := range pool.States {
		n := m.snap.Counts[state]
		if n == 0 && state != pool.StateReady {
			continue
		}
		if !first {
			c.WriteString("  ")
		}
		first = false
		st.state[state].write(&c, string(state)+" "+strconv.Itoa(n))
	}
	var r []string
	if !m.snap.BackoffUntil.IsZero() {
		r = append(r, st.Warning.wrap("backoff: next try in "+fmtWait(m.snap.BackoffUntil.Sub(m.now))))
	}
	if ro := m.snap.Rollout; ro.From != "" {
		// A workload change being rolled: its start and end are events.
		r = append(r, st.Accent.wrap("replacing old workload: "+strconv.Itoa(ro.Old)+" left"))
	}
	if cost := m.snap.Cost; cost.PricePerHour > 0 {
		r = append(r, "cost "+money(cost.PerHour())+"/h, idle "+money(cost.IdleCost()))
	}
	if m.order != sortPool {
		r = append(r, st.Accent.wrap("sort: "+m.order.String()))
	}
	r = append(r, "next pass "+m.nextPassText())
	s.line(spread(c.String(), strings.Join(r, sep), s.w))
	s.line(m.sparkLine(s.w))
}

// plainSummary is the pool in a few words, for a screen with no room.
func (m *Model) plainSummary() string {
	if !m.haveSnap {
		return "starting…"
	}
	return "ready " + strconv.Itoa(m.snap.Counts[pool.StateReady]) + " of " + strconv.Itoa(m.snap.Target)
}

// money shows an amount (in the unit of --price-per-hour) with the digits that matter.
func money(x float64) string {
	switch {
	case x >= 100:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case x >= 1:
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strconv.FormatFloat(x, 'f', 3, 64)
}

// maintainer says who maintains the pool: this process, or the lease
// holder (host and pid) when this dashboard is a viewer.
func (m *Model) maintainer() string {
	switch {
	case !m.haveSnap:
		return ""
	case m.snap.Role == "viewer" && m.snap.LeaseHolder == "":
		return "viewer: no controller runs"
	case m.snap.Role == "viewer":
		return "maintained by " + oneLine(m.snap.LeaseHolder)
	case m.opts.ReadOnly:
		return ""
	case m.snap.Role == "controller", m.snap.Role == "":
		return "maintained here"
	}
	return ""
}

// nextPassText is the maintenance countdown: the engine's NextPass when a
// loop runs here, the UI's own ticker when it drives the passes, else "–".
func (m *Model) nextPassText() string {
	switch {
	case !m.snap.NextPass.IsZero():
		if d := m.snap.NextPass.Sub(m.now); d > 0 {
			return fmtClock(d)
		}
		return "now"
	case m.ownsMaintenance():
		if m.maintaining {
			return "now"
		}
		return fmtClock(m.nextMaintain.Sub(m.now))
	}
	return "–"
}

func (m *Model) viewAction(s *screen) {
	st := m.st
	switch m.mode {
	case modeFilter:
		s.line(truncate(inputView(m.filterIn)+st.Faint.wrap("  "+m.matchCount()), s.w))
		return
	case modePrompt:
		s.line(m.prompt.view(st, s.w))
		return
	}
	if l := m.flash.bannerView(st, m.now, s.w); l != "" {
		s.line(l)
		return
	}
	if m.filter != "" {
		s.line(truncate(st.Accent.wrap("filter “"+m.filter+"”")+st.Faint.wrap("  "+m.matchCount()+" · esc clears"), s.w))
		return
	}
	s.line("")
}

func (m *Model) matchCount() string {
	return strconv.Itoa(len(m.tbl.rows)) + " of " + strconv.Itoa(len(m.snap.Sandboxes))
}

func (m *Model) viewTable(s *screen) {
	s.line(m.lay.colHeader)
	h := m.tbl.height
	if len(m.tbl.rows) == 0 {
		s.lines(m.st.Faint.wrap("  "+m.emptyText()), h)
		return
	}
	from, to := m.tbl.visible()
	var b strings.Builder
	rowW := m.width + 64
	for i := from; i < to; i++ {
		b.Reset()
		b.Grow(rowW)
		m.writeRow(&b, &m.tbl.rows[i], i == m.tbl.cur)
		s.line(b.String())
	}
	for i := to - from; i < h; i++ {
		s.line("")
	}
}

func (m *Model) emptyText() string {
	switch {
	case !m.haveSnap:
		return "loading the pool…"
	case len(m.snap.Sandboxes) > 0:
		return "no sandbox matches “" + m.filter + "” (esc clears the filter)"
	case m.snap.Target == 0 && !m.opts.ReadOnly:
		return "no sandboxes: the target is 0 (+ or s to grow the pool)"
	case m.snap.Target == 0:
		return "no sandboxes: the target is 0"
	case m.snap.Role == "viewer" && m.snap.LeaseHolder == "":
		return "no sandboxes, and no controller maintains the pool"
	}
	return "no sandboxes yet: filling to " + strconv.Itoa(m.snap.Target)
}

// writeRow formats one sandbox. A selected row is drawn plain inside the
// selection style (nested colours would break its background) and marked
// with ▸, which also shows without colour.
func (m *Model) writeRow(b *strings.Builder, sb *pool.Sandbox, selected bool) {
	st, lay, now := m.st, &m.lay, m.now
	if selected {
		b.WriteString(st.Selected.pre)
		b.WriteString("▸ ")
	} else {
		b.WriteString("  ")
	}
	b.WriteString(fit(sb.ID, lay.idW))
	b.WriteByte(' ')

	sc := st.stateCell(sb.State, m.frame)
	if selected {
		b.WriteString(sc.plain)
	} else {
		b.WriteString(sc.painted)
	}
	b.WriteByte(' ')

	if sb.ExpiresAt.IsZero() {
		b.WriteString("    –")
		b.WriteString(spaces(1 + barW))
	} else {
		left := sb.TimeLeft(now)
		col := barColour(left, m.cfg.UseDuration)
		bar := st.bars[col][barFill(left, m.cfg.TTL)]
		txt := fitLeft(fmtClock(left), 5)
		if selected {
			b.WriteString(txt)
			b.WriteByte(' ')
			b.WriteString(bar.plain)
		} else {
			st.barP[col].write(b, txt)
			b.WriteByte(' ')
			b.WriteString(bar.painted)
		}
	}
	b.WriteByte(' ')

	ht := fit(healthText(sb.Health), healthW)
	switch {
	case selected:
		b.WriteString(ht)
	case !sb.Health.Checked():
		st.Faint.write(b, ht)
	case sb.Health.OK:
		st.Healthy.write(b, ht)
	default:
		st.Danger.write(b, ht)
	}

	if lay.showAge {
		b.WriteByte(' ')
		age := "–"
		if !sb.CreatedAt.IsZero() {
			age = fmtAge(now.Sub(sb.CreatedAt))
		}
		age = fitLeft(age, ageW)
		if selected {
			b.WriteString(age)
		} else {
			st.Faint.write(b, age)
		}
	}
	if lay.urlW > 0 {
		b.WriteByte(' ')
		b.WriteString(displayURL(sb.URL, lay.urlW))
	}
	if selected {
		b.WriteString(st.Selected.post)
	}
}

func (m *Model) viewEvents(s *screen) {
	n := m.lay.eventsN
	if n == 0 {
		return
	}
	st := m.st
	title := "─ events "
	right := ""
	if len(m.tbl.rows) > m.tbl.height {
		from, to := m.tbl.visible()
		right = " rows " + strconv.Itoa(from+1) + "–" + strconv.Itoa(to) + " of " + strconv.Itoa(len(m.tbl.rows)) + " ─"
	}
	if m.lay.urlNote != "" {
		right = m.lay.urlNote + right
	}
	rule := max(s.w-width(title)-width(right), 0)
	s.line(st.Faint.wrap(title + strings.Repeat("─", rule) + right))
	start := max(len(m.log)-n, 0)
	shown := 0
	for _, l := range m.log[start:] {
		text := fit(l.text, max(s.w-10, 1))
		line := st.Faint.wrap(clockTime(l.at)) + "  "
		if l.err != "" {
			line += st.Danger.wrap(strings.TrimRight(text, " "))
		} else {
			line += strings.TrimRight(text, " ")
		}
		s.line(line)
		shown++
	}
	if shown == 0 {
		s.line(st.Faint.wrap("no events yet"))
		shown++
	}
	for ; shown < n; shown++ {
		s.line("")
	}
}

func (m *Model) viewStatus(s *screen) {
	st := m.st
	if l := m.flash.statusView(st, s.w); l != "" {
		s.line(l)
		return
	}
	c := m.snap.Stats
	l := "✓ no errors · claims: " + strconv.FormatInt(c.ClaimsWarm, 10) + " warm, " +
		strconv.FormatInt(c.ClaimsWaited, 10) + " waited, " + strconv.FormatInt(c.ClaimsFailed, 10) + " failed"
	if c.ClaimsWarm+c.ClaimsWaited > 0 {
		l += " · warm-hit " + strconv.Itoa(int(c.WarmHitRatio()*100+0.5)) + "%"
	}
	s.line(truncate(st.Faint.wrap(l), s.w))
}

func (m *Model) viewHelp(s *screen) {
	st := m.st
	var b strings.Builder
	st.Title.write(&b, "keys")
	b.WriteString("\n\n")
	h := m.help
	h.Width = s.w
	b.WriteString(h.FullHelpView(m.keys.FullHelp()))
	b.WriteString("\n\n")
	if m.opts.ReadOnly {
		b.WriteString(st.Tag.wrap("read-only") + st.Faint.wrap(": claim, target, size, terminate and refill are off") + "\n")
	}
	b.WriteString(st.Faint.wrap("q quits; the sandboxes keep running."))
	lines := strings.Split(b.String(), "\n")
	for i := range lines {
		lines[i] = truncate(lines[i], s.w)
	}
	s.lines(strings.Join(lines, "\n"), m.lay.bodyH)
}

func (m Model) narrowView() string {
	st := m.st
	var s screen
	s.init(m.width, m.height)
	s.line(truncate(st.Title.wrap("sandboxpool")+" "+m.snap.Backend+"/"+m.snap.Pool, m.width))
	s.line(truncate("ready "+strconv.Itoa(m.snap.Counts[pool.StateReady])+" of "+strconv.Itoa(m.snap.Target), m.width))
	s.line("")
	s.line(truncate(st.Warning.wrap("too narrow: "+strconv.Itoa(m.width)+" columns"), m.width))
	s.line(truncate("the dashboard needs "+strconv.Itoa(minWidth)+".", m.width))
	s.line("")
	s.line(truncate(st.Faint.wrap("q quit"), m.width))
	return s.String()
}
