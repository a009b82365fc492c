package ui

import (
	"strings"

	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/spinner"
	"github.com/charmbracelet/lipgloss"

	"github.com/sandboxpool/sandboxpool/pool"
)

// theme is the dashboard's palette of semantic colours.
type theme struct {
	Text, Faint, Accent, Info       lipgloss.TerminalColor
	Healthy, Warning, Danger        lipgloss.TerminalColor
	SelectedFg, SelectedBg, Claimed lipgloss.TerminalColor
}

func defaultTheme() theme {
	c := func(light, dark string) lipgloss.AdaptiveColor {
		return lipgloss.AdaptiveColor{Light: light, Dark: dark}
	}
	return theme{
		Text:       c("#1c1c1c", "#e4e4e4"),
		Faint:      c("#8a8a8a", "#6c6c6c"),
		Accent:     c("#5f00d7", "#af87ff"),
		Info:       c("#005faf", "#5fafff"),
		Healthy:    c("#008700", "#5fd75f"),
		Warning:    c("#af5f00", "#ffaf00"),
		Danger:     c("#d70000", "#ff5f5f"),
		Claimed:    c("#0087af", "#5fd7ff"),
		SelectedFg: c("#000000", "#ffffff"),
		SelectedBg: c("#d7d7ff", "#3a3a5f"),
	}
}

// paint is a style reduced to the escape sequences around its text, so that
// hot paths (one table row per visible sandbox, every frame) concatenate
// strings instead of running lipgloss. It only suits colour and attributes:
// no padding, width or borders.
type paint struct{ pre, post string }

func paintOf(s lipgloss.Style) paint {
	const mark = "M" // SGR sequences contain digits, ';' and 'm', never 'M'
	r := s.Render(mark)
	i := strings.Index(r, mark)
	if i < 0 {
		return paint{}
	}
	return paint{pre: r[:i], post: r[i+len(mark):]}
}

func (p paint) wrap(s string) string {
	if p.pre == "" && p.post == "" {
		return s
	}
	return p.pre + s + p.post
}

func (p paint) write(b *strings.Builder, s string) {
	b.WriteString(p.pre)
	b.WriteString(s)
	b.WriteString(p.post)
}

// Widths of the fixed table columns.
const (
	stateW  = 13 // glyph, space, "terminating"
	barW    = 6
	ttlW    = 5 + 1 + barW // " 4:59 ██████"
	healthW = 12           // "ok 200 999ms"
	ageW    = 5            // "4m05s"
)

// Bar colours, by time left.
const (
	barOK = iota
	barAmber
	barRed
	barColours
)

// cell is one precomputed table cell: plain (for the selected row, which is
// painted as a whole) and painted.
type cell struct{ plain, painted string }

// styles holds every style of the dashboard, built once from a theme. Leaf
// views only pick from it.
type styles struct {
	Title, Text, Faint, Accent, Info paint
	Healthy, Warning, Danger         paint
	Selected, ColHeader, Tag, Key    paint
	Banner                           paint

	state  map[pool.State]paint
	glyph  map[pool.State]string
	frames []string // spinner frames for creating and warming

	// stateCells[state][frame] is the padded, painted state cell.
	stateCells map[pool.State][]cell
	// bars[colour][fill] is the TTL bar, fill in 0..barW.
	bars [barColours][barW + 1]cell
	barP [barColours]paint

	Help        help.Styles
	InputPrompt lipgloss.Style
	InputText   lipgloss.Style
	Placeholder lipgloss.Style
	Cursor      lipgloss.Style
}

var spin = spinner.MiniDot

func newStyles(t theme) *styles {
	fg := func(c lipgloss.TerminalColor) lipgloss.Style { return lipgloss.NewStyle().Foreground(c) }
	s := &styles{
		Title:     paintOf(fg(t.Accent).Bold(true)),
		Text:      paintOf(fg(t.Text)),
		Faint:     paintOf(fg(t.Faint)),
		Accent:    paintOf(fg(t.Accent)),
		Info:      paintOf(fg(t.Info)),
		Healthy:   paintOf(fg(t.Healthy)),
		Warning:   paintOf(fg(t.Warning)),
		Danger:    paintOf(fg(t.Danger).Bold(true)),
		Selected:  paintOf(lipgloss.NewStyle().Foreground(t.SelectedFg).Background(t.SelectedBg).Bold(true)),
		ColHeader: paintOf(fg(t.Faint).Bold(true)),
		Tag:       paintOf(fg(t.Warning).Bold(true)),
		Key:       paintOf(fg(t.Accent).Bold(true)),
		Banner:    paintOf(fg(t.Healthy).Bold(true)),
		frames:    spin.Frames,
	}
	s.state = map[pool.State]paint{
		pool.StateCreating:    s.Info,
		pool.StateWarming:     s.Warning,
		pool.StateReady:       s.Healthy,
		pool.StateUnhealthy:   s.Danger,
		pool.StateExpiring:    s.Warning,
		pool.StateClaimed:     paintOf(fg(t.Claimed)),
		pool.StateTerminating: s.Faint,
		pool.StateFailed:      s.Danger,
	}
	// A glyph as well as a colour: the state reads without colour too.
	s.glyph = map[pool.State]string{
		pool.StateReady:       "●",
		pool.StateUnhealthy:   "✗",
		pool.StateExpiring:    "◷",
		pool.StateClaimed:     "◆",
		pool.StateTerminating: "○",
		pool.StateFailed:      "✗",
	}
	s.stateCells = map[pool.State][]cell{}
	for _, st := range pool.States {
		glyphs := []string{s.glyph[st]}
		if spinning(st) {
			glyphs = s.frames
		}
		cells := make([]cell, len(glyphs))
		for i, g := range glyphs {
			plain := fit(g+" "+string(st), stateW)
			cells[i] = cell{plain: plain, painted: s.state[st].wrap(plain)}
		}
		s.stateCells[st] = cells
	}
	s.barP = [barColours]paint{s.Healthy, s.Warning, s.Danger}
	for c := range barColours {
		for f := 0; f <= barW; f++ {
			plain := strings.Repeat("█", f) + strings.Repeat("░", barW-f)
			s.bars[c][f] = cell{plain: plain, painted: s.barP[c].wrap(plain)}
		}
	}
	keyStyle := fg(t.Accent).Bold(true)
	descStyle := fg(t.Faint)
	sepStyle := fg(t.Faint)
	s.Help = help.Styles{
		Ellipsis: sepStyle, ShortKey: keyStyle, ShortDesc: descStyle, ShortSeparator: sepStyle,
		FullKey: keyStyle, FullDesc: fg(t.Text), FullSeparator: sepStyle,
	}
	s.InputPrompt = fg(t.Accent).Bold(true)
	s.InputText = fg(t.Text)
	s.Placeholder = fg(t.Faint)
	s.Cursor = lipgloss.NewStyle().Reverse(true)
	return s
}

// spinning says whether a state shows a spinner rather than a glyph.
func spinning(st pool.State) bool { return st == pool.StateCreating || st == pool.StateWarming }

// stateCell returns the cell for a state at a spinner frame; unknown states
// (a newer engine) are built on the fly.
func (s *styles) stateCell(st pool.State, frame int) cell {
	cells, ok := s.stateCells[st]
	if !ok {
		plain := fit("? "+string(st), stateW)
		return cell{plain: plain, painted: plain}
	}
	return cells[frame%len(cells)]
}
